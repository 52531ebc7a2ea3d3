"""The provisioner's socket fuzzed: random and malformed HTTP, wrong types, unknown routes, bad
family ids, huge bodies and half-closed connections. The provisioner stays up and serves after
each batch, every answer is a well-formed 4xx (or a success for a well-formed request), and no
container or volume appears for anything but a family that exists.

A provisioner of its own (on its own socket, over the same database and engine, with a client
timeout of 2 s), so a crash shows as its death rather than as another test's failure, and a
client that stalls (a body shorter than it promised) is cut off in the test's time.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from figures import FULL, Tally
from reliability_support import size
from stack import Stack

from sudo_core.families import volume_name

RANDOM_REQUESTS = size(300, 5000)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW", "G\x00T", ""]
ROUTES = [
    "/health", "/metrics", "/v1/runtimes", "/v1/runtimes/{id}", "/v1/runtimes/{id}/ensure",
    "/v1/runtimes/{id}/volume", "/v1/runtimes/evict-idle", "/v1/runtimes/reconcile",
    "/v1/runtimes/restart-all", "/v1/{junk}", "/{junk}", "/v1/runtimes/{id}/{junk}",
]  # fmt: skip
BODIES = [
    b"", b"{", b"null", b"[]", b"1e999", b'"x"', b'{"idle_sec": "x"}', b'{"idle_sec": true}',
    b'{"idle_sec": -0.5}', b'{"idle_sec": 1e400}', b'{"idle_sec": null, "x": 1}', b'{"idle_sec": [1]}',
    b"\xff\xfe\x00", b'{"idle_sec": 1' + b"0" * 5000 + b"}", "{\"ü\": \"\\ud800\"}".encode(),
    b"[" * 60000, b'{"idle_sec": ' + b"[" * 30000 + b"]" * 30000 + b"}",
]  # fmt: skip


def junk(rng: random.Random) -> str:
    alphabet = "abcXYZ019-_.~%/:;@{}[]\\'\"<> \t" + "".join(chr(c) for c in (0, 0xE9, 0x2603))
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))


SENT: set[uuid.UUID] = set()
"""Every well-formed family id the fuzz sent: none may get a container or a volume."""


def family_id(rng: random.Random) -> str:
    """Ids a client might send: none of them names a family that exists."""
    u = uuid.uuid4()
    SENT.add(u)
    return rng.choice(
        [str(u), u.hex, str(u).upper(), "{" + str(u) + "}", f"urn:uuid:{u}", str(u)[:-1], "..", "%2e%2e",
         "0" * 400, "", junk(rng), "00000000-0000-0000-0000-000000000000"]
    )  # fmt: skip


def random_request(rng: random.Random) -> bytes:
    method = rng.choice(METHODS)
    path = rng.choice(ROUTES).replace("{id}", family_id(rng)).replace("{junk}", junk(rng))
    if rng.random() < 0.2:
        path += "?" + rng.choice(["purge=true", "purge=maybe", "stats=true", "x=" + junk(rng)])
    body = rng.choice(BODIES) if rng.random() < 0.7 else rng.randbytes(rng.randrange(0, 2048))
    headers = ["Host: p", "Connection: close"]
    roll = rng.random()
    if roll < 0.1:
        headers.append(f"Content-Length: {len(body) + rng.randrange(1, 100)}")  # promises more than it sends
    elif roll < 0.2:
        headers.append(f"Content-Length: {rng.choice(['-1', 'x', '99999999999999999999', ''])}")
    elif roll < 0.3:
        headers.append("Transfer-Encoding: chunked")
    else:
        headers.append(f"Content-Length: {len(body)}")
    if rng.random() < 0.3:
        headers.append(
            rng.choice(["Content-Type: application/json", "Content-Type: " + junk(rng), junk(rng)])
        )
    head = f"{method} {path} HTTP/1.1\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    return head.encode("utf-8", "surrogatepass") + body


def exchange(path: Path, raw: bytes, half_close: bool = False, timeout: float = 10.0) -> str:
    """Send raw bytes; the answer's status, or what became of the connection."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        try:
            s.sendall(raw)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            return "reset"
        except BrokenPipeError:
            return "closed"
        except TimeoutError:
            # Answered, but the server still reads what the body promised (aiohttp lingers a
            # few seconds for a client that is still sending, then closes): an answer all the same.
            if b"\r\n\r\n" not in answer:
                return "timeout"
    if not answer:
        return "closed"
    status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split(" ")
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        return f"garbled: {status_line[:40]}"
    status = parts[1]
    if status.startswith("4") and not raw.startswith(b"HEAD ") and b"\r\n\r\n" in answer:
        # our errors are JSON with a message (aiohttp's own, for unparseable requests, are text)
        head, body = answer.split(b"\r\n\r\n", 1)
        if b"Content-Type: application/json" in head and not _json_error(body):
            return f"{status} without an error message"
    return status


def _json_error(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("error"))
    except (ValueError, AttributeError):
        return False


@pytest.fixture(scope="module")
def fuzzed_socket(stack: Stack) -> Iterator[tuple[Path, subprocess.Popen]]:
    path = stack.root / "provisioner-fuzz.sock"
    env = {"SUDO_PROVISIONER_SOCKET": str(path), "SUDO_PROVISIONER_CLIENT_TIMEOUT_SEC": "2"}
    proc = stack.start_provisioner(env, name="provisioner-fuzz")
    yield path, proc
    stack.stop("provisioner-fuzz")


def serves(path: Path) -> bool:
    return exchange(path, b"GET /health HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n") == "200"


def objects(stack: Stack) -> tuple[set[str], set[str]]:
    """This stack's containers, and the volumes of its families and of every id the fuzz sent
    (the engine is shared with other installations' tests)."""
    containers = {c.name for c in stack.containers()}
    names = {volume_name(f.id) for f in stack.db.list_families()} | {volume_name(u) for u in SENT}
    volumes = {v.name for v in stack.docker.volumes.list(filters={"name": "hermes-user-"}) if v.name in names}
    return containers, volumes


def check_outcomes(outcomes: list[str], tally: Tally) -> None:
    for outcome in outcomes:
        tally.tried(outcome)
    bad = [o for o in outcomes if o.startswith(("5", "garbled", "timeout")) or "without" in o]
    assert not bad, bad


def test_random_and_malformed_http(stack: Stack, fuzzed_socket, figures):
    path, proc = fuzzed_socket
    before = objects(stack)
    rng = random.Random(None if FULL else 8)
    outcomes = []
    for i in range(RANDOM_REQUESTS):
        outcomes.append(exchange(path, random_request(rng), half_close=rng.random() < 0.2))
        if i % 100 == 99:
            assert proc.poll() is None, stack.log_of("provisioner-fuzz")[-3000:]
            assert serves(path)
    assert proc.poll() is None and serves(path)
    # Only answers: no 5xx, every 4xx a JSON error with a message, never a hang or a garbled reply.
    check_outcomes(outcomes, figures)
    assert objects(stack) == before, "a container or volume appeared"


def test_byte_level_garbage_and_half_closed_connections(stack: Stack, fuzzed_socket, figures):
    path, proc = fuzzed_socket
    before = objects(stack)
    rng = random.Random(None if FULL else 9)
    raws = [
        b"", b"\r\n\r\n", b"GET", b"GET / HTTP/9.9\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET /health HTTP/1.1\r\n" + b"X: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(500)) + b"\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: p\r\n\r\n",
        b"POST /v1/runtimes/evict-idle HTTP/1.1\r\nHost: p\r\nContent-Length: 10\r\n\r\n{\"idle",
        b"POST /v1/runtimes/evict-idle HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"PUT /v1/runtimes/" + str(uuid.uuid4()).encode() + b"/volume HTTP/1.1\r\nHost: p\r\n"
        b"Content-Length: 1000000\r\n\r\npartial tar",
    ]  # fmt: skip
    raws += [rng.randbytes(rng.randrange(1, 4096)) for _ in range(size(50, 1000))]
    outcomes = []
    for raw in raws:
        for half_close in (False, True):
            outcome = exchange(path, raw, half_close=half_close)
            outcomes.append(outcome)
    assert proc.poll() is None and serves(path)
    # Garbage may be answered 4xx or have its connection closed; never a 5xx or a hang.
    check_outcomes(outcomes, figures)
    # Connections left open and idle do not stop the others being served.
    idle = [socket.socket(socket.AF_UNIX) for _ in range(50)]
    for s in idle:
        s.connect(str(path))
        s.sendall(b"POST /v1/runtimes/evict-idle HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\n{")
    try:
        assert serves(path)
    finally:
        for s in idle:
            s.close()
    assert objects(stack) == before


def test_huge_bodies_and_bodies_that_are_not_volumes(stack: Stack, fuzzed_socket, figures):
    path, proc = fuzzed_socket
    family = stack.new_family("Huge")
    before = objects(stack)
    huge = b'{"idle_sec": 1, "pad": "' + b"x" * (4 << 20) + b'"}'
    outcome = exchange(
        path,
        b"POST /v1/runtimes/evict-idle HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(huge) + huge,
    )
    figures.tried(outcome)
    assert outcome in ("413", "reset", "closed"), outcome
    # A body that is no tar, for a family that exists: refused, and the volume never touched.
    for body in (b"", b"not a tar" * 1000, random.Random(3).randbytes(3 << 20)):
        raw = (
            f"PUT /v1/runtimes/{family.id}/volume HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        outcome = exchange(path, raw, timeout=60)
        figures.tried(outcome)
        assert outcome == "400", outcome
    assert proc.poll() is None and serves(path)
    assert objects(stack) == before and volume_name(family.id) not in objects(stack)[1]
    # Unknown families: 404 (stopping one is done already: 200), and nothing is made for them.
    for method, suffix in (("POST", "/ensure"), ("GET", "/volume"), ("PUT", "/volume"), ("DELETE", "")):
        stranger = uuid.uuid4()
        SENT.add(stranger)
        raw = (
            f"{method} /v1/runtimes/{stranger}{suffix} HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        outcome = exchange(path, raw, timeout=60)
        figures.tried(outcome)
        assert outcome == ("200" if method == "DELETE" else "404"), (method, suffix, outcome)
        assert volume_name(stranger) not in objects(stack)[1]
    assert objects(stack) == before
