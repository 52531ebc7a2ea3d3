"""Benchmarks for the provisioner, on the real Docker engine and the real Hermes image.

Prints one JSON object per line. Every figure is a ratio against a baseline measured in the
same run, so the numbers mean the same on a slower or busier machine:

- warm_ensure_p50 / _p99: ensure of a running runtime over the socket, against a bare HTTP
  round trip on the same socket (GET /health), made as ProvisionerClient makes every call: on
  a connection of its own;
- cold_ensure: ensure of a new family (create + boot script + Hermes start + health), against
  Hermes's own start-to-healthy on the same image (a plain `docker run`, polled the same way),
  10 samples of each interleaved, with the median of where the time went (phases_median);
- restart_all_10: restart-all of 10 runtimes, against recreating the same 10 one after another;
- activation_first_answer: first answer from a provisioner systemd-style activated by that
  very request, against the same request to a running one.

    make bench        (or: .venv/bin/python tests/bench/bench_runtimes.py)
"""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import HostCpu, emit, percentile
from stack import Stack, activate

from sudo_core.provisioner_client import ProvisionerClient
from sudo_provisioner.runtimes import POLL_FAST_SEC, POLL_SEC


async def timed(coro) -> float:
    started = time.perf_counter()
    await coro
    return time.perf_counter() - started


async def warm_ensure(stack: Stack, client: ProvisionerClient, rounds: int = 1000) -> None:
    family = stack.new_family("Warm")
    await client.ensure(family.id)
    connector = aiohttp.UnixConnector(path=str(stack.socket), force_close=True)  # as ProvisionerClient
    async with aiohttp.ClientSession(connector=connector) as raw:

        async def health() -> None:
            async with raw.get("http://p/health") as resp:
                await resp.read()

        for _ in range(20):  # warm both paths up
            await health()
            await client.ensure(family.id)
        base, ensure = [], []
        for _ in range(rounds):  # interleaved: a moment's noise on the host falls on both
            base.append(await timed(health()))
            ensure.append(await timed(client.ensure(family.id)))
    for p in (50, 99):
        emit(
            f"warm_ensure_p{p}",
            percentile(ensure, p),
            percentile(base, p),
            samples=rounds,
            baseline_is="GET /health on the same socket, a connection per call as the client makes",
        )
    await client.stop(family.id, purge=True)


async def hermes_alone(stack: Stack, http: aiohttp.ClientSession) -> float:
    """Start-to-healthy of the bare image, polled at the provisioner's cadence."""
    key = "bench-" + os.urandom(16).hex()
    started = time.perf_counter()
    container = await asyncio.to_thread(
        stack.docker.containers.run,
        stack.settings.runtime.image,
        ["gateway", "run"],
        detach=True,
        network=stack.network,
        environment={
            "API_SERVER_KEY": key,
            "API_SERVER_HOST": "0.0.0.0",
            "HERMES_GATEWAY_MAX_STARTS": "0",
            "TIRITH_ENABLED": "false",
        },
    )
    try:
        delay = POLL_SEC
        while True:
            await asyncio.to_thread(container.reload)
            ip = container.attrs["NetworkSettings"]["Networks"][stack.network]["IPAddress"]
            try:
                async with http.get(f"http://{ip}:8642/health") as resp:
                    if resp.status == 200:
                        return time.perf_counter() - started
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(delay)
            if time.perf_counter() - started > POLL_FAST_SEC:
                delay = min(delay * 1.5, 1.0)
    finally:
        await asyncio.to_thread(container.remove, force=True, v=True)


def phases(stack: Stack, name: str, began: float, ended: float) -> dict[str, float]:
    """Where a cold ensure's time went, from Docker's events and the container's own output:
    the provisioner's part before Docker creates it, create to start, start to Hermes's
    api_server coming up (its first line of output), and from there to the health check seen."""
    events = stack.docker.events(
        since=int(began) - 1, until=int(ended) + 1, filters={"container": name}, decode=True
    )
    at = {e["Action"]: e["timeNano"] / 1e9 for e in events if e["Action"] in ("create", "start")}
    first = stack.docker.containers.get(name).logs(timestamps=True).split(b" ", 1)[0].decode()
    stamp, fraction = first.rstrip("Z").split(".")
    listening = datetime.datetime.fromisoformat(stamp + "+00:00").timestamp() + float("0." + fraction)
    return {
        "before_create": at["create"] - began,
        "create_to_start": at["start"] - at["create"],
        "start_to_hermes_listening": listening - at["start"],
        "listening_to_health_seen": ended - listening,
    }


async def cold_ensure(stack: Stack, client: ProvisionerClient, rounds: int = 10) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
        base, cold, parts = [], [], []
        for i in range(rounds):  # interleaved, so drift hits both alike
            base.append(await hermes_alone(stack, http))
            family = stack.new_family(f"Cold {i}")
            began = time.time()
            runtime = await client.ensure(family.id)
            ended = time.time()
            cold.append(ended - began)
            parts.append(phases(stack, runtime.name, began, ended))
            await client.stop(family.id, purge=True)
    emit(
        "cold_ensure",
        statistics.median(cold),
        statistics.median(base),
        samples=rounds,
        phases_median={k: round(statistics.median(p[k] for p in parts), 3) for k in parts[0]},
        baseline_is="docker run of the same image to /health 200",
    )


async def restart_all(stack: Stack, client: ProvisionerClient, count: int = 10) -> None:
    families = [stack.new_family(f"Fleet {i}") for i in range(count)]
    await asyncio.gather(*(client.ensure(f.id) for f in families))

    async def one_by_one() -> None:
        for family in families:
            await client.stop(family.id)
            await client.ensure(family.id)

    concurrency = 0

    async def fleet() -> None:
        nonlocal concurrency
        async for event in client.restart_all():
            if event["event"] == "start":
                concurrency = event["concurrency"]
            if event["event"] == "done":
                assert event["restarted"] == count, event

    with HostCpu() as alone:
        sequential = await timed(one_by_one())
    with HostCpu() as cpu:
        together = await timed(fleet())
    emit(
        f"restart_all_{count}",
        together,
        sequential,
        runtimes=count,
        concurrency=concurrency,
        # the floor no schedule can beat: the sequential run's CPU work spread on every core
        cpu_bound_ratio=round(alone.seconds / (os.cpu_count() or 1) / sequential, 3),
        host_cpu_busy=round(cpu.busy_fraction, 3),
        baseline_is="the same recreations one after another",
    )
    await asyncio.gather(*(client.stop(f.id, purge=True) for f in families))


async def activation(stack: Stack, client: ProvisionerClient, rounds: int = 3) -> None:
    """A request sent to a socket no process serves yet, as systemd holds it, then the start."""
    warm, cold = [], []
    for _ in range(rounds):
        warm.append(await timed(client.list()))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "p.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            listener.listen(8)
            env = stack.env | {"SUDO_PROVISIONER_IDLE_EXIT_SEC": "1"}
            connector = aiohttp.UnixConnector(path=str(path))
            async with aiohttp.ClientSession(connector=connector) as http:
                started = time.perf_counter()
                proc = activate(env, listener)
                async with http.get("http://p/v1/runtimes") as resp:
                    assert resp.status == 200
                cold.append(time.perf_counter() - started)
            await asyncio.to_thread(proc.wait, 30)
            listener.close()
    emit(
        "activation_first_answer",
        statistics.median(cold),
        statistics.median(warm),
        samples=rounds,
        baseline_is="GET /v1/runtimes from a running provisioner",
    )


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sudo-bench-") as tmp:
        stack = Stack(Path(tmp) / "stack")
        try:
            stack.start_gateway()
            stack.start_provisioner(extra_env={"SUDO_CORE_LOG_LEVEL": "INFO"})
            async with ProvisionerClient(stack.socket) as client:
                await warm_ensure(stack, client)
                await cold_ensure(stack, client)
                await restart_all(stack, client)
                await activation(stack, client)
        finally:
            stack.close()


if __name__ == "__main__":
    asyncio.run(main())
