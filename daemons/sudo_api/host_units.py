"""The host's systemd units as the admin page shows them, read over the system D-Bus.

sudo-api runs unprivileged and without Docker access; reading unit states from systemd's
Manager object needs neither. One call (ListUnitsByPatterns) answers for every unit at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass

from dbus_fast import BusType, DBusFastError, Message, MessageType
from dbus_fast.aio import MessageBus

PATTERNS = ("sudo-*", "docker.service", "docker.socket")
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
ANSWER_WITHIN_SEC = 5.0


class HostUnitsUnavailable(RuntimeError):
    """systemd could not be asked (no system bus, or it did not answer in time)."""


@dataclass(frozen=True)
class UnitState:
    name: str
    description: str
    load_state: str
    """loaded, not-found, masked..."""
    active_state: str
    """active, inactive, failed, activating..."""
    sub_state: str
    """running, exited, listening, waiting, dead..."""

    @property
    def healthy(self) -> bool:
        """Inactive is normal for a socket-activated service or a timer's oneshot; failed is not."""
        return self.active_state != "failed" and self.load_state == "loaded"


async def unit_states(patterns: Sequence[str] = PATTERNS, bus_address: str | None = None) -> list[UnitState]:
    """The units matching `patterns` that systemd has loaded, sorted by name."""
    address = bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS
    try:
        return await asyncio.wait_for(_list(address, list(patterns)), ANSWER_WITHIN_SEC)
    except TimeoutError as exc:
        reason = f"no answer within {ANSWER_WITHIN_SEC} s"
        raise HostUnitsUnavailable(f"cannot ask systemd over D-Bus at {address}: {reason}") from exc
    # DBusFastError: authentication refused, a malformed address or message
    except (OSError, EOFError, RuntimeError, DBusFastError) as exc:
        raise HostUnitsUnavailable(f"cannot ask systemd over D-Bus at {address}: {exc}") from exc


async def _list(address: str, patterns: list[str]) -> list[UnitState]:
    bus = await MessageBus(bus_address=address, bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.freedesktop.systemd1",
                path="/org/freedesktop/systemd1",
                interface="org.freedesktop.systemd1.Manager",
                member="ListUnitsByPatterns",
                signature="asas",
                body=[[], patterns],
            )
        )
    finally:
        bus.disconnect()
    if reply is None or reply.message_type == MessageType.ERROR:
        raise RuntimeError(
            f"systemd refused: {reply.error_name if reply else 'no reply'} {reply.body if reply else ''}"
        )
    # Each unit: (name, description, load, active, sub, following, path, job id, job type, job path)
    return sorted((UnitState(*u[:5]) for u in reply.body[0]), key=lambda u: u.name)
