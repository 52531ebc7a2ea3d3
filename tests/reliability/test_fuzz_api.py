"""The /v1 API fuzzed from its own OpenAPI document (schemathesis), as every kind of caller.

Every operation is tried with inputs that break its schema (negative) and inputs that fit it
(positive), as an anonymous caller, a family, a paired device, the admin and the voice bridge's
service token. No answer may be a 5xx, every answer must be one the document names, in its
content type and shape, schema-breaking input must be refused, and a refused request must
change nothing: the whole database is compared before and after each one.

The fuzz runs on its own control plane, so nothing of the other tests moves the database under
it. `SUDO_RELIABILITY=full` tries many more examples per operation.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
from figures import Tally
from hypothesis import HealthCheck, Phase
from reliability_support import changes, size, snapshot
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from stack import BIN, Stack, running_host

PASSWORD = "correct horse battery"
EXAMPLES = size(5, 100)
"""Examples per operation, per mode, per role."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
STREAMS = {"/v1/chat/stream"}
"""Endpoints that answer an endless stream (server-sent events; they take no input): left out
for the callers they admit, the reading would never end."""
BACKGROUND = {"agent_cursors"}
"""Tables a daemon moves on its own: how far the chat reader has read an agent's outbox."""
CHATTY = {
    ("post", "/v1/chat/messages"),
    ("post", "/v1/chat/messages/{message_id}/retry"),
    ("post", "/v1/runtime/ensure"),
}
"""What a family accepts and then carries on with in the background (waking its agent, delivering,
storing replies): as a family, these are sent by a second one, the talker, whose own rows the
database comparison leaves out (it can reach no one else's)."""


@dataclass
class Caller:
    name: str
    headers: Callable[[Any], dict[str, str]]
    """For an operation: a fresh session for a logout, so it does not end the next request's."""
    talker: Callable[[], dict[str, str]] | None = None
    """The talker's headers, for the CHATTY operations."""


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_host(tmp_path_factory.mktemp("fuzz")) as s:
        # Every feature set up (Twilio's stand-in, a LiveKit server's settings), so that no
        # answer is a "not set up" 503 and every operation reaches its own validation.
        settings = s.start_twilio() | {
            "livekit.url": "wss://voice.example",
            "livekit.api_key": "APIfuzz",
            "livekit.api_secret": "f" * 64,
        }
        for key, value in settings.items():
            s.db.set_setting(key, value)
        yield s


_addresses = (f"{net}.{host}" for host in itertools.count() for net in ("192.0.2", "198.51.100", "203.0.113"))


def client_address() -> dict[str, str]:
    """A client address of its own per request (behind the trusted proxy, as Caddy passes it),
    so the fuzz explores the API's validation rather than its per-address rate limits."""
    address = next(_addresses)
    return {"X-Forwarded-For": address.rsplit(".", 1)[0] + f".{int(address.rsplit('.', 1)[1]) % 250}"}


def login(base: str, email: str) -> str:
    resp = requests.post(f"{base}/v1/auth/login", json={"email": email, "password": PASSWORD}, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["token"]


@pytest.fixture(scope="module")
def callers(fuzzed: Stack) -> dict[str, Caller]:
    base = fuzzed.api_url
    email = "fuzz-family@example.org"
    body = {"email": email, "password": PASSWORD, "name": "Fuzz", "family_name": "Fuzz"}
    assert requests.post(f"{base}/v1/auth/signup", json=body, timeout=60).status_code == 201
    started = requests.post(f"{base}/v1/devices/pairing", json={"name": "Fuzz Pi"}, timeout=60).json()
    family = {"Authorization": f"Bearer {login(base, email)}"}
    claimed = requests.post(
        f"{base}/v1/devices/pairing/complete", json={"code": started["code"]}, headers=family, timeout=60
    )
    assert claimed.status_code == 202, claimed.text
    device = {"Authorization": f"Bearer {started['device_token']}"}
    said = requests.get(f"{base}/v1/devices/pairing", headers=device, timeout=60).json()["confirm_code"]
    confirm = {"pairing_id": claimed.json()["pairing"]["id"], "code": said}
    paired = requests.post(f"{base}/v1/devices/pairing/confirm", json=confirm, headers=family, timeout=60)
    assert paired.status_code == 201, paired.text
    admin_email = "fuzz-admin@example.org"
    made = subprocess.run(
        [str(BIN / "sudoctl"), "create-admin", "--email", admin_email, "--password-stdin"],
        input=PASSWORD + "\n",
        env=fuzzed.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    talker_email = "fuzz-talker@example.org"
    body = {"email": talker_email, "password": PASSWORD, "name": "Talker", "family_name": "Talker"}
    talker = requests.post(f"{base}/v1/auth/signup", json=body, timeout=60).json()
    IGNORED.update({talker["account"]["id"], talker["account"]["user_id"]})
    talker_auth = {"Authorization": f"Bearer {talker['token']}"}

    def session_of(email: str) -> Callable[[Any], dict[str, str]]:
        token = login(base, email)

        def headers(operation: Any) -> dict[str, str]:
            fresh = operation.path == "/v1/auth/logout"
            return {"Authorization": f"Bearer {login(base, email) if fresh else token}"}

        return headers

    device = {"Authorization": f"Bearer {started['device_token']}"}
    service = {"Authorization": f"Bearer {fuzzed.service_token}"}
    return {
        "anonymous": Caller("anonymous", lambda _: {}),
        "family": Caller("family", session_of(email), talker=lambda: talker_auth),
        "device": Caller("device", lambda _: device),
        "admin": Caller("admin", session_of(admin_email)),
        "service": Caller("service", lambda _: service),
    }


IGNORED: set[str] = set()
"""The talker's account and family: rows holding either are left out of the comparison."""


def state(database: Any) -> dict[str, list[tuple]]:
    return {t: [r for r in rows if not IGNORED & set(map(str, r))] for t, rows in snapshot(database).items()}


def operations(fuzzed_url: str) -> list[Any]:
    document = requests.get(f"{fuzzed_url}/v1/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    return [result.ok() for result in schema.get_all_operations()]


def only_credentials_broken(case: Any) -> bool:
    """Whether a negative case breaks its schema only in its headers or cookies (the document
    declares none but the credentials)."""
    broken = {where for where, info in case.meta.components.items() if info.mode.is_negative}
    return bool(broken) and broken <= {ParameterLocation.HEADER, ParameterLocation.COOKIE}


def fuzz_operation(
    stack: Stack, operation: Any, mode: GenerationMode, caller: Caller, tally: Tally, failures: list[str]
) -> None:
    checks = [*CHECKS, negative_data_rejection] if mode == GenerationMode.NEGATIVE else CHECKS
    database = stack.settings.core.database_path
    label = f"{operation.method.upper()} {operation.path} as {caller.name} ({mode.value})"
    # The voice bridge's lookups are served on sudo-api's loopback service listener only.
    base = stack.service_url if operation.path.startswith("/v1/service/") else stack.api_url

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # a failure is reported as found, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        chatty = caller.talker is not None and (operation.method.lower(), operation.path) in CHATTY
        headers = (caller.talker() if chatty else caller.headers(operation)) | client_address()
        wanted = checks
        if caller.name != "anonymous":
            # The caller's own credentials only: a generated cookie or token would be read first
            # and end most requests at 401 before they reach the operation's validation.
            case.cookies = {}
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
            if only_credentials_broken(case):  # what broke the schema was just replaced
                wanted = CHECKS
        before = state(database)
        response = case.call(base_url=base, headers=headers, timeout=120, allow_redirects=False)
        tally.tried(response.status_code)
        try:
            case.validate_response(response, checks=wanted, headers=headers)
        except (Exception, FailureGroup) as exc:  # every failure is kept, the fuzz goes on
            failures.append(f"{label}: {str(exc)[:1500]}")
            return
        if 400 <= response.status_code < 500:
            after = state(database)
            diff = {t: d for t, d in changes(before, after).items() if t not in BACKGROUND}
            if diff:
                failures.append(
                    f"{label}: {response.status_code} yet changed {diff}: {case.as_curl_command()}"
                )

    try:
        run()
    except hypothesis.errors.Unsatisfiable:  # negative mode: an operation with no input to break
        tally.notes["nothing_to_break"] = tally.notes.get("nothing_to_break", 0) + 1


# Mode by mode, as each caller: negative first, while nothing runs in the background yet.
RUNS = [
    (mode, name)
    for mode in (GenerationMode.NEGATIVE, GenerationMode.POSITIVE)
    for name in ("anonymous", "family", "device", "admin", "service")
]


@pytest.mark.parametrize(("mode", "caller"), RUNS, ids=[f"{m.value}-{c}" for m, c in RUNS])
def test_fuzz(fuzzed: Stack, callers: dict[str, Caller], mode: GenerationMode, caller: str, figures):
    failures: list[str] = []
    for operation in operations(fuzzed.api_url):
        if operation.path in STREAMS and caller in ("family", "admin"):
            continue
        fuzz_operation(fuzzed, operation, mode, callers[caller], figures, failures)
    assert fuzzed.processes["api"].poll() is None, "sudo-api died"
    assert not failures, "\n\n".join(failures[:20]) + f"\n\n({len(failures)} failures in all)"
