"""sudo-provisioner: the only process with Docker access.

systemd starts it on the first connection to its socket (sudo-provisioner.socket); it
reconciles from Docker labels, serves, and exits after `provisioner.idle_exit_sec` without a
request. `--bind` opens the socket itself, for development, and then never exits on idle.
`--remove-all` is for the package's maintainer scripts: it removes every runtime of this
installation, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import uuid
from pathlib import Path

from aiohttp import web

from sudo_core import config, logs, runtime_image
from sudo_core.credentials import host_secret
from sudo_core.db import Database
from sudo_core.families import volume_name
from sudo_core.logs import fields
from sudo_core.systemd import Notifier, listen_fds

from .backend import BackendError
from .docker_backend import DockerBackend
from .images import ImageUpgrades
from .runtimes import RuntimeManager
from .server import Activity, build_app, resume_upgrade

log = logging.getLogger("sudo_provisioner")


def bind_unix(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


async def serve(settings: config.Settings, bind: bool) -> int:
    notifier = Notifier()
    inherited = listen_fds()
    if inherited:
        sock = next(iter(inherited.values()))
        idle_exit = settings.provisioner.idle_exit_sec
    elif bind:
        sock = bind_unix(settings.provisioner.socket)
        idle_exit = 0.0
    else:
        log.error("no socket from systemd (LISTEN_FDS); use --bind to open one for development")
        return 2

    db = Database(settings.core.database_path)
    try:
        backend = DockerBackend(settings.runtime, settings.core.state_dir)
        await backend.prepare()
    except BackendError as exc:
        log.error(f"cannot use the Docker engine: {exc}")
        return 1
    manager = RuntimeManager(settings, db, backend, host_secret(settings.core.state_dir))
    try:
        upgrades = ImageUpgrades(manager, settings.core.state_dir)
    except runtime_image.StateUnreadable as exc:
        log.error(f"{exc}: which image the runtimes run is unknown; restore or remove the file")
        return 1
    notifier.status("following Docker's events; reconciling runtimes")
    await manager.start()
    summary = await manager.reconcile()

    activity = Activity()
    timeout = settings.provisioner.client_timeout_sec
    app = build_app(manager, upgrades, activity, notifier, timeout)
    runner = web.AppRunner(app, handle_signals=False, keepalive_timeout=timeout)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    resuming = asyncio.create_task(resume_upgrade(app, activity)) if upgrades.interrupted else None
    ready = f"serving; adopted {summary['adopted']}, removed {len(summary['removed'])}"
    async with notifier.serving(ready) as stop:
        log.info(
            f"serving on {sock.getsockname() or 'an inherited socket'}",
            extra=fields(adopted=summary["adopted"], removed=len(summary["removed"])),
        )
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if idle_exit and activity.idle_for() >= idle_exit:
                log.info(f"idle for {idle_exit:.0f} s, exiting; systemd keeps the socket")
                break
    if resuming is not None:
        resuming.cancel()  # stopped midway, it is rolled back again at the next start
    await runner.cleanup()
    await manager.close()
    db.close()
    return 0


async def remove_runtimes(settings: config.Settings) -> set[uuid.UUID] | None:
    """Remove this installation's runtimes; their owners, or None when Docker failed."""
    try:
        backend = DockerBackend(settings.runtime, settings.core.state_dir)
        runtimes = await backend.list()
        for runtime in runtimes:
            await backend.remove(runtime.name)
    except BackendError as exc:
        print(f"sudo-provisioner: cannot use the Docker engine: {exc}", file=sys.stderr)
        return None
    print(f"sudo-provisioner: removed {len(runtimes)} family runtime(s); their data stays until purge")
    return {r.owner for r in runtimes if r.owner}


def write_manifest(settings: config.Settings, owners: set[uuid.UUID], path: Path) -> None:
    """List the Docker objects a purge deletes: every family's volume, and the runtime network.

    The package's purge runs after apt has removed this code, so the list is made on remove,
    while the configuration and the database still say which objects are ours.
    """
    if settings.core.database_path.exists():
        db = Database(settings.core.database_path)
        owners = owners | {f.id for f in db.list_families()}
        db.close()
    lines = [f"volume {volume_name(o)}" for o in sorted(owners)] + [f"network {settings.runtime.network}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="sudo-provisioner", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", action="store_true", help="open provisioner.socket ourselves (development)")
    parser.add_argument(
        "--remove-all", action="store_true", help="remove every family runtime of this installation and exit"
    )
    parser.add_argument(
        "--manifest", type=Path, help="with --remove-all: write here the volumes and network a purge deletes"
    )
    args = parser.parse_args()
    if args.manifest and not args.remove_all:
        parser.error("--manifest goes with --remove-all")
    settings = config.load_or_exit("sudo-provisioner")
    logs.setup("sudo-provisioner", settings.core.log_level)
    if args.remove_all:
        owners = asyncio.run(remove_runtimes(settings))
        if owners is None:
            sys.exit(1)
        if args.manifest:
            write_manifest(settings, owners, args.manifest)
        sys.exit(0)
    sys.exit(asyncio.run(serve(settings, args.bind)))


if __name__ == "__main__":
    main()
