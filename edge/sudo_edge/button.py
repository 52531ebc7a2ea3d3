"""The mute button: a key on a Linux input device, pressed to mute and pressed again to unmute.

A button on a GPIO pin becomes an input device through the kernel's gpio-keys driver, e.g. in
the Pi's /boot/firmware/config.txt: `dtoverlay=gpio-key,gpio=17,active_low=1,gpio_pull=up,
keycode=248` (KEY_MICMUTE); speakerphones with a mute key are input devices already. The
daemon reads the kernel's `struct input_event` records from the device (`device.mute_button`,
best a stable /dev/input/by-path/ name) and needs no GPIO library.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("sudo-edge.button")

EVENT = struct.Struct("llHHi")
"""struct input_event: a timeval (two longs), type, code, value."""
EV_KEY = 1
PRESSED = 1


async def watch_button(
    device: Path, key: int, pressed: Callable[[], Awaitable[None]], retry_sec: float
) -> None:
    """Call `pressed` at each press of `key` on `device`, for ever; a device that is missing or
    fails (unplugged) is opened again `retry_sec` later."""
    while True:
        try:
            await _read_presses(device, key, pressed)
            log.warning("mute button %s closed; opening it again in %g s", device, retry_sec)
        except OSError as exc:
            log.warning("cannot read the mute button %s (%s); trying again in %g s", device, exc, retry_sec)
        await asyncio.sleep(retry_sec)


async def _read_presses(device: Path, key: int, pressed: Callable[[], Awaitable[None]]) -> None:
    """Until the device closes; read without blocking, so a stop never waits on a button."""
    loop = asyncio.get_running_loop()
    fd = os.open(device, os.O_RDONLY | os.O_NONBLOCK)
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)
    try:
        log.info("mute button: key %d on %s", key, device)
        pending = b""
        while True:
            await readable.wait()
            readable.clear()
            try:
                chunk = os.read(fd, EVENT.size * 64)
            except BlockingIOError:
                continue
            if not chunk:
                return
            pending += chunk
            while len(pending) >= EVENT.size:
                _, _, kind, code, value = EVENT.unpack_from(pending)
                pending = pending[EVENT.size :]
                if (kind, code, value) == (EV_KEY, key, PRESSED):
                    await pressed()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
