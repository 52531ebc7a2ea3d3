"""The provisioner under the sd_listen_fds and sd_notify protocols, as systemd drives them:
started with an inherited listening socket, READY/STATUS/WATCHDOG on NOTIFY_SOCKET, exit on
idle with the socket left open, and a second life answering on the same socket."""

from __future__ import annotations

import socket

import aiohttp
from stack import Notifications, Stack, activate

from sudo_core.provisioner_client import ProvisionerClient


async def test_socket_activated_provisioner_serves_pings_and_exits_when_idle(stack: Stack, tmp_path):
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    notify_path = tmp_path / "notify"
    notify = Notifications(notify_path)

    family = stack.new_family("Activated")
    env = stack.env | {
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "1000000",
        "SUDO_PROVISIONER_IDLE_EXIT_SEC": "2",
    }
    for life in (1, 2):
        connector = aiohttp.UnixConnector(path=str(path))
        async with aiohttp.ClientSession(connector=connector) as http:
            # the request is sent before the service runs, as when systemd activates on it
            proc = activate(env, listener, log=(tmp_path / "activated.log").open("ab"))
            async with http.get("http://p/v1/runtimes") as resp:
                assert resp.status == 200
                assert isinstance((await resp.json())["runtimes"], list)
            if life == 1:
                async with http.post(f"http://p/v1/runtimes/{family.id}/ensure") as resp:
                    assert resp.status == 200, await resp.text()
        assert notify.wait_for("READY=1", timeout=5)
        assert notify.wait_for("STATUS=serving", timeout=1)
        assert notify.wait_for("WATCHDOG=1", timeout=5)
        # no request for 2 s: it exits by itself, cleanly, saying so
        assert proc.wait(timeout=20) == 0
        assert notify.wait_for("STOPPING=1", timeout=2)
        notify.seen.clear()
    # the runtime outlived both provisioner processes: its state is in Docker, not in them
    assert stack.container(family.id).status == "running"
    listener.close()
    notify.sock.close()


async def test_restart_all_progress_shows_in_the_units_status(tmp_path):
    """`systemctl status sudo-provisioner` shows how far a restart-all has got."""
    own = Stack(tmp_path / "stack")  # its own network: only its runtime is restarted
    try:
        own.start_gateway()
        family = own.new_family("Status")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(own.socket))
        listener.listen(16)
        notify = Notifications(tmp_path / "notify")
        proc = activate(own.env | {"NOTIFY_SOCKET": str(tmp_path / "notify")}, listener)
        try:
            async with ProvisionerClient(own.socket) as client:
                await client.ensure(family.id)
                events = [e async for e in client.restart_all()]
            assert events[-1]["restarted"] == 1
            assert notify.wait_for("STATUS=restart-all: 1/1 done", timeout=5)
            assert notify.wait_for("STATUS=serving; last restart-all: 1 restarted, 0 failed", timeout=5)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            listener.close()
            notify.sock.close()
    finally:
        own.close()
