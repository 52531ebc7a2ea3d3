"""sudo-api's pieces on a real SQLite database: login limits, admin settings, coalesced heartbeats."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from provisioner_socket import serving

from sudo_api.chat import runtimes_http
from sudo_api.devices import Device, Devices, PairingError
from sudo_api.history import ChatStore
from sudo_api.limits import Limiter, LoginLimiter, RateLimited
from sudo_core import host_settings
from sudo_core.accounts import Accounts, Conflict
from sudo_core.config import ApiSettings
from sudo_core.db import Database, Family
from sudo_core.provisioner_client import ProvisionerClient, RuntimeView


@pytest.fixture
def db(tmp_path: Path):
    database = Database(tmp_path / "sudo.db")
    yield database
    database.close()


def test_login_limiter_counts_per_account_and_per_address():
    limiter = LoginLimiter(per_account=3, per_address=5, window_sec=0.3)
    for _ in range(3):
        limiter.reserve("X@example.org", "10.0.0.1")  # wrong passwords: each attempt is kept
    with pytest.raises(RateLimited) as locked:
        limiter.reserve("x@example.org", "10.0.0.9")  # locked from anywhere
    assert 0 < locked.value.wait <= 0.3 and locked.value.retry_after == 1
    limiter.reserve("y@example.org", "10.0.0.1")  # the address may try others...
    limiter.reserve("z@example.org", "10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.reserve("w@example.org", "10.0.0.1")  # ...up to its own limit
    time.sleep(0.35)  # the window forgets
    for _ in range(3):
        attempt = limiter.reserve("x@example.org", "10.0.0.1")
    limiter.succeeded(attempt)  # the right password: that attempt is given back...
    limiter.reserve("x@example.org", "10.0.0.2")  # ...and the account starts over
    for other in ("a", "b", "c"):
        limiter.reserve(f"{other}@example.org", "10.0.0.1")
    with pytest.raises(RateLimited):
        limiter.reserve("d@example.org", "10.0.0.1")  # the address does not start over


def test_limiter_counts_each_kind_and_forgets_what_its_window_forgot():
    limiter = Limiter(0.2, family=2, address=3)
    for _ in range(2):
        limiter.count(family="f1", address="a1")
    assert limiter.retry_after(family="f1", address="a2") > 0  # the family's limit
    assert limiter.retry_after(family="f2", address="a1") == 0
    limiter.count(family="f2", address="a1")
    assert limiter.retry_after(family="f3", address="a1") > 0  # the address's limit
    # Guessing at ever new keys takes no lasting memory: expired keys are swept as keys grow.
    for i in range(1500):
        limiter.count(family=f"guess-{i}")
    time.sleep(0.25)
    for i in range(1000):
        limiter.count(family=f"later-{i}")
    assert len(limiter._events) < 1500
    assert limiter.retry_after(family="f1") == 0


async def test_passwords_are_hashed_and_checked(db: Database):
    accounts = Accounts(db, session_days=1)
    account = await accounts.sign_up("A@Example.org", "a long password", "Ann", "Smith")
    stored = await db.aio(db.query_one, "SELECT password_hash FROM accounts")
    assert stored["password_hash"].startswith("$argon2id$")
    assert await accounts.check_password("a@example.org", "a long password") == account
    assert await accounts.check_password("a@example.org", "wrong password") is None
    assert await accounts.check_password("nobody@example.org", "a long password") is None
    with pytest.raises(Conflict):
        await accounts.sign_up("a@example.org", "another password", "Bob", "Smith")
    token = await db.aio(accounts.open_session, account.id)
    session = await db.aio(accounts.session, token)
    assert session is not None and session.account.family_id == account.family_id
    await db.aio(accounts.close_session, token)
    assert await db.aio(accounts.session, token) is None


def test_a_moved_address_clears_its_secret_unless_entered_again(db: Database):
    def save(**changes: str) -> list[str]:
        return host_settings.store(
            db, host_settings.validate({k.replace("_", ".", 1): v for k, v in changes.items()})
        )

    save(llm_base_url="https://p.example/v1", llm_api_key="sk-1")
    assert save(llm_base_url="https://p.example/v1", llm_model="m") == ["llm.model"]  # not moved: kept
    assert db.get_settings("llm.")["llm.api_key"] == "sk-1"
    changed = save(llm_base_url="https://attacker.example/v1")
    assert sorted(changed) == ["llm.api_key", "llm.base_url"]
    assert host_settings.cleared(changed, {"llm.base_url": "x"}) == ["llm.api_key"]
    assert db.get_settings("llm.")["llm.api_key"] == "", "the key must not follow a moved address"
    save(twilio_api_base="https://twilio.example", twilio_auth_token="t1")
    save(twilio_api_base="https://twilio2.example", twilio_auth_token="t2")  # moved, with its secret
    assert db.get_settings("twilio.")["twilio.auth_token"] == "t2"


@pytest.mark.parametrize(
    ("url", "allow_http", "ok"),
    [
        ("https://p.example/v1", False, True),
        ("wss://voice.example", False, True),
        ("http://127.0.0.1:8080/v1", False, True),  # this host itself
        ("http://[::1]:8080/v1", False, True),
        ("http://localhost/v1", False, True),
        ("http://p.example/v1", False, False),  # the key would cross the network in the clear
        ("ws://voice.example", False, False),
        ("http://10.0.0.5/v1", True, True),  # api.allow_http_urls: a provider on the LAN
        ("https://user:pw@p.example/v1", False, False),
        ("https://p.example@attacker.example/v1", False, False),
        ("https://p.example/v1?redirect=https://attacker.example", False, False),
        ("https://p.example/v1#x", False, False),
        ("https://p.example/v1?", False, False),
        ("https://p.example:port/v1", False, False),
        ("ftp://p.example", False, False),
        ("https:///v1", False, False),
    ],
)
def test_provider_addresses_are_https_with_nothing_hidden(url: str, allow_http: bool, ok: bool):
    if ok:
        assert host_settings.validate({"llm.base_url": url}, allow_http)["llm.base_url"] == url.rstrip("/")
    else:
        with pytest.raises(host_settings.InvalidSetting, match="LLM provider URL"):
            host_settings.validate({"llm.base_url": url}, allow_http)


def test_admin_settings_all_or_nothing_and_secrets_write_only(db: Database):
    changed = host_settings.store(
        db, host_settings.validate({"llm.base_url": "https://p.example/v1/", "llm.api_key": "sk-1"})
    )
    assert sorted(changed) == ["llm.api_key", "llm.base_url"]
    view = host_settings.current(db)
    assert view["llm.base_url"] == "https://p.example/v1"
    assert view["llm.api_key"] == {"set": True}  # never sent back
    with pytest.raises(host_settings.InvalidSetting, match="LLM provider URL"):
        host_settings.validate({"llm.model": "new-model", "llm.base_url": "ftp:/nope"})
    with pytest.raises(host_settings.InvalidSetting, match="unknown"):
        host_settings.validate({"llm.nope": "x"})
    with pytest.raises(host_settings.InvalidSetting, match=r"E\.164"):
        host_settings.validate({"twilio.whatsapp_from": "12345"})
    assert host_settings.current(db)["llm.model"] == ""  # the bad batch stored nothing
    # an empty secret keeps the stored one
    assert (
        host_settings.store(db, host_settings.validate({"llm.api_key": ""})) == []
    )  # empty keeps the secret
    assert db.get_settings("llm.")["llm.api_key"] == "sk-1"


def pair_devices(db: Database, devices: Devices, count: int) -> list[tuple[str, Device, Family]]:
    """A family each, with one home device paired through both codes: (token, device, family)."""
    paired = []
    for i in range(count):
        family = db.create_family(f"F{i}")
        started = devices.start_pairing("Pi")
        claim = devices.claim_pairing(family.id, started["code"])
        said = devices.pairing_status(started["device_token"])["confirm_code"]
        device = devices.confirm_pairing(family.id, str(claim.pairing_id), said)
        paired.append((started["device_token"], device, family))
    with pytest.raises(PairingError):
        devices.claim_pairing(family.id, started["code"])  # a code works once
    return paired


def running(family: str) -> dict[str, object]:
    """The provisioner's answer to an ensure of `family`: its runtime, running."""
    url = "http://10.213.0.5:8642"
    view = RuntimeView(uuid.UUID(family), "hermes", "running", url, url, url, "sudo-hermes", "h", None)
    return view.to_json()


async def test_heartbeats_are_coalesced_into_one_write(db: Database, tmp_path: Path):
    settings = ApiSettings(ensure_interval_sec=3600, warm_up_jitter_sec=0)
    async with ProvisionerClient(tmp_path / "nobody.sock") as provisioner:
        devices = Devices(db, provisioner, settings)
        paired = pair_devices(db, devices, 20)
        families = [family for _, _, family in paired]

        before = time.time()
        for _ in range(50):
            for token, _device, _family in paired:
                owner = await devices.authenticate(token)
                assert owner is not None
                devices.heartbeat(*owner)
        assert await devices.authenticate("sd_dev_forged") is None
        # Nothing written yet: 1,000 beats are held in memory...
        assert all(r["last_seen_at"] is None for r in db.query("SELECT last_seen_at FROM devices"))
        # ...and written in one transaction, during which every device still shows online.
        busy = asyncio.create_task(db.aio(time.sleep, 0.5))  # the database thread, busy a while
        flushing = asyncio.create_task(devices.flush())
        await asyncio.sleep(0.1)
        assert all(devices.online(d) for d in devices.list(families[0].id)), "offline while flushing"
        await asyncio.gather(busy, flushing)
        rows = db.query("SELECT last_seen_at FROM devices")
        assert len(rows) == 20 and all(r["last_seen_at"] >= before for r in rows)
        assert all(db.get_family(f.id).last_active_at >= before for f in families)
        token, device, family = paired[0]
        assert await devices.revoke(family.id, device.id)
        assert await devices.authenticate(token) is None
        assert not await devices.revoke(uuid.uuid4(), paired[1][1].id)  # not that family's device


async def test_warm_ups_of_devices_beating_at_once_are_spread(db: Database, tmp_path: Path):
    """After a host reboot every device beats at once; their warm-ups reach the provisioner
    spread over api.warm_up_jitter_sec rather than in one burst."""
    asked: list[float] = []
    all_asked = asyncio.Event()

    async def ensure(request: web.Request) -> web.Response:  # the provisioner's ensure, recorded
        asked.append(time.monotonic())
        if len(asked) == 20:
            all_asked.set()
        assert request.query["warm_up"] == "true"
        return web.json_response(running(request.match_info["family"]))

    app = web.Application()
    app.router.add_post("/v1/runtimes/{family}/ensure", ensure)
    async with serving(app, tmp_path / "p.sock"), ProvisionerClient(tmp_path / "p.sock") as provisioner:
        devices = Devices(db, provisioner, ApiSettings(warm_up_jitter_sec=0.6))
        paired = pair_devices(db, devices, 20)
        began = time.monotonic()
        for token, _, _ in paired:
            devices.heartbeat(*await devices.authenticate(token))
        async with asyncio.timeout(5):
            await all_asked.wait()
    assert max(asked) - began < 0.6 + 0.4
    assert max(asked) - min(asked) > 0.2  # twenty at once would be a few milliseconds apart


def test_chat_store_recovers_from_agent_restarts(db: Database):
    store = ChatStore(db)
    family = db.create_family("Lovelace").id
    ada = Accounts(db, 1).create("not a real hash", "Ada", family, "owner", email="ada@example.org").id
    first = store.add_user_message(family, ada, "hi", "Ada")
    assert db.get_family(family).last_active_at is not None  # talking is activity: no reaping
    message, claimed = store.next_to_deliver(family)
    assert (message.id, claimed) == (first.id, True)
    assert store.next_to_deliver(family)[1] is False  # in flight: nothing else goes meanwhile
    second = store.add_user_message(family, ada, "are you there?", "Ada")

    # The agent restarts twice without answering: delivered again; the third time it fails.
    for boot in ("b1", "b2"):
        requeued, failed, _ = store.new_agent_process(family, boot, 0, max_attempts=3)
        assert [m.id for m in requeued] == [first.id] and failed == []
        assert store.next_to_deliver(family)[0].id == first.id
    requeued, failed, _ = store.new_agent_process(family, "b3", 0, max_attempts=3)
    assert requeued == [] and [m.status for m in failed] == ["failed"]
    assert store.get(family, first.id).error == "the assistant restarted while answering"

    # The next message goes; its reply and turn end are stored once, with the cursor.
    assert store.next_to_deliver(family)[0].id == second.id
    reply = {"seq": 1, "type": "message", "id": "r1", "reply_to": second.id, "text": "yes"}
    assert [m.id for m in store.apply(family, reply)] == ["r1"]
    assert store.apply(family, reply) == []  # read twice after a reconnect: stored once
    done = store.apply(family, {"seq": 2, "type": "turn_done", "reply_to": second.id, "outcome": "success"})
    assert [(m.id, m.status) for m in done] == [(second.id, "answered")]
    assert store.cursor(family) == ("b3", 2)

    # A turn that ends in failure with nothing said fails the message; retry queues it again.
    third = store.add_user_message(family, ada, "and now?", "Ada")
    store.next_to_deliver(family)
    failed = store.apply(family, {"seq": 3, "type": "turn_done", "reply_to": third.id, "outcome": "failure"})
    assert [m.status for m in failed] == ["failed"]
    assert store.retry(family, ada, third.id).status == "queued"
    assert store.retry(family, ada, third.id) is None  # only a failed message can be retried
    assert store.retry(db.create_family("Other").id, ada, first.id) is None  # and only by its family
    assert store.retry(family, uuid.uuid4(), first.id) is None  # and only in its member's thread

    # An outbox behind our cursor was recreated (a purged volume): read it from the start.
    assert store.new_agent_process(family, "b4", 0, max_attempts=3)[2] == 0


async def test_the_runtimes_client_reaches_a_family_while_every_other_family_streams():
    """sudo-api keeps one event stream open per running runtime: the 101st family's message
    must not wait for one of them to close (aiohttp's default pool holds 100)."""
    closing = asyncio.Event()

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"type": "hello"}\n')
        await closing.wait()  # a stream that lasts, as sudo_chat's
        return response

    app = web.Application()
    app.router.add_get("/events", events)
    app.router.add_post("/messages", lambda _: web.json_response({"status": "accepted"}, status=202))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    http = runtimes_http(aiohttp.ClientTimeout(total=None, sock_connect=5))
    streams = [await http.get(f"{url}/events") for _ in range(100)]
    try:
        async with http.post(f"{url}/messages", json={}, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 202
    finally:
        closing.set()
        for stream in streams:
            stream.close()
        await http.close()
        await runner.cleanup()


async def test_a_hundred_slow_ensures_hold_back_no_quick_call(tmp_path: Path):
    """An ensure may wait minutes for a spawn slot (100 devices beat at once after a host
    restart): the provisioner client must still get a quick call through at once."""
    release, arrived = asyncio.Event(), asyncio.Queue()

    async def ensure(request: web.Request) -> web.Response:
        arrived.put_nowait(request)
        await release.wait()
        return web.json_response(running(request.match_info["family"]))

    app = web.Application()
    app.router.add_post("/v1/runtimes/{family}/ensure", ensure)
    app.router.add_get("/v1/runtimes", lambda _: web.json_response({"runtimes": []}))
    async with serving(app, tmp_path / "provisioner.sock"):
        try:
            async with ProvisionerClient(tmp_path / "provisioner.sock", timeout=10) as provisioner:
                ensures = [asyncio.create_task(provisioner.ensure(uuid.uuid4())) for _ in range(100)]
                for _ in range(100):
                    await asyncio.wait_for(arrived.get(), 10)
                assert await provisioner.list() == []
                release.set()
                assert all(r.running for r in await asyncio.gather(*ensures))
        finally:
            release.set()  # before the server's cleanup, which waits for its handlers


async def test_a_claimed_pairing_needs_the_code_the_device_says(db: Database, tmp_path: Path):
    """Only the family that claimed it, with the device's own code, within its time; five wrong
    codes end the pairing (the device hears 401 and starts over)."""
    async with ProvisionerClient(tmp_path / "nobody.sock") as provisioner:
        devices = Devices(db, provisioner, ApiSettings(pairing_confirm_sec=60))
        ours, theirs = db.create_family("Ours"), db.create_family("Theirs")
        started = devices.start_pairing("Pi")
        token = started["device_token"]
        assert devices.pairing_status(token)["state"] == "pending"
        claim = devices.claim_pairing(ours.id, started["code"])
        status = devices.pairing_status(token)
        assert status["state"] == "confirming" and status["family_name"] == "Ours"
        said = status["confirm_code"]
        assert len(said) == 6 and said.isdigit()
        with pytest.raises(PairingError):
            devices.claim_pairing(theirs.id, started["code"])  # claimed once
        with pytest.raises(PairingError, match="unknown"):
            devices.confirm_pairing(theirs.id, str(claim.pairing_id), said)  # not theirs to confirm
        wrong = f"{(int(said) + 1) % 10**6:06d}"
        for _ in range(4):
            with pytest.raises(PairingError, match="listen again"):
                devices.confirm_pairing(ours.id, str(claim.pairing_id), wrong)
        device = devices.confirm_pairing(ours.id, str(claim.pairing_id), said)  # the fifth try
        assert device.family_id == ours.id and devices.pairing_status(token)["state"] == "paired"

        started = devices.start_pairing("Pi 2")
        claim = devices.claim_pairing(ours.id, started["code"])
        for _ in range(4):
            with pytest.raises(PairingError, match="listen again"):
                devices.confirm_pairing(ours.id, str(claim.pairing_id), "000000x")
        with pytest.raises(PairingError, match="new pairing code"):
            devices.confirm_pairing(ours.id, str(claim.pairing_id), "000000x")
        assert devices.pairing_status(started["device_token"]) is None

        started = devices.start_pairing("Pi 3")
        claim = devices.claim_pairing(ours.id, started["code"])
        said = devices.pairing_status(started["device_token"])["confirm_code"]
        db.execute(
            "UPDATE pairings SET expires_at = ? WHERE id = ?", (time.time() - 1, str(claim.pairing_id))
        )
        assert devices.pairing_status(started["device_token"])["state"] == "expired"
        with pytest.raises(PairingError, match="expired"):
            devices.confirm_pairing(ours.id, str(claim.pairing_id), said)
