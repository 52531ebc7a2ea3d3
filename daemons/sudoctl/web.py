"""`sudoctl web caddyfile`: sudo-web's Caddyfile (the template: Caddyfile.j2), from the settings.

sudo-web.service renders it into its runtime directory at every start and runs Debian's Caddy
with it, so /etc/sudo/sudo.toml stays the one place the site is configured.
"""

from __future__ import annotations

import ipaddress
from importlib import resources

import jinja2

from sudo_core import config


def upstream(listen: str) -> tuple[str, str]:
    """Where Caddy reaches sudo-api's api.listen, and the address it connects from: loopback
    for a listener on every address."""
    host, _, port = listen.rpartition(":")
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"{host}:{port}", host.strip("[]")


def believed(peer: str, trusted_proxies: tuple[str, ...]) -> bool:
    """Whether sudo-api takes X-Forwarded headers from this address."""
    try:
        return ipaddress.ip_address(peer) in {ipaddress.ip_address(t) for t in trusted_proxies}
    except ValueError:
        return False


def site_address(name: str) -> str:
    """A name as a Caddyfile site address (an IPv6 address in brackets)."""
    return f"[{name}]" if ":" in name else name


def caddyfile(settings: config.Settings) -> str:
    """The Caddyfile for these settings; ConfigError when sudo-api would not believe Caddy."""
    web = settings.web
    address, peer = upstream(settings.api.listen)
    if not believed(peer, settings.api.trusted_proxies):
        raise config.ConfigError(
            f"api.trusted_proxies must include {peer}, where Caddy reaches sudo-api ({settings.api.listen})"
            " from: sudo-api checks Twilio's signatures over the public URL it rebuilds from"
            " Caddy's X-Forwarded headers"
        )
    domain = web.site()
    tls_domain = web.tls_for(domain)
    tls_livekit = web.tls_for(web.livekit_domain) if web.livekit_domain else ""
    template = jinja2.Template(
        resources.files(__package__).joinpath("Caddyfile.j2").read_text(),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    return template.render(
        web=web,
        domain=site_address(domain),
        livekit_domain=site_address(web.livekit_domain),
        https_suffix="" if web.https_port == 443 else f":{web.https_port}",
        upstream=address,
        peer=peer,
        tls_domain=tls_domain,
        tls_livekit=tls_livekit,
        internal="internal" in (tls_domain, tls_livekit),
    )
