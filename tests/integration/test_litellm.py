"""The real litellm proxy (PyPI, its own virtualenv: `make litellm-venv`) as the provider behind
sudo-gateway, with the LLM stand-in behind litellm, run from the example config README points to
(debian/litellm.yaml). A family's chat goes Hermes → gateway → litellm → stand-in and streams all the
way; the admin's provider key is litellm's master key; the family's key never reaches litellm."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import yaml
from control_plane import sign_up
from ports import free_port
from stack import Stack, wait_for
from test_api_chat import events

from sudo_core import host_settings, usage
from sudo_core.families import llm_key_for

REPO = Path(__file__).resolve().parents[2]
LITELLM = REPO / ".venv-litellm" / "bin" / "litellm"
EXAMPLE = REPO / "debian" / "litellm.yaml"


@dataclass(frozen=True)
class Litellm:
    url: str
    master_key: str
    provider_key: str
    """What litellm presents to the stand-in: its own provider key, which only litellm holds."""
    process: subprocess.Popen
    log: Path

    def wait_ready(self) -> None:
        """Until litellm answers (10 to 20 s from its start here): the tests start a family's
        agent meanwhile."""
        wait_for(lambda: self.process.poll() is not None or self._alive(), 120, "litellm", interval=0.2)
        if self.process.poll() is not None:
            raise RuntimeError(f"litellm exited: {self.log.read_text(errors='replace')[-3000:]}")

    def _alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/liveliness", timeout=2) as resp:
                return resp.status == 200
        except OSError:  # refused until it listens
            return False


@pytest.fixture(scope="module")
def litellm(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Litellm]:
    """litellm started on 127.0.0.1 with the example config, its every api_base the stand-in; and
    the gateway pointed at it as /admin/settings would (URL, master key), for this module only."""
    if not LITELLM.exists():
        raise RuntimeError(f"{LITELLM} is missing: run `make litellm-venv` first")
    root = tmp_path_factory.mktemp("litellm")
    config = yaml.safe_load(EXAMPLE.read_text())
    for deployment in config["model_list"]:
        deployment["litellm_params"]["api_base"] = f"{stack.llm_url}/v1"
    chat_model = next(d for d in config["model_list"] if d["model_name"] == stack.settings.llm.model)
    chat_model["litellm_params"]["model"] = "openai/stub-model"
    (root / "litellm.yaml").write_text(yaml.safe_dump(config))

    url, master_key = f"http://127.0.0.1:{free_port()}", f"sk-litellm-{secrets.token_hex(16)}"
    provider_key = f"sk-behind-litellm-{secrets.token_hex(16)}"
    stack.llm_keys.write_text(f"{stack.llm_key}\n{provider_key}\n")  # the stand-in takes it too
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(root),
        "LITELLM_MASTER_KEY": master_key,
        "PROVIDER_API_KEY": provider_key,
        # Nothing from the internet at start: the model cost map bundled with the package, not
        # fetched (litellm sends no telemetry; its --telemetry flag is a no-op).
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
    }
    argv = [str(LITELLM), "--config", str(root / "litellm.yaml"), "--host", "127.0.0.1"]
    log = root / "litellm.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*argv, "--port", url.rpartition(":")[2]], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root
        )
    try:
        clean = host_settings.validate({"llm.base_url": f"{url}/v1", "llm.api_key": master_key})
        host_settings.store(stack.db, clean)
        yield Litellm(url, master_key, provider_key, process, log)
    finally:
        stack.db.execute("DELETE FROM settings WHERE key IN ('llm.base_url', 'llm.api_key')")
        stack.llm_keys.write_text(stack.llm_key + "\n")
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_a_family_chat_streams_through_litellm(api: Stack, http, litellm: Litellm):
    family = await sign_up(http, api.api_url, "Lovelace")
    # The family's agent starts while litellm does.
    (status, body), _ = await asyncio.gather(
        family.call("POST", "/v1/runtime/ensure"), asyncio.to_thread(litellm.wait_ready)
    )
    assert status == 200, body
    seen: list[tuple[float, dict]] = []

    async def follow() -> None:
        async for event in events(family):
            seen.append((time.monotonic(), event))
            if event["type"] == "message" and event["message"]["role"] == "assistant":
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.3)  # the stream is open before the message goes
    asked = len(api.llm_requests())
    words = "by way of litellm one two three four five [drip:0.4]"
    status, body = await family.call("POST", "/v1/chat/messages", json={"text": words})
    assert status == 202, body
    await asyncio.wait_for(follower, 180)

    answered_at, answer = seen[-1]
    assert answer["message"]["text"].startswith("stub says: by way of litellm")
    # The stand-in writes a word every 0.4 s (12 words: about 5 s); the family sees it being written,
    # draft after draft, long before its end: nothing on the way held the stream back.
    drafts = [(at, event["text"]) for at, event in seen if event["type"] == "draft"]
    assert len(drafts) >= 3, [event["type"] for _, event in seen]
    assert len({text for _, text in drafts}) >= 3
    assert answered_at - drafts[0][0] >= 2.0, (answered_at, drafts)

    # The stand-in was asked by litellm: litellm's own key, litellm's name for the model (the
    # gateway asked for the admin's `family-model`), the family's words.
    through = [r for r in api.llm_requests()[asked:] if words in r["last_user"]]
    assert through, api.llm_requests()[asked:]
    for request in through:
        assert request["authorization"] == f"Bearer {litellm.provider_key}"
        assert request["model"] == "stub-model" and request["stream"]
    # What the gateway presented to litellm was the master key: litellm takes no other (no
    # database, so no virtual keys), the family's own gateway key included.
    family_key = llm_key_for(api.secret.encode(), uuid.UUID(family.id))
    async with http.post(
        f"{litellm.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {family_key}"},
        json={"model": "family-model", "messages": [{"role": "user", "content": "family key"}]},
    ) as resp:
        assert resp.status in (400, 401), await resp.text()
    assert not [r for r in api.llm_requests() if r["last_user"] == "family key"]


async def test_the_gateway_streams_and_meters_litellm_answers(stack: Stack, http, litellm: Litellm):
    """The gateway alone, with a family's key, as its agent calls it: each event of the answer is
    passed on as litellm passes on the stand-in's, the tokens are metered from litellm's `usage`,
    and voice notes and speech reach the stand-in through litellm too."""
    await asyncio.to_thread(litellm.wait_ready)
    family = stack.new_family("Meter")
    key = llm_key_for(stack.secret.encode(), family.id)
    base = f"http://{stack.settings.runtime.host_address}:{stack.settings.gateway.port}/v1"
    headers = {"Authorization": f"Bearer {key}"}
    body = {
        "model": "anything",
        "stream": True,
        "messages": [{"role": "user", "content": "count one two three four [drip:0.3]"}],
    }
    arrivals: list[float] = []
    async with http.post(f"{base}/chat/completions", headers=headers, json=body) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            data = line.removeprefix(b"data: ").strip()
            if line.startswith(b"data: ") and data != b"[DONE]":
                choices = json.loads(data)["choices"]
                if choices and choices[0]["delta"].get("content"):
                    arrivals.append(time.monotonic())
    # 8 words (the stand-in's "stub says: " and the 6 asked), one every 0.3 s: they arrive spread
    # as they were written, not together at the end.
    assert len(arrivals) >= 6, arrivals
    assert arrivals[-1] - arrivals[0] >= 1.2, arrivals
    # Metered from the `usage` litellm passed on: the stand-in's count, a word a token (recorded
    # once the answer has gone out, so a moment after the agent read its end).
    for _ in range(100):
        if day := await stack.db.aio(usage.of_family, stack.db, family.id):
            break
        await asyncio.sleep(0.1)
    assert [(d.tokens_in, d.tokens_out, d.answers) for d in day] == [(6, 8, 1)], day

    form = aiohttp.FormData()
    form.add_field("file", b"OggS not really audio", filename="note.ogg", content_type="audio/ogg")
    async with http.post(f"{base}/audio/transcriptions", headers=headers, data=form) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["text"].startswith("voice note ")
    speech = {"input": "hello from litellm", "voice": "alloy", "response_format": "wav"}
    async with http.post(f"{base}/audio/speech", headers=headers, json=speech) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.read())[:4] == b"RIFF"
    behind = stack.llm_requests(None)[-2:]
    assert [(r["path"], r["model"]) for r in behind] == [
        ("/v1/audio/transcriptions", "whisper-1"),
        ("/v1/audio/speech", "tts-1"),
    ]
    assert {r["authorization"] for r in behind} == {f"Bearer {litellm.provider_key}"}
