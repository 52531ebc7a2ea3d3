"""`sudoctl status`: the sudo units as systemd sees them, then the fleet as the provisioner sees it.

Units are read with pystemd, whose calls block: they run before any event loop starts. libsystemd
finds the system bus at $DBUS_SYSTEM_BUS_ADDRESS, or /run/dbus/system_bus_socket.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from pystemd.dbusexc import DBusBaseError
from pystemd.dbuslib import DBus
from pystemd.systemd1 import Unit

from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError, RuntimeView

UNITS = (
    "sudo.target",
    "sudo-api.service",
    "sudo-gateway.service",
    "sudo-voice-bridge.service",
    "sudo-provisioner.socket",
    "sudo-provisioner.service",
    "sudo-reaper.timer",
    "sudo-reaper.service",
    "docker.service",
)
ON_DEMAND = {"sudo-provisioner.service", "sudo-reaper.service"}
"""Started by their socket or timer: inactive between uses, activating while starting or running."""


class NoSystemd(RuntimeError):
    """The system bus could not be reached, or systemd did not answer on it."""


@dataclass(frozen=True)
class UnitStatus:
    name: str
    load_state: str
    active_state: str
    sub_state: str
    next_elapse: float | None = None
    """For a timer: seconds until it next fires, if systemd knows."""

    @property
    def healthy(self) -> bool:
        if self.load_state != "loaded":
            return False
        if self.name in ON_DEMAND:
            return self.active_state in ("active", "inactive", "activating")
        return self.active_state == "active"

    def line(self) -> str:
        state = f"{self.active_state}/{self.sub_state}" if self.load_state == "loaded" else self.load_state
        when = "" if self.next_elapse is None else f"  next in {self.next_elapse:.0f} s"
        return f"{'ok' if self.healthy else 'BAD':<4}{self.name:<26}{state}{when}"


def unit_statuses(names: tuple[str, ...] = UNITS) -> list[UnitStatus]:
    try:
        with DBus() as bus:
            return [_status(Unit(name.encode(), bus=bus, _autoload=True)) for name in names]
    except DBusBaseError as exc:
        address = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/run/dbus/system_bus_socket")
        raise NoSystemd(f"cannot ask systemd over the system D-Bus at {address}: {exc}") from exc


def _status(unit: Unit) -> UnitStatus:
    name = unit.external_id.decode()
    next_elapse = None
    if name.endswith(".timer") and unit.Unit.LoadState == b"loaded":
        # Calendar timers have a wall-clock time, OnBootSec/OnUnitActiveSec ones a monotonic one;
        # 0 means not scheduled.
        realtime, monotonic = unit.Timer.NextElapseUSecRealtime, unit.Timer.NextElapseUSecMonotonic
        if realtime:
            next_elapse = realtime / 1e6 - time.time()
        elif monotonic:
            next_elapse = monotonic / 1e6 - time.monotonic()
    return UnitStatus(
        name,
        unit.Unit.LoadState.decode(),
        unit.Unit.ActiveState.decode(),
        unit.Unit.SubState.decode(),
        next_elapse,
    )


def runtime_line(rt: RuntimeView) -> str:
    return f"{rt.name}  {rt.state:<8} {rt.url or '-':<26} {rt.image}"


async def fleet_lines(socket: Path) -> list[str]:
    try:
        async with ProvisionerClient(socket, timeout=30) as provisioner:
            runtimes = await provisioner.list()
    except (aiohttp.ClientError, ProvisionerError, TimeoutError) as exc:
        return [f"fleet: cannot reach the provisioner at {socket}: {exc}"]
    running = sum(rt.running for rt in runtimes)
    return [f"fleet: {running} of {len(runtimes)} runtime(s) running"] + [
        f"  {runtime_line(rt)}" for rt in runtimes
    ]


def status(socket: Path) -> int:
    """Print units and fleet; 0 when every unit is healthy, 1 otherwise (NoSystemd: no bus)."""
    units = unit_statuses()
    for unit in units:
        print(unit.line())
    bad = [u.name for u in units if not u.healthy]
    print(f"units: unhealthy: {', '.join(bad)}" if bad else "units: all healthy")
    for line in asyncio.run(fleet_lines(socket)):
        print(line)
    return 1 if bad else 0
