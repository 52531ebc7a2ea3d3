"""What the fault and load tests count and check: every message a family sent and what became of
it, the containers left behind, the agents' memory, and the daemons' memory use.

A chat message counts as acknowledged when sudo-api answered its POST with 202, a WhatsApp
message when sudo-api answered Twilio's webhook with 200. After any fault, each acknowledged
message must be answered exactly once: `lost` counts those never answered (failed, or still
waiting when the test gave up), `duplicated` those answered more than once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker.errors
from control_plane import Family
from stack import Stack
from twilio_stub import sign

from sudo_api.devices import TOKEN_PREFIX
from sudo_core.accounts import token_hash
from sudo_core.families import RUNTIME_PREFIX

SENDER = "+14155550100"
"""The Twilio stand-in's WhatsApp sender."""
TWILIO_WAITS_SEC = 15
"""How long Twilio waits for a webhook's answer before it gives up on that attempt."""

REMEMBER = """
import sys
from pathlib import Path
memory = Path("/opt/data/memories/MEMORY.md")
entries = [e.strip() for e in memory.read_text().split("\\n\\u00a7\\n") if e.strip() not in ("", "\\u00a7")]
memory.write_text("\\n\\u00a7\\n".join([*entries, sys.argv[1]]) + "\\n")
"""
"""Adds an entry to the agent's memory file as Hermes's memory tool writes it (a line holding
only "§" between entries)."""


def tag(word: str) -> str:
    """A text no other message of the run holds, so its replies can be counted."""
    return f"{word} {uuid.uuid4().hex[:10]}"


@dataclass
class Sent:
    family: Family
    id: str
    text: str


@dataclass
class Outcome:
    sent: int = 0
    answered: int = 0
    lost: int = 0
    duplicated: int = 0
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "lost": self.lost,
            "duplicated": self.duplicated,
        }


class ChatLedger:
    """The chat messages sudo-api acknowledged, per family."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.unacknowledged = 0
        """POSTs that got no 202 (sudo-api was down or dying): the client saw the error."""

    async def send(self, family: Family, text: str) -> str | None:
        """POST a message; its id if sudo-api acknowledged it (202), else None."""
        try:
            status, body = await family.call("POST", "/v1/chat/messages", json={"text": text})
        except (aiohttp.ClientError, OSError, TimeoutError):
            self.unacknowledged += 1
            return None
        if status != 202:
            self.unacknowledged += 1
            return None
        self.sent.append(Sent(family, body["message"]["id"], text))
        return body["message"]["id"]

    async def settle(self, within: float = 180) -> Outcome:
        """Wait until every acknowledged message is answered or failed, then count."""
        deadline = time.monotonic() + within
        families = {s.family.id: s.family for s in self.sent}
        histories: dict[str, list[dict[str, Any]]] = {}
        while True:
            for family_id, family in families.items():
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    histories[family_id] = await history(family)
            open_ = [s for s in self.sent if _status(histories.get(s.family.id, []), s.id) in OPEN]
            if not open_ or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        outcome = Outcome(sent=len(self.sent))
        for s in self.sent:
            messages = histories.get(s.family.id, [])
            mine = next((m for m in messages if m["id"] == s.id), {})
            status = mine.get("status")
            replies = [m for m in messages if m["reply_to"] == s.id]
            # The stand-in echoes the words it answers: words of this message in an answer to
            # another one mean the agent answered it there too (Hermes merges a cut turn's
            # words into the next turn it runs).
            echoes = [m for m in messages if m["role"] == "assistant" and s.text in m["text"]]
            if status == "answered" and replies:
                outcome.answered += 1
            else:
                outcome.lost += 1
                outcome.problems.append(
                    f"{s.text!r} of {s.family.id}: {status} ({mine.get('error')}), {len(replies)} replies"
                )
            if len(replies) > 1 or len(echoes) > 1:
                outcome.duplicated += 1
                outcome.problems.append(
                    f"{s.text!r} answered {len(replies)} times, its words in {len(echoes)} answers"
                )
            if replies and not (
                replies[0]["text"].startswith("stub says: ") and s.text in replies[0]["text"]
            ):
                outcome.problems.append(f"{s.text!r} got the wrong answer {replies[0]['text'][:80]!r}")
        return outcome


OPEN = ("queued", "delivered", None)


def _status(messages: list[dict[str, Any]], message_id: str) -> str | None:
    return next((m["status"] for m in messages if m["id"] == message_id), None)


async def history(family: Family) -> list[dict[str, Any]]:
    """The family's whole chat history, page by page (a family chatting for minutes has more
    than one page)."""
    messages: list[dict[str, Any]] = []
    before = ""
    while True:
        status, body = await family.call("GET", f"/v1/chat/messages?limit=500{before}")
        assert status == 200, body
        messages = body["messages"] + messages
        if not body["more"]:
            return messages
        before = f"&before={body['messages'][0]['n']}"


async def answered(family: Family, text: str, within: float = 180) -> float:
    """Send a message and wait for its answer; the seconds it took (the service is back)."""
    ledger = ChatLedger()
    started = time.monotonic()
    deadline = started + within
    while await ledger.send(family, text) is None:  # sudo-api may still be starting
        assert time.monotonic() < deadline, f"sudo-api took no message within {within} s"
        await asyncio.sleep(0.2)
    outcome = await ledger.settle(deadline - time.monotonic())
    assert outcome.answered == 1 and not outcome.problems, outcome.problems
    return time.monotonic() - started


# WhatsApp


class WhatsAppLedger:
    """The WhatsApp messages sudo-api acknowledged to "Twilio", and the replies Twilio sent
    since the ledger began (a test's ledger answers for its own traffic, not an earlier one's)."""

    def __init__(self, stack: Stack, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http
        self.since = len(stack.twilio_messages())
        self.acknowledged: dict[str, tuple[str, str]] = {}
        """MessageSid -> (number, text) of every webhook answered 200."""
        self.forms: dict[str, dict[str, str]] = {}
        self.attempts = 0

    def form(self, number: str, text: str) -> dict[str, str]:
        sid = "SM" + uuid.uuid4().hex
        self.forms[sid] = {
            "MessageSid": sid,
            "AccountSid": self.stack.twilio_settings["twilio.account_sid"],
            "From": f"whatsapp:{number}",
            "To": f"whatsapp:{SENDER}",
            "Body": text,
            "ProfileName": "Grace",
            "NumMedia": "0",
        }
        return self.forms[sid]

    async def post(self, form: dict[str, str]) -> int | None:
        """Deliver a webhook as Twilio does; the status, or None when the connection failed."""
        url = f"{self.stack.api_url}/v1/whatsapp/inbound"
        signature = sign(url, form, self.stack.twilio_settings["twilio.auth_token"])
        self.attempts += 1
        try:
            async with self.http.post(
                url,
                data=form,
                headers={"X-Twilio-Signature": signature},
                timeout=aiohttp.ClientTimeout(total=TWILIO_WAITS_SEC),
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if status == 200:
            self.acknowledged[form["MessageSid"]] = (form["From"].removeprefix("whatsapp:"), form["Body"])
        return status

    async def send(self, number: str, text: str) -> int | None:
        return await self.post(self.form(number, text))

    async def retry_until_acknowledged(self, within: float = 60) -> int:
        """Twilio's retries: every webhook not answered 200 is sent again until it is; how many."""
        deadline = time.monotonic() + within
        retries = 0
        for sid, form in self.forms.items():
            while sid not in self.acknowledged:
                assert time.monotonic() < deadline, f"webhook {sid} never acknowledged"
                retries += 1
                if await self.post(form) != 200:
                    await asyncio.sleep(0.3)
        return retries

    def sent_out(self) -> list[dict[str, Any]]:
        """What Twilio was asked to send since the ledger began."""
        return self.stack.twilio_messages()[self.since :]

    def replies_to(self, number: str, text: str) -> list[dict[str, Any]]:
        """The stand-in LLM echoes the family's latest words, with any note Hermes added to them."""
        return [
            m
            for m in self.sent_out()
            if m["to"] == f"whatsapp:{number}"
            and m.get("body", "").startswith("stub says: ")
            and text in m["body"]
        ]

    async def settle(self, within: float = 180) -> Outcome:
        """Wait until every acknowledged message has a reply on WhatsApp, then count (a few
        seconds more, for a duplicate to show)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(self.replies_to(n, t) for n, t in self.acknowledged.values()):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)
        outcome = Outcome(sent=len(self.acknowledged))
        for sid, (number, text) in self.acknowledged.items():
            replies = len(self.replies_to(number, text))
            outcome.answered += replies >= 1
            outcome.lost += replies == 0
            outcome.duplicated += replies > 1
            if replies != 1:
                got = [m.get("body", "")[:60] for m in self.sent_out() if m["to"] == f"whatsapp:{number}"]
                outcome.problems.append(f"WhatsApp {sid} {text!r}: {replies} replies; the number got {got}")
        numbers = {f"whatsapp:{n}" for n, _ in self.acknowledged.values()}
        for m in self.sent_out():
            if m["to"] in numbers and not m.get("body", "").startswith("stub says: "):
                outcome.problems.append(f"WhatsApp {m['to']} was told {m.get('body', '')[:80]!r}")
        return outcome


async def link_number(stack: Stack, family: Family, number: str) -> None:
    """A verified WhatsApp number of the family's owner (linking by code is tested elsewhere)."""
    now = time.time()
    await stack.db.aio(
        stack.db.execute,
        "INSERT INTO whatsapp_numbers (id, family_id, account_id, number, created_at, verified_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (uuid.uuid4().hex, family.id, family.member_id, number, now, now),
    )


async def twilio_ready(stack: Stack) -> None:
    """The Twilio stand-in running and sudo-api set up for it."""
    settings = stack.start_twilio() | {"twilio.public_url": stack.api_url}
    for key, value in settings.items():
        await stack.db.aio(stack.db.set_setting, key, value)


async def device_of(stack: Stack, family: Family) -> str:
    """A paired device's token for the family (pairing itself is tested elsewhere)."""
    token = TOKEN_PREFIX + uuid.uuid4().hex
    await stack.db.aio(
        stack.db.execute,
        "INSERT INTO devices (id, family_id, name, token_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        (str(uuid.uuid4()), family.id, "Kitchen Pi", token_hash(token), time.time()),
    )
    return token


# Containers and memory


def container_problems(stack: Stack) -> list[str]:
    """Duplicates (two containers for one family), orphans (a container of no family) and
    leftovers (volume-copy helpers) among this stack's containers."""
    families = {str(f.id) for f in stack.db.list_families()}
    problems, owners = [], {}
    for container in stack.containers():
        if not container.name.startswith(RUNTIME_PREFIX):
            problems.append(f"leftover container {container.name}")
            continue
        owner = container.labels.get("sudo.owner", "")
        if owner not in families:
            problems.append(f"orphan {container.name} ({container.status})")
        if owner in owners:
            problems.append(f"two containers for {owner}: {owners[owner]} and {container.name}")
        owners[owner] = container.name
    return problems


def remember(stack: Stack, family: uuid.UUID, entry: str) -> None:
    """Add an entry to the family's agent memory, in its running container."""
    container = stack.container(family)
    assert container is not None, f"no runtime for {family}"
    done = container.exec_run(["python3", "-c", REMEMBER, entry], user="10000:10000")
    assert done.exit_code == 0, done.output


def memory_of(stack: Stack, family: uuid.UUID) -> str:
    """The family's agent memory file, read from its volume (whether or not a runtime runs)."""
    try:
        output = stack.on_volume(family, "cat /opt/data/memories/MEMORY.md")
    except docker.errors.ContainerError as exc:
        return f"(unreadable: {exc})"
    return output.decode(errors="replace")


def memories_lost(stack: Stack, entries: dict[uuid.UUID, str]) -> list[uuid.UUID]:
    """The families whose memory file no longer holds the entry they were given."""
    return [family for family, entry in entries.items() if entry not in memory_of(stack, family)]


# The daemons' memory


def rss(pid: int) -> int | None:
    """Resident memory of a process in bytes (VmRSS), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def daemon_rss(stack: Stack, names: Iterable[str] = ("api", "provisioner", "gateway")) -> dict[str, int]:
    found = {}
    for name in names:
        proc = stack.processes.get(name)
        if proc is not None and proc.poll() is None and (value := rss(proc.pid)) is not None:
            found[name] = value
    return found


def mib(value: float) -> float:
    return round(value / 2**20, 1)


async def until(predicate: Callable[[], Any], within: float, what: str) -> Any:
    """The predicate's first true result (it may return an awaitable); TimeoutError after `within`."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within} s")
        await asyncio.sleep(0.2)


def asked(stack: Stack, text: str) -> int:
    """How many of the agents' LLM requests carried this text as the family's latest words."""
    return sum(text in r["last_user"] for r in stack.llm_requests())


def recalled(stack: Stack, now: str, before: str) -> bool:
    """Whether the agent, asked `now`, sent the LLM the earlier `before` along: its session history."""
    return any(
        now in r["last_user"] and any(before in m for m in r["user_messages"]) for r in stack.llm_requests()
    )
