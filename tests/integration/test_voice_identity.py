"""A voice turn never goes to another family's container. Docker would hand a freed address to
the next container it starts, so an address the bridge learnt for family A would, after A's
runtime stopped, be family B's. Real containers: the provisioner hands addresses out in turn, so
the next family does not get A's; once the turn has come round the subnet it does, and A's turn,
sent where A used to answer, must then reach neither B's agent nor B's container: neither A's
words nor A's key go there."""

from __future__ import annotations

import ipaddress
import uuid
from urllib.parse import urlsplit

import aiohttp
import pytest
from control_plane import sign_up
from stack import Stack

from sudo_voice_bridge import hermes
from sudo_voice_bridge.hermes import FamilyRuntime, HermesLLM
from sudo_voice_bridge.sudo_api import Runtime, SudoApi

pytestmark = pytest.mark.docker


async def say(
    runtime: FamilyRuntime, text: str, sent: list[tuple[str, str | None]], *, prepared: bool
) -> str:
    """One turn of the bridge's LLM; `sent` gets every request it made (URL, Authorization).
    `prepared`: the proof of where the agent answers was started as the family began to speak."""

    async def record(session, context, params: aiohttp.TraceRequestStartParams) -> None:
        sent.append((str(params.url), params.headers.get("Authorization")))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(record)
    llm = HermesLLM(runtime, f"voice-{uuid.uuid4().hex}", slow_reply_sec=60, reply_timeout_sec=60)
    llm._http = aiohttp.ClientSession(trace_configs=[trace])  # the bridge's own client, watched
    try:
        if prepared:
            llm.prepare_turn()
        return "".join([piece async for piece in llm.answer(text)])
    finally:
        await llm.aclose()


async def test_a_turn_sent_to_an_address_another_family_took_goes_nowhere(api: Stack, http, provisioner):
    async with SudoApi(api.service_url, api.service_token) as client:
        a = await sign_up(http, api.api_url, "Ampere")
        old = await client.runtime(uuid.UUID(a.id))
        await provisioner.stop(uuid.UUID(a.id))
        b = await sign_up(http, api.api_url, "Becquerel")
        taken = await client.runtime(uuid.UUID(b.id))
        assert taken.url != old.url, "a freed address went to the next container"
        await provisioner.stop(uuid.UUID(b.id))

        # The turn comes round the whole subnet (made quick here): A's old address is handed out.
        address = ipaddress.ip_address(urlsplit(old.url).hostname)
        cursor = api.settings.core.state_dir / f"{api.settings.runtime.network}.last-address"
        cursor.write_text(str(int(address) - 1))
        c = await sign_up(http, api.api_url, "Curie")
        assert (await client.runtime(uuid.UUID(c.id))).url == old.url

        async def stale(_: uuid.UUID) -> Runtime:  # where A answered before: C's container now
            return old

        key = f"Bearer {old.api_key}"
        for prepared in (False, True):
            sent: list[tuple[str, str | None]] = []
            said = await say(
                FamilyRuntime(uuid.UUID(a.id), stale), "the combination is 1234", sent, prepared=prepared
            )
            assert said == hermes.UNREACHABLE
            assert not [r for r in api.llm_requests() if "1234" in r["last_user"]], "C's agent heard A"
            assert sent and all(url.startswith(old.identity_url) and auth is None for url, auth in sent), sent
            assert all(auth != key for url, auth in sent if url.startswith(old.url)), "A's key went to C"

        # Asked again, as the bridge does every turn, sudo-api wakes A where it is now.
        for prepared in (False, True):
            sent = []
            said = await say(
                FamilyRuntime(uuid.UUID(a.id), client.runtime), "and now for real", sent, prepared=prepared
            )
            assert "stub says" in said, said
            proofs = [url for url, _ in sent if "/identity" in url]
            assert len(proofs) == 1, sent  # the prepared proof is the turn's: not made twice
            assert any(url.endswith("/v1/chat/completions") and auth == key for url, auth in sent)
