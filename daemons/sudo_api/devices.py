"""Home devices: pairing with a short code, device tokens, and cheap coalesced heartbeats.

Pairing, in two codes: the device asks for a code, says it, and receives its device token at
once; the token is worthless until the pairing is done. A parent types the code on
/integrations: that claims the device for the family, and the device, which polls, then says
the family's name and a second, six-digit code. Typed back on the page, that makes it the
family's device. Whoever guesses a pending code therefore claims a device they cannot hear,
and the family near it hears a stranger's name; five wrong second codes end the pairing.
Only the token's SHA-256 is stored.

Heartbeats: tens of thousands of devices beating every 30 s must cost little. A beat checks the
token against an in-memory map (filled from the database on a miss, emptied on revocation),
records the time in memory, and at most every `ensure_interval_sec` per family fires an ensure
of the runtime without waiting for it. A flusher writes all beats of the last few seconds to the
database in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from sudo_core.accounts import clean_name, token_hash
from sudo_core.config import ApiSettings
from sudo_core.db import Database, Family
from sudo_core.provisioner_client import ProvisionerClient

from .limits import Limiter, Reservation, address_key

log = logging.getLogger("sudo-api.devices")

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
CODE_LENGTH = 8
"""32**8 = 2**40, about 1.1e12 codes. A guess wins if it is any pending code; wrong codes are
limited host-wide (api.pairing_attempts_per_host, 100 per 10 min: 14,400 a day), so with as many
as 100 devices waiting for their codes at every moment the odds of one guessed code are
14,400 * 100 / 1.1e12, about 1.3e-6 a day, 5e-4 a year. Six characters (1e9) gave 1.3e-3 a day
against a budget that each new family renewed."""
TOKEN_PREFIX = "sd_dev_"
CONFIRM_DIGITS = 6
CONFIRM_TRIES = 5
"""Wrong confirmation codes before a claimed pairing ends: 5 in 1e6 for a guesser who cannot
hear the device (and, with that, the device asks for a new pairing code)."""

HEARTBEATS = Counter("sudo_api_heartbeats_total", "Device heartbeats accepted")
ENSURES = Counter("sudo_api_heartbeat_ensures_total", "Runtime ensures fired by heartbeats", ["result"])


class PairingError(ValueError):
    """A code that is unknown, expired or already used."""


@dataclass(frozen=True)
class Claim:
    """A pairing a family's code claimed, waiting for the code the device says."""

    pairing_id: uuid.UUID
    device_name: str
    expires_at: float


@dataclass(frozen=True)
class Device:
    id: uuid.UUID
    family_id: uuid.UUID
    name: str
    created_at: float
    last_seen_at: float | None
    muted: bool = False
    """The family muted its microphone (as of its last heartbeat)."""


class Devices:
    def __init__(self, db: Database, provisioner: ProvisionerClient, settings: ApiSettings) -> None:
        self.db = db
        self.provisioner = provisioner
        self.settings = settings
        self._owners: dict[str, tuple[uuid.UUID, uuid.UUID]] = {}
        """token hash -> (device, family), for paired devices seen since start."""
        self._beats: dict[uuid.UUID, tuple[float, bool]] = {}
        self._active: dict[uuid.UUID, float] = {}
        self._ensured: dict[uuid.UUID, float] = {}
        self._ensuring: set[uuid.UUID] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None

    # Pairing

    def start_pairing(self, name: str) -> dict[str, Any]:
        name = clean_name(name, "the device name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time()
        self.db.execute("DELETE FROM pairings WHERE expires_at < ? AND device_id IS NULL", (now,))
        while True:
            code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
            if not self.db.query_one("SELECT 1 FROM pairings WHERE code = ?", (code,)):
                break
        pairing_id = uuid.uuid4()
        self.db.execute(
            "INSERT INTO pairings (id, code, token_hash, name, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (str(pairing_id), code, token_hash(token), name, now, now + self.settings.pairing_ttl_sec),
        )
        return {
            "pairing_id": str(pairing_id),
            "code": code,
            "device_token": token,
            "expires_at": now + self.settings.pairing_ttl_sec,
        }

    def claim_pairing(self, family: uuid.UUID, code: str) -> Claim:
        """The family typed the device's code: the device now says the family's name and a
        confirmation code, for `confirm_pairing`."""
        code = code.strip().upper().replace("-", "").replace(" ", "")
        now = time.time()
        with self.db.transaction():
            row = self.db.query_one("SELECT * FROM pairings WHERE code = ?", (code,))
            if row is None or row["family_id"] is not None or row["expires_at"] < now:
                raise PairingError("this code is unknown or expired: ask the device for a new one")
            confirm = "".join(secrets.choice("0123456789") for _ in range(CONFIRM_DIGITS))
            expires = now + self.settings.pairing_confirm_sec
            self.db.execute(
                "UPDATE pairings SET family_id = ?, confirm_code = ?, expires_at = ? WHERE id = ?",
                (str(family), confirm, expires, row["id"]),
            )
        return Claim(uuid.UUID(row["id"]), row["name"], expires)

    def confirm_pairing(self, family: uuid.UUID, pairing_id: str, code: str) -> Device:
        """The code the claimed device says, typed back: the device is the family's."""
        code = code.strip().replace(" ", "").replace("-", "")
        wrong = None  # raised once the transaction has kept the count of wrong tries
        with self.db.transaction():
            row = self.db.query_one(
                "SELECT * FROM pairings WHERE id = ? AND family_id = ? AND device_id IS NULL",
                (pairing_id, str(family)),
            )
            if row is None or row["expires_at"] < time.time():
                raise PairingError("this pairing is unknown or expired: ask the device for a new code")
            if not secrets.compare_digest(code.encode(), (row["confirm_code"] or "").encode()):
                tries = row["confirm_tries"] + 1
                if tries >= CONFIRM_TRIES:  # the device hears 401 and asks for a new code
                    self.db.execute("DELETE FROM pairings WHERE id = ?", (row["id"],))
                    wrong = PairingError("too many wrong codes: the device will say a new pairing code")
                else:
                    self.db.execute("UPDATE pairings SET confirm_tries = ? WHERE id = ?", (tries, row["id"]))
                    wrong = PairingError("this is not the code the device says: listen again")
            else:
                device = Device(uuid.uuid4(), family, row["name"], time.time(), None)
                self.db.execute(
                    "INSERT INTO devices (id, family_id, name, token_hash, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (str(device.id), str(family), device.name, row["token_hash"], device.created_at),
                )
                self.db.execute("UPDATE pairings SET device_id = ? WHERE id = ?", (str(device.id), row["id"]))
        if wrong is not None:
            raise wrong
        return device

    def pairing_status(self, token: str) -> dict[str, Any] | None:
        """What the device polls: pending (say the code), confirming (say the family's name and
        the confirmation code), paired, revoked or expired."""
        row = self.db.query_one("SELECT * FROM pairings WHERE token_hash = ?", (token_hash(token),))
        if row is None:
            return None
        expired = row["expires_at"] < time.time()
        if row["device_id"]:
            paired = self.db.query_one("SELECT 1 FROM devices WHERE id = ?", (row["device_id"],))
            state = "paired" if paired else "revoked"
        elif row["family_id"] and not expired:
            family = self.db.get_family(uuid.UUID(row["family_id"]))
            return {
                "state": "confirming",
                "family_name": family.name if family else "",
                "confirm_code": row["confirm_code"],
                "expires_at": row["expires_at"],
            }
        else:
            state = "expired" if expired else "pending"
        return {"state": state, "device_id": row["device_id"], "user_id": row["family_id"]}

    # Devices of a family

    def family_of(self, family: uuid.UUID, device: uuid.UUID) -> Family | None:
        """The family, if this device is still one of its own (a revoked device's room is no one's)."""
        row = self.db.query_one(
            "SELECT 1 FROM devices WHERE id = ? AND family_id = ?", (str(device), str(family))
        )
        return self.db.get_family(family) if row else None

    def list(self, family: uuid.UUID) -> list[Device]:
        rows = self.db.query("SELECT * FROM devices WHERE family_id = ? ORDER BY created_at", (str(family),))
        devices = []
        for r in rows:
            seen, muted = self._beats.get(uuid.UUID(r["id"]), (0.0, bool(r["muted"])))
            last = max(r["last_seen_at"] or 0, seen) or None
            devices.append(Device(uuid.UUID(r["id"]), family, r["name"], r["created_at"], last, muted))
        return devices

    async def revoke(self, family: uuid.UUID, device_id: uuid.UUID) -> bool:
        """Forget the device; its token stops working at once."""
        cur = await self.db.aio(
            self.db.execute,
            "DELETE FROM devices WHERE id = ? AND family_id = ?",
            (str(device_id), str(family)),
        )
        if cur.rowcount:
            self._forget({device_id})
        return cur.rowcount > 0

    def forget_family(self, family: uuid.UUID) -> None:
        """The family was deleted: its devices' tokens stop working at once."""
        gone = {device for device, of_family in self._owners.values() if of_family == family}
        self._forget(gone)

    def _forget(self, devices: set[uuid.UUID]) -> None:
        self._owners = {h: o for h, o in self._owners.items() if o[0] not in devices}
        for device in devices:
            self._beats.pop(device, None)

    def online(self, device: Device, now: float | None = None) -> bool:
        seen = device.last_seen_at
        return seen is not None and (now or time.time()) - seen < 3 * self.settings.heartbeat_interval_sec

    def online_ids(self, family: uuid.UUID) -> list[uuid.UUID]:
        """The family's devices online now: where what the agent says out loud is heard."""
        now = time.time()
        return [device.id for device in self.list(family) if self.online(device, now)]

    # Device authentication and heartbeats

    async def authenticate(self, token: str) -> tuple[uuid.UUID, uuid.UUID] | None:
        """(device, family) for a paired device's token."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_hash(token)
        owner = self._owners.get(digest)
        if owner is None:
            row = await self.db.aio(
                self.db.query_one, "SELECT id, family_id FROM devices WHERE token_hash = ?", (digest,)
            )
            if row is None:
                return None
            owner = self._owners[digest] = (uuid.UUID(row["id"]), uuid.UUID(row["family_id"]))
        return owner

    def heartbeat(self, device: uuid.UUID, family: uuid.UUID, muted: bool = False) -> None:
        """Record a beat in memory and maybe wake the runtime; never waits for either."""
        now = time.time()
        self._beats[device] = (now, muted)
        self._active[family] = now
        HEARTBEATS.inc()
        if (
            now - self._ensured.get(family, 0) >= self.settings.ensure_interval_sec
            and family not in self._ensuring
        ):
            self._ensured[family] = now
            self._ensuring.add(family)
            task = asyncio.create_task(self._ensure(family))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _ensure(self, family: uuid.UUID) -> None:
        try:
            await asyncio.sleep(random.uniform(0, self.settings.warm_up_jitter_sec))
            await self.provisioner.ensure(family, warm_up=True)
            ENSURES.labels("ok").inc()
        except Exception as exc:  # fire and forget: the next beat tries again
            ENSURES.labels("failed").inc()
            self._ensured.pop(family, None)
            log.warning("heartbeat ensure of %s failed: %r", family, exc)
        finally:
            self._ensuring.discard(family)

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="heartbeat-flush")

    async def stop(self) -> None:
        if self._flusher:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_flush_sec)
            try:
                await self.flush()
            except Exception:
                log.exception("writing heartbeats failed; keeping them for the next flush")

    async def flush(self) -> None:
        """Write the beats held in memory; each stays there until it is written, so a device
        is never shown offline while its beat is on its way to the database."""
        beats, active = dict(self._beats), dict(self._active)
        if not beats and not active:
            return
        gone = await self.db.aio(self._write, beats, active)
        # A device whose row is gone was deleted with its family (maybe by sudoctl, elsewhere).
        self._forget(gone)
        for held, written in ((self._beats, beats), (self._active, active)):
            for key, at in written.items():
                if held.get(key) == at:  # not beaten again meanwhile
                    del held[key]

    def _write(
        self, beats: dict[uuid.UUID, tuple[float, bool]], active: dict[uuid.UUID, float]
    ) -> set[uuid.UUID]:
        """Write the beats; returns the devices that no longer exist."""
        gone = set()
        with self.db.transaction():
            for device, (at, muted) in beats.items():
                cur = self.db.execute(
                    "UPDATE devices SET last_seen_at = max(coalesce(last_seen_at, 0), ?), muted = ? "
                    "WHERE id = ?",
                    (at, int(muted), str(device)),
                )
                if not cur.rowcount:
                    gone.add(device)
            for family, at in active.items():
                self.db.touch_family(family, at)
        return gone


def guessing(limiter: Limiter, family: uuid.UUID, address: str) -> Reservation:
    """A pairing or confirmation code typed: wrong ones are limited per family, per address (an
    IPv6 client by its /64) and on the whole host; a right one gives its count back."""
    return limiter.reserve(
        "too many wrong pairing codes", family=str(family), address=address_key(address), host="all"
    )


async def claim_device(
    devices: Devices, limiter: Limiter, family: uuid.UUID, code: str, address: str
) -> Claim:
    """A parent typed the device's first code, from the client at `address`: the family claims
    the device (`Devices.claim_pairing`). `PairingError` for a wrong code, `RateLimited` past
    too many."""
    attempt = guessing(limiter, family, address)
    claim = await devices.db.aio(devices.claim_pairing, family, code)
    attempt.give_back()
    return claim


async def confirm_device(
    devices: Devices, limiter: Limiter, family: uuid.UUID, pairing_id: str, code: str, address: str
) -> Device:
    """A parent typed back the code the claimed device says: it is the family's
    (`Devices.confirm_pairing`). `PairingError` for a wrong code, `RateLimited` past too many."""
    attempt = guessing(limiter, family, address)
    device = await devices.db.aio(devices.confirm_pairing, family, pairing_id, code)
    attempt.give_back()
    return device
