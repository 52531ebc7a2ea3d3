"""What holds a request back: rate limits, and a family's full storage.

Rate limits: events (failed guesses, codes sent, messages) counted in sliding windows, in memory.

An attempt is counted when it is *reserved*, before the handler awaits the password hash, the
database or Twilio, and given back if it turns out not to count (a right password). Checking
first and counting after the await let a burst through: sixty concurrent wrong passwords were
all checked against a limit of five, since none had been counted yet when the others looked.
Reserving happens between two awaits, so on the one event loop it is atomic.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections import deque
from dataclasses import dataclass

from sudo_core import usage
from sudo_core.db import Database


def address_key(address: str) -> str:
    """A client's address as the limits count it: an IPv6 client by its /64, since one
    subscriber holds all of a /64 and could otherwise take a fresh address for every guess."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class RateLimited(Exception):
    """Too many attempts: the limit holds for `wait` more seconds."""

    def __init__(self, what: str, wait: float) -> None:
        self.what, self.wait = what, wait
        super().__init__(f"{what}: try again in {self.retry_after} s")

    @property
    def retry_after(self) -> int:
        """Whole seconds, rounded up, for the Retry-After header."""
        return int(self.wait) + 1


@dataclass(frozen=True)
class Reservation:
    """One attempt counted under each of its keys; `give_back` uncounts it."""

    limiter: Limiter
    keys: dict[str, str]
    at: float

    def give_back(self) -> None:
        self.limiter.uncount(self.at, **self.keys)


class Limiter:
    """Events (failed guesses, codes sent) in a sliding window, counted per key of each kind.

    `Limiter(300, account=5, address=50)` allows 5 events per account and 50 per address in any
    300 s. In memory: a restart forgives, which costs an attacker a restart per few tries. Keys
    whose events the window forgot are dropped, so guessing at new keys takes no lasting memory.
    """

    def __init__(self, window_sec: float, **limits: int) -> None:
        self.limits = limits
        self.window = window_sec
        self._events: dict[tuple[str, str], deque[float]] = {}
        self._sweep_at = 1024

    def retry_after(self, **keys: str) -> float:
        """Seconds until one more event is allowed for all of these keys; 0 when it is now."""
        now = time.monotonic()
        wait = 0.0
        for kind, key in keys.items():
            events = self._fresh((kind, key), now)
            if events is not None and len(events) >= self.limits[kind]:
                wait = max(wait, events[0] + self.window - now)
        return wait

    def reserve(self, what: str, **keys: str) -> Reservation:
        """Count one attempt under every key now, or raise RateLimited (`what` says what was
        limited) if any key is at its limit."""
        wait = self.retry_after(**keys)
        if wait > 0:
            raise RateLimited(what, wait)
        return Reservation(self, keys, self.count(**keys))

    def count(self, **keys: str) -> float:
        now = time.monotonic()
        for kind, key in keys.items():
            self._events.setdefault((kind, key), deque(maxlen=self.limits[kind])).append(now)
        if len(self._events) >= self._sweep_at:
            for k in list(self._events):
                self._fresh(k, now)
            self._sweep_at = max(1024, 2 * len(self._events))
        return now

    def uncount(self, at: float, **keys: str) -> None:
        """Take back the event counted at `at` under these keys (if the window still holds it)."""
        for kind, key in keys.items():
            events = self._events.get((kind, key))
            if events is not None and at in events:
                events.remove(at)

    def forget(self, kind: str, key: str) -> None:
        self._events.pop((kind, key), None)

    def _fresh(self, key: tuple[str, str], now: float) -> deque[float] | None:
        events = self._events.get(key)
        while events and events[0] <= now - self.window:
            events.popleft()
        if events is not None and not events:
            del self._events[key]
            return None
        return events


TOO_MANY_MESSAGES = "your family has sent its agent many messages this minute"


class StorageFull(Exception):
    """The family's data volume is past runtime.volume_quota (as last measured): its new
    messages wait. Nothing it holds is touched."""

    def __init__(self, volume: usage.Volume) -> None:
        super().__init__(
            f"your family's storage is full ({usage.size_text(volume.bytes)} of "
            f"{usage.size_text(volume.quota)}), so new messages wait; nothing stored is lost. "
            "The host's admin can make room"
        )


async def check_storage(db: Database, family: uuid.UUID) -> None:
    """StorageFull if the family's volume was last measured past its quota."""
    volume = await db.aio(usage.volume_of, db, family)
    if volume is not None and volume.over_quota:
        raise StorageFull(volume)


def message_limiter(per_minute: int) -> Limiter:
    """A family's messages to its agent in any minute (`family`), shared by the web and
    WhatsApp; and, per WhatsApp number, the one notice a minute that a message was refused
    (`told`), so a flood is not answered message by message at the host's cost."""
    return Limiter(60.0, family=per_minute, told=1)


class LoginLimiter:
    """Failed logins in a sliding window, counted per account and per client address."""

    def __init__(self, per_account: int, per_address: int, window_sec: float) -> None:
        self._limiter = Limiter(window_sec, account=per_account, address=per_address)

    def reserve(self, account: str, address: str) -> Reservation:
        """Count a login attempt now (RateLimited if it may not be tried)."""
        return self._limiter.reserve(
            "too many failed logins", account=account.lower(), address=address_key(address)
        )

    def succeeded(self, attempt: Reservation) -> None:
        """A right password: the attempt does not count, and the account's count starts over;
        the address's does not (one known password must not reset the count of guesses at
        everyone else's)."""
        attempt.give_back()
        self._limiter.forget("account", attempt.keys["account"])
