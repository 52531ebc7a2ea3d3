"""sudo-reaper: a oneshot, run by sudo-reaper.timer, that evicts idle runtimes, removes orphans
and has the families' data volumes measured against runtime.volume_quota.

It decides nothing itself: it asks the provisioner (starting it through its socket if need
be), which checks each family under that family's lock, so a runtime in use is never reaped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import aiohttp

from sudo_core import config, logs
from sudo_core.logs import fields
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError

log = logging.getLogger("sudo_reaper")


async def reap(settings: config.Settings, idle_sec: float | None) -> int:
    try:
        async with ProvisionerClient(settings.provisioner.socket) as provisioner:
            evicted = await provisioner.evict_idle(idle_sec)
            reconciled = await provisioner.reconcile()
            log.info(
                f"evicted {len(evicted['evicted'])} idle runtime(s), kept {evicted['kept']}; "
                f"removed {len(reconciled['removed'])} orphan(s)",
                extra=fields(
                    evicted=",".join(evicted["evicted"]),
                    removed=",".join(r["name"] for r in reconciled["removed"]),
                ),
            )
            # Last: Docker's count of every volume may take a while on a big host.
            volumes = await provisioner.measure_volumes()
    except (aiohttp.ClientError, ProvisionerError) as exc:
        log.error(f"the provisioner at {settings.provisioner.socket} failed: {exc}")
        return 1
    if volumes["over_quota"]:
        log.warning(
            f"{len(volumes['over_quota'])} famil(ies) past runtime.volume_quota; their new messages wait",
            extra=fields(over_quota=",".join(volumes["over_quota"])),
        )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="sudo-reaper", description=__doc__.split("\n")[0])
    parser.add_argument("--idle-sec", type=float, help="override runtime.idle_sec for this run (seconds)")
    args = parser.parse_args()
    settings = config.load_or_exit("sudo-reaper")
    logs.setup("sudo-reaper", settings.core.log_level)
    sys.exit(asyncio.run(reap(settings, args.idle_sec)))


if __name__ == "__main__":
    main()
