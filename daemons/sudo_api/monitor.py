"""What sudo-api's metrics tell of the host beyond its own requests, for the alert rules of
sudo-observability (units/observability/alerts.yml): each running runtime's memory against its
limit, each family's volume against its quota, the dates of the certificate sudo-web serves,
and the nightly backup. The provisioner is not scraped (it exits when idle); whether its socket
answers and the spawns it failed are counted by its client (sudo_core.provisioner_client).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path

import aiohttp
from cryptography import x509
from prometheus_client import Gauge

from sudo_core import backups, config, usage
from sudo_core.db import Database
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError

log = logging.getLogger("sudo-api.monitor")

MEMORY = Gauge("sudo_runtime_memory_bytes", "Memory a family's runtime uses, page cache aside", ["family"])
MEMORY_LIMIT = Gauge("sudo_runtime_memory_limit_bytes", "A family's runtime's memory limit", ["family"])
VOLUME = Gauge("sudo_volume_used_bytes", "A family's data volume, as last measured", ["family"])
VOLUME_QUOTA = Gauge("sudo_volume_quota_bytes", "The quota it was measured against", ["family"])
CERT_NOT_AFTER = Gauge(
    "sudo_web_certificate_expiry_timestamp_seconds", "When sudo-web's certificate expires", ["domain"]
)
CERT_NOT_BEFORE = Gauge(
    "sudo_web_certificate_issued_timestamp_seconds", "When sudo-web's certificate became valid", ["domain"]
)
BACKUP_SUCCESS = Gauge(
    "sudo_backup_last_success_timestamp", "When the last nightly backup of every family succeeded (0: never)"
)
BACKUP_FAILED = Gauge(
    "sudo_backup_last_failed", "1 if the last nightly backup failed or no night succeeded within 36 hours"
)

PROBE_TIMEOUT_SEC = 10.0


def watch_backups(state_dir: Path) -> None:
    """The gauges read `sudoctl backup --all`'s status file at each scrape (a few hundred bytes)."""
    BACKUP_SUCCESS.set_function(
        lambda: (backups.read_status(state_dir) or backups.Status()).last_success_at or 0
    )
    BACKUP_FAILED.set_function(lambda: backups.summary(backups.read_status(state_dir))["state"] == "failed")


async def certificate_dates(port: int, name: str) -> tuple[float, float]:
    """notBefore and notAfter of the certificate served for `name` on this host's `port`."""
    context = ssl.create_default_context()
    # Only its dates are read: a LAN site's certificate comes from Caddy's own CA, which this
    # host need not trust.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(PROBE_TIMEOUT_SEC):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=name)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
    certificate = x509.load_der_x509_certificate(der)
    return certificate.not_valid_before_utc.timestamp(), certificate.not_valid_after_utc.timestamp()


class Monitor:
    """Samples every api.monitor_interval_sec; a sample that fails leaves the last values (a
    certificate's dates stay true), except the runtimes', which are dropped with the provisioner."""

    def __init__(self, settings: config.Settings, db: Database, provisioner: ProvisionerClient) -> None:
        self.settings, self.db, self.provisioner = settings, db, provisioner
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        watch_backups(self.settings.core.state_dir)
        self._task = asyncio.create_task(self._run(), name="monitor")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            samples = await asyncio.gather(
                self.runtimes(), self.volumes(), self.certificates(), return_exceptions=True
            )
            for failed in (s for s in samples if isinstance(s, Exception)):
                log.error("a monitoring sample failed: %r", failed)
            await asyncio.sleep(self.settings.api.monitor_interval_sec)

    async def runtimes(self) -> None:
        try:
            runtimes = await self.provisioner.list(stats=True)
        except (ProvisionerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("cannot sample the runtimes' memory: %s", exc)
            runtimes = []
        MEMORY.clear()
        MEMORY_LIMIT.clear()
        for runtime in runtimes:
            if runtime.family and runtime.memory_bytes is not None:
                MEMORY.labels(str(runtime.family)).set(runtime.memory_bytes)
                MEMORY_LIMIT.labels(str(runtime.family)).set(self.settings.runtime.memory_bytes)

    async def volumes(self) -> None:
        measured = await self.db.aio(usage.volumes, self.db)
        VOLUME.clear()
        VOLUME_QUOTA.clear()
        for family, volume in measured.items():
            VOLUME.labels(str(family)).set(volume.bytes)
            VOLUME_QUOTA.labels(str(family)).set(volume.quota)

    async def certificates(self) -> None:
        web = self.settings.web
        try:
            names = [web.site(), *([web.livekit_domain] if web.livekit_domain else [])]
        except config.ConfigError:
            return  # no site name: sudo-web cannot be serving one either
        for name in names:
            try:
                issued, expires = await certificate_dates(web.https_port, name)
            except (OSError, TimeoutError, ValueError) as exc:  # ssl.SSLError is an OSError
                log.debug("cannot read the certificate of %s: %s", name, exc)
                continue
            CERT_NOT_BEFORE.labels(name).set(issued)
            CERT_NOT_AFTER.labels(name).set(expires)
