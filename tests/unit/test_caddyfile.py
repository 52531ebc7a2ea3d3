"""sudo-web's Caddyfile as `sudoctl web caddyfile` renders it from the settings, and checked by
Debian's Caddy itself (`caddy validate`, which parses it and provisions every module)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sudo_core import config
from sudoctl import web


def settings(**env: str) -> config.Settings:
    return config.load({"SUDO_CONFIG": ""} | {f"SUDO_{k.upper()}": v for k, v in env.items()})


def render(tmp_path: Path, **env: str) -> str:
    """The Caddyfile for these settings, after Caddy accepted it."""
    text = web.caddyfile(settings(**env))
    path = tmp_path / "Caddyfile"
    path.write_text(text)
    checked = subprocess.run(
        ["caddy", "validate", "--adapter", "caddyfile", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    return text


def site(text: str, name: str) -> str:
    """The block of one site address."""
    return re.search(rf"^{re.escape(name)} \{{\n(.*?)^\}}$", text, re.M | re.S).group(1)


def test_a_public_name_gets_its_certificate_by_acme(tmp_path: Path):
    text = render(tmp_path, web_domain="sudo.example.org", web_acme_email="ops@example.org")
    block = site(text, "sudo.example.org")
    assert "tls" not in block.split()  # Caddy's automatic HTTPS: ACME, and HTTP redirected
    assert "\temail ops@example.org\n" in text and "skip_install_trust" not in text
    assert "\thttp_port 80\n" in text and "\thttps_port 443\n" in text and "\tadmin off\n" in text
    assert "\tredir https://{host}{uri} 308\n" in site(text, "http://sudo.example.org")
    assert 'header Strict-Transport-Security "max-age=31536000"' in block
    # To sudo-api where it listens; the chat's stream flushed as it is written.
    assert re.search(
        r"handle /v1/chat/stream \{\s+reverse_proxy 127.0.0.1:8600 \{\s+flush_interval -1\s+\}", block
    )
    assert re.search(r"handle \{\s+reverse_proxy 127.0.0.1:8600\s+\}", block)
    assert "7880" not in text  # no LiveKit server named


@pytest.mark.parametrize(
    ("name", "address"),
    [
        *(
            (n, n)
            for n in ("sudo.lan", "family.local", "sudo.home.arpa", "box.internal", "sudo", "192.168.1.20")
        ),
        ("fd00::20", "[fd00::20]"),
    ],
)
def test_a_lan_name_gets_caddys_own_ca(tmp_path: Path, name: str, address: str):
    text = render(tmp_path, web_domain=name)
    assert "\ttls internal\n" in site(text, address)
    assert "\tskip_install_trust\n" in text  # Caddy touches no trust store of the host


def test_the_tls_setting_wins_over_the_name(tmp_path: Path):
    assert "\ttls internal\n" in site(
        render(tmp_path, web_domain="sudo.example.org", web_tls="internal"), "sudo.example.org"
    )
    assert "tls" not in site(render(tmp_path, web_domain="sudo.lan", web_tls="acme"), "sudo.lan").split()


def test_no_domain_is_this_machines_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(config.socket, "gethostname", lambda: "Kitchen-Server")
    assert "\ttls internal\n" in site(render(tmp_path), "kitchen-server")
    monkeypatch.setattr(config.socket, "gethostname", lambda: "under_score")
    with pytest.raises(config.ConfigError, match=r"web\.domain: empty, and the host name 'under_score'"):
        web.caddyfile(settings())


def test_livekit_signalling_under_its_own_name_when_set(tmp_path: Path):
    text = render(
        tmp_path,
        web_domain="sudo.example.org",
        web_livekit_domain="voice.lan",
        web_livekit_upstream="127.0.0.1:7999",
        web_http_port="8080",
        web_https_port="8443",
    )
    block = site(text, "voice.lan")
    assert "\treverse_proxy 127.0.0.1:7999\n" in block and "\ttls internal\n" in block
    assert "tls" not in site(text, "sudo.example.org").split()
    assert "\thttp_port 8080\n" in text and "\thttps_port 8443\n" in text
    # Plain HTTP redirects to the HTTPS port itself, not to 443.
    assert "\tredir https://{host}:8443{uri} 308\n" in site(text, "http://sudo.example.org")


def test_the_upstream_is_sudo_apis_listener_on_loopback(tmp_path: Path):
    text = render(tmp_path, web_domain="sudo.lan", api_listen="0.0.0.0:8700")
    assert "reverse_proxy 127.0.0.1:8700\n" in text
    text = render(tmp_path, web_domain="sudo.lan", api_listen="[::]:8700")
    assert "reverse_proxy [::1]:8700\n" in text


def test_caddy_must_be_a_proxy_sudo_api_believes():
    """Otherwise sudo-api would check Twilio's signatures against its own http://127.0.0.1 URL
    and refuse every webhook; better said before Caddy starts."""
    with pytest.raises(config.ConfigError, match=r"api.trusted_proxies must include 127.0.0.1"):
        web.caddyfile(settings(web_domain="sudo.lan", api_trusted_proxies="::1"))


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"web_tls": "letsencrypt"}, "web.tls"),
        ({"web_domain": "Sudo.Example.org"}, "web.domain"),
        ({"web_domain": "sudo.example.org {\n}"}, "web.domain"),
        ({"web_livekit_domain": "voice example"}, "web.livekit_domain"),
        ({"web_domain": "sudo.lan", "web_livekit_domain": "sudo.lan"}, "web.livekit_domain"),
        ({"web_acme_email": "ops@example.org }"}, "web.acme_email"),
        ({"web_https_port": "0"}, "web.https_port"),
        ({"web_http_port": "443"}, "web.http_port"),
        ({"web_livekit_upstream": "7880"}, "web.livekit_upstream"),
    ],
)
def test_bad_web_settings_name_the_key(env: dict[str, str], names: str):
    with pytest.raises(config.ConfigError) as info:
        settings(**env)
    assert names in str(info.value)
