"""Benchmarks for sudo-api, against the real provisioner, gateway and Hermes image.

Prints one JSON object per line, every figure a ratio against a baseline from the same run:

- heartbeats_per_sec: device heartbeats sudo-api answers per second on one core (wrk on the
  other core, 1,000 paired devices of 10 families), against a bare aiohttp server answering
  the same POST with a fixed JSON body on the same core (goal: at least 5,000/s);
- chat_first_token_p50 / _p99: from sending a message to the first words of the reply, through
  sudo-api (POST /v1/chat/messages, then its SSE stream), against talking to the family's
  runtime directly (the sudo_chat plugin's own POST /messages and event stream); the
  difference is what sudo-api adds (goal: at most 5 ms at p99). The model's own jitter is in
  both, so chat_turn_start_p50 / _p99 also time the part without the model: from sending to
  the agent starting its turn, which is sudo-api's whole share of the path;
- chat_page_ttfb_1000: time to first byte of /chat for a family with 1,000 messages of
  history, against the same page with an empty history;
- boot_storm_first_reply_p50: a host's reboot. 30 families' home devices beat at once with every
  runtime cold, and meanwhile 5 other families each send a message: the median time to the
  first words of those 5 replies, against one lone cold first reply (goal: ratio <= 1.5);
  boot_storm_all_warm: until all 30 runtimes are warm, against 30 lone cold starts one after
  another (30 times the lone one's ensure);
- control_plane_rss: resident memory of sudo-api, sudo-gateway and sudo-provisioner together
  after the storm, 35 families warm, against the same three just started (goal: <= 150 MiB).

    make bench        (or: .venv/bin/python tests/bench/bench_api.py; needs wrk)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ports import free_port
from report import emit, percentile
from stack import Stack, wait_for

from sudo_api.devices import Devices
from sudo_api.history import ChatStore
from sudo_core.families import api_key_for
from sudo_core.provisioner_client import ProvisionerClient

SERVER_CORE, LOAD_CORE = 0, 1
WRK_SCRIPT = """
tokens = {}
for line in io.lines("%s") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i %% #tokens + 1
  return wrk.format("POST", nil, {["Authorization"] = "Bearer " .. tokens[i]}, "")
end
"""
BARE_SERVER = """
import sys
from aiohttp import web
async def beat(request):
    return web.json_response({"next_in": 30.0})
app = web.Application()
app.router.add_post("/v1/devices/heartbeat", beat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def connects(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pin(pid: int, core: int) -> None:
    """Every thread of the process on one core (taskset -a)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {core})


def wrk(url: str, script: Path, seconds: int = 10) -> float:
    out = subprocess.run(
        ["taskset", "-c", str(LOAD_CORE), "wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


async def heartbeats(stack: Stack, tmp: Path) -> None:
    devices = Devices(stack.db, None, stack.settings.api)  # type: ignore[arg-type]  # pairing only
    tokens = []
    families = [stack.new_family(f"Beat {i}") for i in range(10)]
    for n in range(1000):
        started = await stack.db.aio(devices.start_pairing, f"Pi {n}")
        family = families[n % 10].id
        claim = await stack.db.aio(devices.claim_pairing, family, started["code"])
        said = (await stack.db.aio(devices.pairing_status, started["device_token"]))["confirm_code"]
        await stack.db.aio(devices.confirm_pairing, family, str(claim.pairing_id), said)
        tokens.append(started["device_token"])
    async with ProvisionerClient(stack.socket) as client:  # warm runtimes: ensures are cheap
        await asyncio.gather(*(client.ensure(f.id) for f in families))
    (tmp / "tokens").write_text("\n".join(tokens) + "\n")
    script = tmp / "heartbeat.lua"
    script.write_text(WRK_SCRIPT % (tmp / "tokens"))

    pin(stack.processes["api"].pid, SERVER_CORE)
    wrk(f"{stack.api_url}/v1/devices/heartbeat", script, 3)  # warm up
    api_rps = wrk(f"{stack.api_url}/v1/devices/heartbeat", script)
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(port)])  # noqa: ASYNC220 (a benchmark)
    try:
        wait_for(lambda: connects(port), 10, "the bare server")
        pin(bare.pid, SERVER_CORE)
        wrk(f"http://127.0.0.1:{port}/v1/devices/heartbeat", script, 3)
        bare_rps = wrk(f"http://127.0.0.1:{port}/v1/devices/heartbeat", script)
    finally:
        bare.terminate()
        bare.wait()
    emit(
        "heartbeats_per_sec",
        api_rps,
        bare_rps,
        unit="1/s",
        goal=">= 5000/s",
        baseline_is="a bare aiohttp POST handler on the same core",
    )
    async with ProvisionerClient(stack.socket) as client:
        await asyncio.gather(*(client.stop(f.id) for f in families))


async def sign_up(http: aiohttp.ClientSession, base: str, name: str) -> tuple[str, str, str]:
    body = {
        "email": f"{uuid.uuid4().hex[:8]}@example.org",
        "password": "a long password",
        "name": name,
        "family_name": name,
    }
    async with http.post(f"{base}/v1/auth/signup", json=body) as resp:
        data = await resp.json()
    return data["token"], data["account"]["user_id"], data["account"]["id"]


async def first_token_via_api(
    http: aiohttp.ClientSession, base: str, token: str, text: str
) -> tuple[float, float]:
    """(to the agent starting its turn, to the first words of its reply) through sudo-api."""
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{base}/v1/chat/stream", headers=headers) as stream:
        await stream.content.readline()  # the stream is open
        started = time.perf_counter()
        async with http.post(f"{base}/v1/chat/messages", json={"text": text}, headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 202, body
            sent = body["message"]["id"]
        turn = first = 0.0
        async for line in stream.content:
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if not turn and event["type"] == "status" and event.get("reply_to") == sent:
                turn = time.perf_counter() - started
            if not first and event["type"] == "draft" and event["reply_to"] == sent:
                first = time.perf_counter() - started
            message = event.get("message", {})
            if event["type"] == "message" and message["id"] == sent and message["status"] == "answered":
                return turn, first
    raise RuntimeError("the stream ended")


async def first_token_direct(
    http: aiohttp.ClientSession, chat_url: str, key: str, text: str
) -> tuple[float, float]:
    """The same two times, talking to the family's sudo_chat plugin itself."""
    headers = {"Authorization": f"Bearer {key}"}
    async with http.get(f"{chat_url}/events", params={"after": 10**9}, headers=headers) as stream:
        await stream.content.readline()  # hello
        message_id = uuid.uuid4().hex
        started = time.perf_counter()
        async with http.post(f"{chat_url}/messages", json={"id": message_id, "text": text}, headers=headers):
            pass
        turn = first = 0.0
        async for line in stream.content:
            event = json.loads(line)
            if not turn and event["type"] == "turn_started" and event["reply_to"] == message_id:
                turn = time.perf_counter() - started
            if not first and event["type"] == "draft" and event.get("reply_to") == message_id:
                first = time.perf_counter() - started
            if event["type"] == "turn_done" and event["reply_to"] == message_id:
                return turn, first
    raise RuntimeError("the stream ended")


async def chat_latency(stack: Stack, rounds: int = 80) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        token, family, _ = await sign_up(http, stack.api_url, "Latency")
        async with ProvisionerClient(stack.socket) as client:
            runtime = await client.ensure(uuid.UUID(family))
        key = api_key_for(stack.secret.encode(), uuid.UUID(family))
        text = "say something long enough to stream in words [drip:0.01]"
        for _ in range(3):  # the first turns pay Hermes's model probes
            await first_token_via_api(http, stack.api_url, token, text)
        via, direct = [], []
        for _ in range(rounds):  # interleaved, so drift hits both alike
            via.append(await first_token_via_api(http, stack.api_url, token, text))
            direct.append(await first_token_direct(http, runtime.chat_url, key, text))
    baseline_is = "the family's sudo_chat plugin, talked to directly"
    for name, index in (("chat_turn_start", 0), ("chat_first_token", 1)):
        for p in (50, 99):
            value = percentile([v[index] for v in via], p)
            base = percentile([d[index] for d in direct], p)
            added = round((value - base) * 1000, 2)
            emit(f"{name}_p{p}", value, base, samples=rounds, added_ms=added, baseline_is=baseline_is)


async def page_ttfb(stack: Stack, rounds: int = 50) -> None:
    async with aiohttp.ClientSession() as http:
        full_token, full_family, member = await sign_up(http, stack.api_url, "Talkative")
        empty_token, _, _ = await sign_up(http, stack.api_url, "Quiet")
        store = ChatStore(stack.db)

        def fill() -> None:
            with stack.db.transaction():
                for n in range(1000):
                    message = store.add_user_message(
                        uuid.UUID(full_family), uuid.UUID(member), f"message {n} " * 8, "Talkative"
                    )
                    store.set_status(message.id, "answered")

        await stack.db.aio(fill)

        async def ttfb(token: str) -> float:
            started = time.perf_counter()
            async with http.get(f"{stack.api_url}/chat", headers={"Cookie": f"sudo_session={token}"}) as resp:
                elapsed = time.perf_counter() - started  # headers received: the first byte
                assert resp.status == 200
                await resp.read()
            return elapsed

        for _ in range(5):
            await ttfb(full_token)
            await ttfb(empty_token)
        full = [await ttfb(full_token) for _ in range(rounds)]
        empty = [await ttfb(empty_token) for _ in range(rounds)]
    emit(
        "chat_page_ttfb_1000",
        percentile(full, 50),
        percentile(empty, 50),
        samples=rounds,
        baseline_is="/chat with an empty history",
        shown=200,
    )


def rss(stack: Stack, names: tuple[str, ...] = ("api", "gateway", "provisioner")) -> int:
    """Resident bytes of the stack's daemons, together."""
    total = 0
    for name in names:
        status = Path(f"/proc/{stack.processes[name].pid}/status").read_text()
        total += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1)) * 1024
    return total


async def boot_storm(stack: Stack, idle_rss: int, beating: int = 30, chatting: int = 5) -> None:
    text = "good morning [drip:0.01]"
    devices = Devices(stack.db, None, stack.settings.api)  # type: ignore[arg-type]  # pairing only
    families, tokens = [stack.new_family(f"Storm {i}") for i in range(beating)], []
    for family in families:
        started = await stack.db.aio(devices.start_pairing, "Pi")
        claim = await stack.db.aio(devices.claim_pairing, family.id, started["code"])
        said = (await stack.db.aio(devices.pairing_status, started["device_token"]))["confirm_code"]
        await stack.db.aio(devices.confirm_pairing, family.id, str(claim.pairing_id), said)
        tokens.append(started["device_token"])
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
        ProvisionerClient(stack.socket) as client,
    ):
        lone_token, lone_family, _ = await sign_up(http, stack.api_url, "Lone")
        lone_start = time.perf_counter()
        await client.ensure(uuid.UUID(lone_family))
        lone_ensure = time.perf_counter() - lone_start
        await client.stop(uuid.UUID(lone_family))
        lone = (await first_token_via_api(http, stack.api_url, lone_token, text))[1]
        await client.stop(uuid.UUID(lone_family))
        # The floor: as many families' first replies at once with no storm at all, all of them
        # cold on a host whose cores they share.
        calm = [await sign_up(http, stack.api_url, f"Calm {i}") for i in range(chatting)]
        calm_replies = await asyncio.gather(
            *(first_token_via_api(http, stack.api_url, token, text) for token, _, _ in calm)
        )
        await asyncio.gather(*(client.stop(uuid.UUID(family)) for _, family, _ in calm))
        chatters = [await sign_up(http, stack.api_url, f"Chatty {i}") for i in range(chatting)]

        async def beat(token: str) -> None:
            async with http.post(
                f"{stack.api_url}/v1/devices/heartbeat", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == 200, await resp.text()

        began = time.perf_counter()
        await asyncio.gather(*(beat(t) for t in tokens))
        replies = await asyncio.gather(
            *(first_token_via_api(http, stack.api_url, token, text) for token, _, _ in chatters)
        )
        wanted = {str(f.id) for f in families}
        for _ in range(3000):  # the provisioner is asked, as sudoctl runtimes does
            if wanted <= {str(r.family) for r in await client.list() if r.running}:
                break
            await asyncio.sleep(0.2)
        all_warm = time.perf_counter() - began
        emit(
            "boot_storm_first_reply_p50",
            statistics.median(r[1] for r in replies),
            lone,
            chatting=chatting,
            beating=beating,
            without_storm_ratio=round(statistics.median(r[1] for r in calm_replies) / lone, 3),
            goal="ratio <= 1.5",
            baseline_is="one lone cold first reply",
        )
        emit(
            "boot_storm_all_warm",
            all_warm,
            beating * lone_ensure,
            beating=beating,
            baseline_is=f"{beating} lone cold starts one after another",
        )
        emit(
            "control_plane_rss",
            rss(stack),
            idle_rss,
            unit="B",
            warm=beating + chatting,
            goal="<= 150 MiB",
            baseline_is="the same three daemons just started",
        )
        await asyncio.gather(*(client.stop(f.id) for f in families))
        await asyncio.gather(*(client.stop(uuid.UUID(family)) for _, family, _ in chatters))


async def main() -> None:
    if not shutil.which("wrk"):
        sys.exit("bench_api: wrk is missing: apt-get install wrk")
    with tempfile.TemporaryDirectory(prefix="sudo-bench-api-") as tmp:
        # The daemon's own defaults for its background work, not the tests' quicker ones.
        api = {"watch_interval_sec": 10.0, "heartbeat_flush_sec": 5.0, "warm_up_jitter_sec": 5.0}
        api["family_messages_per_minute"] = 1000  # chat_latency's 83 messages in a minute or two
        runtime = {"max_running": 40}  # the storm's 36 families, none evicted
        stack = Stack(Path(tmp) / "stack", core={"log_level": "INFO"}, api=api, runtime=runtime)
        try:
            stack.start_gateway()
            stack.start_provisioner()
            stack.start_api()
            await asyncio.sleep(2)  # the three settled
            idle_rss = rss(stack)
            await boot_storm(stack, idle_rss)
            await chat_latency(stack)
            await page_ttfb(stack)
            await heartbeats(stack, Path(tmp))
        finally:
            stack.close()


if __name__ == "__main__":
    asyncio.run(main())
