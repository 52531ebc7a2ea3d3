"""Web Push (sudo_api/push.py) against the push-service stand-in (tests/push_service.py), which
checks the VAPID signature and decrypts the payload as a browser would: the host's key derived
the same at every start and another on every host, the allow-list of push services that keeps
sudo-api from POSTing to an address a client wrote, a notification's round trip, a member's
choices, and a subscription the push service says is gone being forgotten."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from push_service import PushService

from sudo_api.push import (
    PROACTIVE,
    PUSHES,
    REPLIES,
    BadSubscription,
    Preferences,
    Pusher,
    Subscription,
    allowed,
    public_key,
    summary,
    vapid_key,
)
from sudo_core.config import ApiSettings
from sudo_core.db import Database

DEFAULT_SERVICES = ApiSettings().push_services


def test_the_vapid_key_is_the_same_at_every_start_and_another_on_every_host():
    one, again, other = vapid_key(b"host secret one"), vapid_key(b"host secret one"), vapid_key(b"two")
    assert public_key(one) == public_key(again) != public_key(other)
    assert len(public_key(one)) == 87  # a 65-byte uncompressed point, base64url without padding
    # A usable P-256 key: what it signs verifies with its public half.
    signature = one.sign(b"claims", ec.ECDSA(hashes.SHA256()))
    again.public_key().verify(signature, b"claims", ec.ECDSA(hashes.SHA256()))


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://fcm.googleapis.com/fcm/send/abc:def",
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAA",
        "https://wns2-par02p.notify.windows.com/w/?token=BQYAAAD",
        "https://web.push.apple.com/QGn2y5",
    ],
)
def test_the_browsers_push_services_are_allowed(endpoint):
    assert allowed(endpoint, DEFAULT_SERVICES)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://fcm.googleapis.com/fcm/send/abc",  # not https
        "https://fcm.googleapis.com:8443/fcm/send/abc",  # another port
        "https://fcm.googleapis.com.evil.example/fcm/send/abc",  # a look-alike host
        "https://fcm.googleapis.com@169.254.169.254/latest/meta-data",  # the host hidden behind userinfo
        "https://user:pw@fcm.googleapis.com/fcm/send/abc",
        "https://evilnotify.windows.com/w/",  # *. needs a dot before the domain
        "https://notify.windows.com/w/",  # and a subdomain
        "http://127.0.0.1:8600/v1/admin/settings",  # sudo-api itself
        "http://[::1]:2375/containers/json",
        "file:///etc/passwd",
        "not a url",
        "https://fcm.googleapis.com:notaport/",
    ],
)
def test_any_other_address_is_refused(endpoint):
    assert not allowed(endpoint, DEFAULT_SERVICES)
    keys = {"p256dh": "B" + "A" * 86, "auth": "A" * 22}
    with pytest.raises(BadSubscription, match="push service"):
        Subscription.parse({"endpoint": endpoint, "keys": keys}, DEFAULT_SERVICES)


def test_a_path_prefix_allows_only_what_lies_under_it():
    services = ("http://127.0.0.1:9000/push/",)
    assert allowed("http://127.0.0.1:9000/push/abc", services)
    assert not allowed("http://127.0.0.1:9000/admin", services)
    assert not allowed("http://127.0.0.1:9001/push/abc", services)


@pytest.mark.parametrize(
    ("keys", "why"),
    [
        (None, "keys must be an object"),
        ({"p256dh": "not base64!", "auth": "A" * 22}, "p256dh must be a base64url"),
        ({"p256dh": "AAAA", "auth": "A" * 22}, "p256dh must be 65 bytes"),
        ({"p256dh": "BA" + "A" * 85, "auth": "A" * 22}, "not a P-256 public key"),
        ({"auth": "A" * 22}, "p256dh must be a base64url"),
    ],
)
def test_a_subscription_with_bad_keys_is_refused(keys, why):
    with pytest.raises(BadSubscription, match=why):
        Subscription.parse({"endpoint": "https://fcm.googleapis.com/x", "keys": keys}, DEFAULT_SERVICES)


def test_a_notification_says_the_agents_words_as_short_plain_text():
    assert summary("**Water** the _plants_ & [feed the cat](https://x.example)\n\n- now <b>") == (
        "Water the plants & feed the cat now <b>"
    )
    long = summary("word " * 100)
    assert len(long) == 200 and long.endswith("…")


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(tmp_path / "sudo.db")
    yield database
    database.close()


def member_of(db: Database) -> str:
    family = db.create_family("Pushers").id
    member = uuid.uuid4()
    db.execute(
        "INSERT INTO accounts (id, email, password_hash, display_name, family_id, role, created_at)"
        " VALUES (?, ?, 'x', 'Ann', ?, 'owner', ?)",
        (str(member), f"{member.hex}@example.org", str(family), time.time()),
    )
    return str(member)


@pytest.fixture
async def service() -> AsyncIterator[PushService]:
    async with PushService() as stand_in:
        yield stand_in


@pytest.fixture
async def pusher(db: Database, service: PushService) -> AsyncIterator[Pusher]:
    settings = dataclasses.replace(ApiSettings(), push_services=(f"{service.url}/push/",))
    sender = Pusher(db, b"the host secret", settings)
    yield sender
    await sender.stop()


def outcome(name: str) -> float:
    return PUSHES.labels(name)._value.get()


async def test_a_notification_reaches_the_browser_decrypted(
    db: Database, service: PushService, pusher: Pusher
):
    member = member_of(db)
    browser = service.subscribe(pusher.public_key)
    other = service.subscribe(pusher.public_key)
    pusher.store.subscribe(
        uuid.UUID(member), Subscription.parse(browser.subscription(), pusher.settings.push_services)
    )
    sent = outcome("sent")

    pusher.notify(member, REPLIES, "Your assistant answered", "**Yes**, at 5 pm.", "/chat")
    (message,) = await asyncio.wait_for(service.wait_for(browser, 1), 10)
    assert message == {"title": "Your assistant answered", "body": "Yes, at 5 pm.", "url": "/chat"}
    assert outcome("sent") == sent + 1
    assert service.refused == []
    assert service.pushes_to(other) == []  # another browser's subscription got nothing
    (push,) = service.received
    assert push.ttl > 0 and push.claims["sub"] == "mailto:root@localhost"


async def test_what_a_member_turned_off_is_not_sent(db: Database, service: PushService, pusher: Pusher):
    member = member_of(db)
    browser = service.subscribe(pusher.public_key)
    pusher.store.subscribe(
        uuid.UUID(member), Subscription.parse(browser.subscription(), pusher.settings.push_services)
    )
    pusher.store.set_preferences(uuid.UUID(member), Preferences(replies=False, proactive=True))

    pusher.notify(member, REPLIES, "Your assistant answered", "not wanted", "/chat")
    pusher.notify(member, PROACTIVE, "A message from your assistant", "water the plants", "/chat?around=x")
    (message,) = await asyncio.wait_for(service.wait_for(browser, 1), 10)
    await pusher.stop()  # every notification under way has finished
    assert service.pushes_to(browser) == [message] and message["body"] == "water the plants"


async def test_a_subscription_the_push_service_says_is_gone_is_forgotten(
    db: Database, service: PushService, pusher: Pusher
):
    member = member_of(db)
    browser = service.subscribe(pusher.public_key)
    pusher.store.subscribe(
        uuid.UUID(member), Subscription.parse(browser.subscription(), pusher.settings.push_services)
    )
    browser.gone = True
    gone = outcome("gone")
    pusher.notify(member, REPLIES, "Your assistant answered", "hello", "/chat")
    await pusher.stop()
    assert service.refused == [(410, "the browser unsubscribed")]
    assert outcome("gone") == gone + 1
    assert pusher.store.subscriptions(member) == []


async def test_nothing_is_sent_to_a_service_no_longer_allowed(
    db: Database, service: PushService, pusher: Pusher
):
    member = member_of(db)
    browser = service.subscribe(pusher.public_key)
    pusher.store.subscribe(
        uuid.UUID(member), Subscription.parse(browser.subscription(), pusher.settings.push_services)
    )
    pusher.settings = dataclasses.replace(pusher.settings, push_services=DEFAULT_SERVICES)  # changed since
    refused = outcome("refused")
    pusher.notify(member, REPLIES, "Your assistant answered", "hello", "/chat")
    await pusher.stop()
    assert service.received == [] and service.refused == []  # never even called
    assert outcome("refused") == refused + 1


async def test_a_key_other_than_the_subscriptions_is_refused_by_the_push_service(
    db: Database, service: PushService, pusher: Pusher
):
    """The stand-in is no pushover: a browser subscribed with another site's key refuses ours."""
    member = member_of(db)
    browser = service.subscribe(public_key(vapid_key(b"another host")))
    pusher.store.subscribe(
        uuid.UUID(member), Subscription.parse(browser.subscription(), pusher.settings.push_services)
    )
    failed = outcome("failed")
    pusher.notify(member, REPLIES, "Your assistant answered", "hello", "/chat")
    await pusher.stop()
    assert service.refused == [(403, "k is not the key this subscription was made with")]
    assert outcome("failed") == failed + 1
    assert len(pusher.store.subscriptions(member)) == 1  # a refusal is not the end of a subscription


def test_a_member_keeps_at_most_ten_browsers_the_newest(db: Database):
    from sudo_api.push import SUBSCRIPTIONS_MAX, PushStore

    store, member = PushStore(db), uuid.UUID(member_of(db))
    point = "B" + "A" * 86
    for i in range(SUBSCRIPTIONS_MAX + 2):
        store.subscribe(member, Subscription(f"https://fcm.googleapis.com/fcm/send/{i}", point, "A" * 22))
    kept = [s.endpoint.rsplit("/", 1)[1] for s in store.subscriptions(member)]
    assert kept == [str(i) for i in range(2, SUBSCRIPTIONS_MAX + 2)]
