"""The admin's view of the host's units, read from a real systemd (PID 1 in a container) over
its real system D-Bus, whose socket the container shares with the test through a directory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from systemd_box import systemd_box

from sudo_api.host_units import HostUnitsUnavailable, unit_states

UNITS = {
    "sudo-test-ok.service": "[Unit]\nDescription=works\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
    "ExecStart=/bin/true\n",
    "sudo-test-bad.service": "[Unit]\nDescription=breaks\n[Service]\nExecStart=/bin/false\n",
    "sudo-test.timer": "[Unit]\nDescription=ticks\n[Timer]\nOnActiveSec=1h\nUnit=sudo-test-ok.service\n",
}


@pytest.fixture(scope="module")
def bus() -> Iterator[str]:
    with systemd_box(UNITS) as (container, address):
        code, output = container.exec_run(["systemctl", "start", "sudo-test-ok.service", "sudo-test.timer"])
        assert code == 0, output
        container.exec_run(["systemctl", "start", "sudo-test-bad.service"])  # fails, as it should
        yield address


async def test_unit_states_come_from_systemd(bus: str):
    deadline = time.monotonic() + 10
    while True:
        units = {u.name: u for u in await unit_states(bus_address=bus)}
        if units.get("sudo-test-bad.service") and units["sudo-test-bad.service"].active_state == "failed":
            break
        assert time.monotonic() < deadline, units
        await asyncio.sleep(0.2)
    assert list(units) == sorted(units)
    ok, bad, timer = units["sudo-test-ok.service"], units["sudo-test-bad.service"], units["sudo-test.timer"]
    assert (ok.active_state, ok.sub_state, ok.description, ok.healthy) == ("active", "exited", "works", True)
    assert (bad.active_state, bad.healthy) == ("failed", False)
    assert (timer.active_state, timer.sub_state) == ("active", "waiting")
    assert "dbus.service" not in units  # only the patterns asked for
    everything = {u.name for u in await unit_states(["*.service"], bus_address=bus)}
    assert "dbus.service" in everything


async def test_no_listener_is_a_clear_error(tmp_path: Path):
    with pytest.raises(HostUnitsUnavailable, match=r"cannot ask systemd over D-Bus at .*No such file"):
        await unit_states(bus_address=f"unix:path={tmp_path}/nobody")


Server = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def refuse_authentication(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.readline():
        writer.write(b"REJECTED EXTERNAL\r\n")
    writer.close()


async def say_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()
    writer.close()


@pytest.mark.parametrize(
    ("server", "reason"),
    [(refuse_authentication, "authentication failed"), (say_nothing, "no answer within 0.3 s")],
)
async def test_a_bus_that_does_not_answer_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server, reason: str
):
    monkeypatch.setattr("sudo_api.host_units.ANSWER_WITHIN_SEC", 0.3)
    listener = await asyncio.start_unix_server(server, tmp_path / "bus")
    try:
        with pytest.raises(HostUnitsUnavailable, match=rf"cannot ask systemd over D-Bus at .*: {reason}"):
            await unit_states(bus_address=f"unix:path={tmp_path}/bus")
    finally:
        listener.close()
