"""`sudoctl firewall`: the host's firewall for the family runtimes (the rules: firewall.nft).

Applying it needs CAP_NET_ADMIN: sudo-firewall.service runs it as root with that capability
alone, and `make run` as the developer's root. No daemon of Sudo runs anything as root.
"""

from __future__ import annotations

import subprocess
from importlib import resources
from string import Template

from sudo_core.config import Settings


class FirewallError(RuntimeError):
    """nft refused; the text is its own."""


def ruleset(settings: Settings) -> str:
    """firewall.nft, filled in for this host's runtime bridge and gateway."""
    text = resources.files(__package__).joinpath("firewall.nft").read_text()
    rt = settings.runtime
    return Template(text).substitute(
        bridge=rt.bridge, gateway=rt.host_address, gateway_port=settings.gateway.port
    )


def nft(*args: str, script: str | None = None) -> str:
    try:
        done = subprocess.run(["nft", *args], input=script, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise FirewallError("nft is missing: apt install nftables") from None
    if done.returncode != 0:
        raise FirewallError(done.stderr.strip() or f"nft exited with {done.returncode}")
    return done.stdout


def apply(settings: Settings) -> None:
    """Replace this host's table in one transaction (see firewall.nft)."""
    nft("-f", "-", script=ruleset(settings))


def remove(settings: Settings) -> bool:
    """Delete this host's table; False if there was none."""
    try:
        nft("delete", "table", "inet", settings.runtime.bridge)
    except FirewallError as exc:
        if "No such file or directory" in str(exc):
            return False
        raise
    return True
