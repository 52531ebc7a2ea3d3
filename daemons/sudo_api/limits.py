"""Rate limits: events (failed guesses, codes sent) counted in sliding windows, in memory."""

from __future__ import annotations

import time
from collections import deque


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

    def count(self, **keys: str) -> None:
        now = time.monotonic()
        for kind, key in keys.items():
            self._events.setdefault((kind, key), deque(maxlen=self.limits[kind])).append(now)
        if len(self._events) >= self._sweep_at:
            for k in list(self._events):
                self._fresh(k, now)
            self._sweep_at = max(1024, 2 * len(self._events))

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


class LoginLimiter:
    """Failed logins in a sliding window, counted per account and per client address."""

    def __init__(self, per_account: int, per_address: int, window_sec: float) -> None:
        self._limiter = Limiter(window_sec, account=per_account, address=per_address)

    def retry_after(self, account: str, address: str) -> float:
        """Seconds until a login may be tried; 0 when it may be tried now."""
        return self._limiter.retry_after(account=account.lower(), address=address)

    def failed(self, account: str, address: str) -> None:
        self._limiter.count(account=account.lower(), address=address)

    def succeeded(self, account: str) -> None:
        """The account's count starts over; the address's does not (one known password must not
        reset the count of guesses at everyone else's)."""
        self._limiter.forget("account", account.lower())
