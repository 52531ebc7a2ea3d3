"""Settings: one TOML file (path from SUDO_CONFIG), every key overridable from the environment.

A key `runtime.idle_sec` in the file is `[runtime] idle_sec = ...`; its environment override
is `SUDO_RUNTIME_IDLE_SEC`. Settings are frozen dataclasses, one per concern, each field with
its meaning and unit in the docstring under it; the whole configuration reads in one screen.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/sudo/sudo.toml")
SIZE = re.compile(r"(\d+)([kmgKMG]?)")


def size_bytes(size: str) -> int:
    """Bytes in a size as the settings write it: 512m, 5g (a bare number is bytes)."""
    number, unit = SIZE.fullmatch(size).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** " kmg".index(unit.lower() or " ")


class ConfigError(ValueError):
    """The configuration file or an override cannot be used; the message says which key."""


@dataclass(frozen=True)
class CoreSettings:
    state_dir: Path = Path("/var/lib/sudo")
    """Where the database and (outside systemd) the generated development secrets live."""

    database: Path | None = None
    """SQLite database file; empty means `<state_dir>/sudo.db`."""

    log_level: str = "INFO"
    """Python logging level for every daemon."""

    @property
    def database_path(self) -> Path:
        return self.database or self.state_dir / "sudo.db"


@dataclass(frozen=True)
class ProvisionerSettings:
    socket: Path = Path("/run/sudo/provisioner.sock")
    """Unix socket the provisioner serves on (systemd opens it; `--bind` opens it in development)."""

    idle_exit_sec: float = 300.0
    """A socket-activated provisioner exits after this long with no request (seconds; 0 = never)."""

    max_concurrent_spawns: int = 4
    """Spawns (create + wait healthy) running at once across all families."""

    restart_concurrency: int = 0
    """Runtimes recreated at once by restart-all; 0 follows the host: one per core, as many as
    the memory available holds at runtime.memory each (and never past max_concurrent_spawns)."""

    restart_grace_sec: float = 30.0
    """Restart-all waits up to this long for a family's in-flight requests to finish (seconds)."""

    health_timeout_sec: float = 120.0
    """One deadline for a new runtime to answer GET /health with 200 (seconds)."""

    client_timeout_sec: float = 60.0
    """Longest a client may leave a request unfinished: its headers, its JSON body, or a pause in a
    volume upload; then it is cut off, so a stalled client holds no handler (nor the idle exit)."""


@dataclass(frozen=True)
class RuntimeSettings:
    image: str = "sudo-hermes:0.19.0"
    """Hermes Agent image: the locally built one in development, the retagged upstream one in
    production. Once `sudoctl image upgrade` has run, the image it chose is used instead
    (`<state_dir>/runtime-image.json`)."""

    idle_sec: float = 1800.0
    """A runtime with no activity and no request in flight for this long is evicted (seconds)."""

    max_running: int = 32
    """Runtimes running at once. Past it, a family someone is waiting on takes the place of the
    least recently active runtime not in use; a warm-up (a device's heartbeat) takes none and
    waits for a free place. With every place in use, the request is refused (503) until one is."""

    memory: str = "1g"
    """Memory limit per family container (k, m, g). A warm-up (a device's heartbeat) starts a
    runtime only while the host has this much memory available (MemAvailable); one someone
    waits on starts regardless."""

    cpus: float = 1.0
    """CPU limit per family container (cores)."""

    volume_quota: str = "5g"
    """Size a family's data volume may reach (k, m, g). Measured by the reaper; past it the
    family is told so and its new messages wait, and nothing of its data is touched."""

    pids_limit: int = 256
    """Process limit per family container."""

    user: str = "10000:10000"
    """uid:gid the container runs as, with no capability; never root (a family's agent runs
    commands: as root, a kernel flaw away from the host)."""

    read_only: bool = True
    """Read-only root filesystem, with tmpfs on /tmp; the data volume stays writable."""

    network: str = "sudo-runtimes"
    """Docker bridge network for family containers; inter-container traffic is disabled on it."""

    bridge: str = "sudo-rt0"
    """The Linux bridge of that network, by name: the host's firewall (sudo-firewall.service)
    matches it by this name, so it is known before Docker creates it."""

    subnet: str = "10.213.0.0/16"
    """Subnet of that network; its first address is the host side, where the LLM gateway listens.
    The provisioner's unit allows it this subnet alone (IPAddressAllow=): change both together."""

    egress: bool = False
    """Let agents reach the internet; when false the network is internal and reaches only the host."""

    plugins_dir: Path | None = None
    """Hermes plugins bind-mounted read-only at /opt/data/plugins; empty means the bundled ones."""

    toolsets: tuple[str, ...] = ("memory", "todo", "session_search")
    """Hermes toolsets enabled on the api_server platform."""

    api_port: int = 8642
    """Port of Hermes's api_server inside the container."""

    chat_port: int = 8643
    """Port of the sudo_chat plugin's listener inside the container (sudo-api talks to it)."""

    whatsapp_port: int = 8644
    """Port of the twilio_whatsapp plugin's listener inside the container (sudo-api talks to it)."""

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_network(self.subnet)
        except ValueError as exc:
            raise ConfigError(f"runtime.subnet: {exc}") from exc
        for key in ("memory", "volume_quota"):
            if not SIZE.fullmatch(getattr(self, key)):
                raise ConfigError(f"runtime.{key}: {getattr(self, key)!r} is not a size such as 500m or 5g")
        if not re.fullmatch(r"[1-9]\d*:[1-9]\d*", self.user):
            raise ConfigError(f"runtime.user: {self.user!r} is not a non-root uid:gid, e.g. 10000:10000")
        # A Linux interface name (at most 15 bytes), and an nftables table name as it is.
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,14}", self.bridge):
            raise ConfigError(f"runtime.bridge: {self.bridge!r} is not 1-15 of a-z, 0-9 and -, from a letter")

    @property
    def memory_bytes(self) -> int:
        return size_bytes(self.memory)

    @property
    def volume_quota_bytes(self) -> int:
        return size_bytes(self.volume_quota)

    @property
    def host_address(self) -> str:
        """The bridge's own address: the host as the containers see it."""
        return str(next(ipaddress.ip_network(self.subnet).hosts()))


@dataclass(frozen=True)
class GatewaySettings:
    port: int = 8650
    """Port of the LLM gateway on the runtime network's host address."""

    metrics: str = "127.0.0.1:9650"
    """Loopback address serving the gateway's Prometheus metrics (empty = none)."""

    request_timeout_sec: float = 600.0
    """Longest an upstream LLM response may take in all (seconds)."""

    idle_timeout_sec: float = 75.0
    """A family's connection with no complete request for this long is closed (seconds): idle
    keep-alives, and headers sent too slowly."""

    family_in_flight: int = 8
    """Requests one family may have in the gateway at once, from its key checked to the last
    byte of the answer (bodies sent slowly included); more are answered 429, and Hermes retries.
    One family's agent can then never hold every connection or the provider's whole quota."""

    max_tokens: int = 16384
    """The most tokens one answer may ask of the provider (max_tokens and max_completion_tokens
    are lowered to it): a family's agent cannot order one huge answer on everyone's quota."""


@dataclass(frozen=True)
class LLMSettings:
    base_url: str = ""
    """OpenAI-compatible provider URL, ending in /v1; an admin setting in the database overrides it."""

    model: str = ""
    """Model every family uses; an admin setting in the database overrides it."""

    context_length: int = 131072
    """The model's context window (tokens), told to Hermes so it never probes the internet for it."""


SIGNUP_MODES = ("open", "invite", "closed")


@dataclass(frozen=True)
class ApiSettings:
    listen: str = "127.0.0.1:8600"
    """Where sudo-api serves the web and /v1 (host:port); Caddy terminates TLS in front of it."""

    service_listen: str = "127.0.0.1:8601"
    """Where sudo-api serves the voice bridge's lookups (/v1/service/*: every family's runtime
    address and key) — loopback, never behind Caddy; the public listener does not serve them."""

    metrics: str = "127.0.0.1:9600"
    """Where sudo-api serves Prometheus metrics (host:port), apart from the public listener."""

    secure_cookies: bool = True
    """Mark session cookies Secure (HTTPS only); turn off only for plain-HTTP development."""

    session_days: float = 30.0
    """How long a login lasts (days)."""

    login_attempts: int = 5
    """Failed logins allowed per account within login_window_sec."""

    login_attempts_per_address: int = 50
    """Failed logins allowed per client address within login_window_sec (families share NATs)."""

    login_window_sec: float = 300.0
    """Window of the login rate limit (seconds)."""

    heartbeat_interval_sec: float = 30.0
    """How often paired devices are told to heartbeat (seconds); offline after three missed."""

    heartbeat_flush_sec: float = 5.0
    """How often coalesced heartbeats are written to the database (seconds)."""

    ensure_interval_sec: float = 60.0
    """Least time between two runtime ensures triggered by one family's heartbeats (seconds)."""

    warm_up_jitter_sec: float = 5.0
    """A heartbeat's warm-up is asked for after a random 0 to this many seconds, so that the
    home devices of a whole host, beating at once after a reboot, do not all ask at once."""

    pairing_ttl_sec: float = 600.0
    """How long a device's pairing code stays valid (seconds)."""

    pairing_confirm_sec: float = 300.0
    """Once its code is typed, how long the device's spoken confirmation code stays valid
    (seconds); then, or after five wrong tries, the device asks for a new pairing code."""

    pairing_attempts: int = 10
    """Wrong pairing codes a family may type within pairing_window_sec (a guessed code would
    bind someone else's device, and its microphone, to the guesser's family)."""

    pairing_attempts_per_address: int = 50
    """Wrong pairing codes allowed per client address within pairing_window_sec."""

    pairing_attempts_per_host: int = 100
    """Wrong pairing codes allowed on the whole host within pairing_window_sec: what bounds a
    guesser with many families and addresses (see the odds at sudo_api.devices.CODE_LENGTH)."""

    pairing_starts_per_address: int = 30
    """Pairings a client address may start within pairing_window_sec (each one is a row)."""

    pairing_window_sec: float = 600.0
    """Window of the pairing limits (seconds)."""

    whatsapp_codes_per_number: int = 5
    """Link codes sent to one WhatsApp number within whatsapp_code_window_sec, whichever family
    asks (each allows five guesses: this bounds the guessing, and the messages to a stranger)."""

    whatsapp_code_window_sec: float = 3600.0
    """Window of the WhatsApp code limit (seconds)."""

    family_messages_per_minute: int = 20
    """Messages one family may send its agent in any minute, every member and channel (web,
    WhatsApp) together; more are refused, with the wait, until the minute has passed."""

    reply_timeout_sec: float = 600.0
    """A delivered message with no answer after this long is shown as failed (seconds)."""

    delivery_attempts: int = 3
    """Times a message is delivered again after the agent restarted before it is shown failed."""

    watch_interval_sec: float = 10.0
    """How often running runtimes are listed to read their proactive messages (seconds)."""

    monitor_interval_sec: float = 30.0
    """How often sudo-api samples what its metrics tell of the host (seconds): each runtime's
    memory, the volumes' last measured sizes, and the certificate sudo-web serves."""

    shutdown_grace_sec: float = 30.0
    """On SIGTERM, how long replies in progress may take to finish (seconds)."""

    client_timeout_sec: float = 30.0
    """Longest a client may take to send a request's body (seconds); a slower one gets 408 and is
    cut off, so slow clients hold no handler."""

    idle_timeout_sec: float = 75.0
    """A connection with no complete request for this long is closed (seconds): idle keep-alives,
    and headers sent too slowly."""

    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    """Peers whose X-Forwarded-For/Proto/Host are believed (Caddy): the client's address for the
    rate limits, and the public URL Twilio signs."""

    allow_http_urls: bool = False
    """Let the admin's provider addresses (LLM, speech, Twilio, LiveKit) use plain http beyond
    this host (a provider on a trusted LAN); without it, plain http only to loopback, since each
    address is sent its secret."""

    signup: str = "open"
    """Who may create a family: `open` (anyone, at /signup), `invite` (whoever holds an
    invitation the admin issued from /admin or `sudoctl invite`) or `closed` (nobody). Members
    join existing families by their parents' invitations in every mode."""

    push_services: tuple[str, ...] = (
        "https://fcm.googleapis.com/",
        "https://updates.push.services.mozilla.com/",
        "https://*.notify.windows.com/",
        "https://web.push.apple.com/",
    )
    """The push services (URL prefixes; `*.` for any subdomain) a browser's Web Push subscription
    may point at: Chrome's, Firefox's, Edge's and Safari's. sudo-api POSTs notifications to no
    other address, whatever a client sends as its endpoint."""

    push_contact: str = "mailto:root@localhost"
    """The VAPID `sub`: how a push service's operator reaches this host's (a mailto: or https:
    URL). Set it to a real address: Apple's service refuses one at localhost."""

    def __post_init__(self) -> None:
        if not self.push_contact.startswith(("mailto:", "https://")):
            raise ConfigError(f"api.push_contact: {self.push_contact!r} is not a mailto: or https: URL")
        if self.signup not in SIGNUP_MODES:
            raise ConfigError(f"api.signup: {self.signup!r} is not one of {', '.join(SIGNUP_MODES)}")
        host = self.service_listen.rpartition(":")[0].strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(
                f"api.service_listen: {self.service_listen!r} is not on loopback; it hands out every"
                " family's runtime address and key"
            )

    stranger_reply_sec: float = 86400.0
    """Least time between two "link this number first" replies to one unknown number (seconds)."""


@dataclass(frozen=True)
class VoiceSettings:
    api_url: str = "http://127.0.0.1:8601"
    """sudo-api's service listener (api.service_listen), where the voice bridge looks up rooms,
    runtimes and the LiveKit settings; the public listener does not serve them."""

    stt: str = "openai"
    """Speech-to-text: "openai" (the admin's provider, through the gateway) or "pocketsphinx" (offline)."""

    tts: str = "openai"
    """Text-to-speech: "openai" (through the gateway), "espeak" or "piper" (offline; see piper_voice)."""

    tts_voice: str = "alloy"
    """Voice asked of an OpenAI-compatible text-to-speech provider."""

    espeak_voice: str = "en-us"
    """espeak-ng voice for the offline text-to-speech."""

    piper_voice: Path | None = None
    """Piper voice model (.onnx, its .onnx.json beside it), supplied by the operator."""

    language: str = "en"
    """Language spoken to the agent (the offline speech-to-text knows only English)."""

    end_of_turn_sec: float = 0.4
    """Silence after speech that ends the speaker's turn (seconds)."""

    slow_reply_sec: float = 4.0
    """With no word from the agent this long after a turn, the bridge says it is still thinking (seconds)."""

    reply_timeout_sec: float = 90.0
    """Longest the bridge waits for the agent's whole answer before apologising (seconds)."""

    max_sessions: int = 200
    """Family rooms served at once; LiveKit offers further rooms to another bridge, if any."""

    http: str = "127.0.0.1:8081"
    """The livekit-agents worker's health listener (host:port)."""

    metrics: str = "127.0.0.1:9660"
    """Where the voice bridge serves Prometheus metrics (host:port; empty = none)."""

    def __post_init__(self) -> None:
        if self.stt not in ("openai", "pocketsphinx"):
            raise ConfigError(f"voice.stt: {self.stt!r} is not one of openai, pocketsphinx")
        if self.tts not in ("openai", "espeak", "piper"):
            raise ConfigError(f"voice.tts: {self.tts!r} is not one of openai, espeak, piper")
        if self.tts == "piper" and self.piper_voice is None:
            raise ConfigError("voice.piper_voice: the piper text-to-speech needs a voice file")


AGE_RECIPIENT = re.compile(r"age1[02-9ac-hj-np-z]{58}")
"""An age X25519 public key: "age1" and 58 characters of bech32."""


def _age_key_checks(key: str) -> bool:
    """The key's bech32 checksum holds (a mistyped character is caught when the file is read)."""
    import pyrage  # only where recipients are set: most daemons never need it

    try:
        pyrage.x25519.Recipient.from_str(key)
    except pyrage.RecipientError:
        return False
    return True


@dataclass(frozen=True)
class BackupSettings:
    dir: Path = Path("/var/backups/sudo")
    """Where `sudoctl backup --all` (sudo-backup.timer, nightly) writes each night's encrypted
    archives, `<dir>/<YYYY-MM-DD>/<family id>.tar.age`, and the night's manifest.json."""

    recipients: tuple[str, ...] = ()
    """age public keys (age1...) every archive is encrypted to. Their private keys stay off this
    host: a restore or a verify is given one (`--identity`). Empty: nightly backups refuse to run."""

    keep_daily: int = 7
    """The newest nights kept."""

    keep_weekly: int = 4
    """Besides those, the newest night of each of the newest weeks (ISO weeks) that have one."""

    def __post_init__(self) -> None:
        for key in self.recipients:
            if not AGE_RECIPIENT.fullmatch(key) or not _age_key_checks(key):
                raise ConfigError(f"backup.recipients: {key!r} is not an age public key (age1...)")
        if self.keep_daily < 1:
            raise ConfigError(f"backup.keep_daily: {self.keep_daily} keeps no night: at least 1")
        if self.keep_weekly < 0:
            raise ConfigError(f"backup.keep_weekly: {self.keep_weekly} is below 0")


@dataclass(frozen=True)
class ImageSettings:
    """`sudoctl image upgrade REF` (and /admin): a canary runtime on the new image, then the fleet."""

    max_failures: int = 1
    """Runtimes that may fail to come back on a new image while it rolls through the fleet; one
    more stops the roll and puts every runtime back on the image before (the canary failing
    always does)."""

    canary_timeout_sec: float = 120.0
    """Longest the canary's chat turn (through the gateway to the provider) may take (seconds)."""

    def __post_init__(self) -> None:
        if self.max_failures < 0:
            raise ConfigError(f"image.max_failures: {self.max_failures} is below 0")
        if self.canary_timeout_sec <= 0:
            raise ConfigError(f"image.canary_timeout_sec: {self.canary_timeout_sec} must be above 0")


HOST_NAME = re.compile(r"([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
LAN_SUFFIXES = (".lan", ".local", ".home.arpa", ".internal", ".localhost")
TLS_MODES = ("acme", "internal")


def is_lan_name(name: str) -> bool:
    """A name no public certificate authority can vouch for: an IP address, a bare host name,
    or one under a suffix kept for private networks (.lan, .local, .home.arpa, .internal)."""
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return "." not in name or name == "localhost" or name.endswith(LAN_SUFFIXES)


def _site_name(key: str, name: str) -> None:
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    if not HOST_NAME.fullmatch(name) or len(name) > 253:
        raise ConfigError(f"{key}: {name!r} is not a lowercase DNS name (sudo.example.org) or an IP address")


@dataclass(frozen=True)
class WebSettings:
    """sudo-web: Caddy in front of sudo-api (`sudoctl web caddyfile` renders its Caddyfile)."""

    domain: str = ""
    """The name families reach this site by (a DNS name or an IP address); empty means this
    machine's host name."""

    tls: str = ""
    """Where the certificate comes from: "acme" (Let's Encrypt or ZeroSSL: the name must resolve
    to this host and ports 80 or 443 be reachable from the internet) or "internal" (Caddy's own
    CA, whose root the family's devices must trust). Empty chooses by the name: internal for an
    IP address, a bare host name, or one under .lan, .local, .home.arpa or .internal; acme
    otherwise."""

    acme_email: str = ""
    """Given to the certificate authority for expiry notices (optional)."""

    http_port: int = 80
    """Port of plain HTTP: it redirects to HTTPS, and answers ACME's HTTP challenge."""

    https_port: int = 443
    """Port of HTTPS."""

    livekit_domain: str = ""
    """The name of the LiveKit server's signalling (WebSocket), served apart from the website
    and proxied to livekit_upstream; empty when this host runs no LiveKit server."""

    livekit_upstream: str = "127.0.0.1:7880"
    """Where livekit-server listens for signalling (host:port, its config's `port`)."""

    def __post_init__(self) -> None:
        if self.tls not in ("", *TLS_MODES):
            raise ConfigError(f"web.tls: {self.tls!r} is not one of acme, internal (or empty: by the name)")
        for key in ("domain", "livekit_domain"):
            if name := getattr(self, key):
                _site_name(f"web.{key}", name)
        if self.livekit_domain and self.livekit_domain == self.domain:
            raise ConfigError("web.livekit_domain: LiveKit's signalling needs a name of its own")
        if self.acme_email and not re.fullmatch(r"[^@\s{}\"]+@[^@\s{}\"]+\.[^@\s{}\"]+", self.acme_email):
            raise ConfigError(f"web.acme_email: {self.acme_email!r} is not an email address")
        for key in ("http_port", "https_port"):
            if not 0 < getattr(self, key) < 65536:
                raise ConfigError(f"web.{key}: {getattr(self, key)} is not a port number")
        if self.http_port == self.https_port:
            raise ConfigError("web.http_port and web.https_port must differ")
        if not re.fullmatch(r"(\[[0-9a-f:.]+\]|[A-Za-z0-9.-]+):[1-9]\d{0,4}", self.livekit_upstream):
            raise ConfigError(f"web.livekit_upstream: {self.livekit_upstream!r} is not host:port")

    def site(self) -> str:
        """The site's name: web.domain, or this machine's host name when it is empty."""
        name = self.domain or socket.gethostname().lower()
        try:
            _site_name("web.domain", name)
        except ConfigError:
            raise ConfigError(
                f"web.domain: empty, and the host name {name!r} is no DNS name: set it"
            ) from None
        return name

    def tls_for(self, name: str) -> str:
        """The TLS mode of a site name: the setting, else chosen by the name."""
        return self.tls or ("internal" if is_lan_name(name) else "acme")


@dataclass(frozen=True)
class Settings:
    core: CoreSettings = field(default_factory=CoreSettings)
    provisioner: ProvisionerSettings = field(default_factory=ProvisionerSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    llm: LLMSettings = field(default_factory=LLMSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    image: ImageSettings = field(default_factory=ImageSettings)
    web: WebSettings = field(default_factory=WebSettings)


def load(environ: typing.Mapping[str, str] | None = None) -> Settings:
    """Read SUDO_CONFIG (or the default path, if present), then apply SUDO_* overrides."""
    env = os.environ if environ is None else environ
    explicit = env.get("SUDO_CONFIG")
    path = Path(explicit) if explicit else DEFAULT_CONFIG
    data: dict[str, typing.Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    elif explicit:
        raise ConfigError(f"SUDO_CONFIG={explicit}: no such file")

    unknown = set(data) - {f.name for f in dataclasses.fields(Settings)}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
    sections = {}
    for section in dataclasses.fields(Settings):
        cls = section.default_factory  # type: ignore[misc]
        sections[section.name] = _load_section(cls, section.name, data.get(section.name, {}), env, path)
    return Settings(**sections)


def load_or_exit(prog: str) -> Settings:
    """`load()` for a console script: a bad configuration ends it with the reason."""
    try:
        return load()
    except ConfigError as exc:
        sys.exit(f"{prog}: {exc}")


def _load_section(cls: type, name: str, table: dict, env: typing.Mapping[str, str], path: Path) -> typing.Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) in [{name}]: {sorted(unknown)}")
    values = {}
    for key in known:
        env_name = f"SUDO_{name}_{key}".upper()
        if env_name in env:
            values[key] = _coerce(hints[key], env[env_name], env_name, from_env=True)
        elif key in table:
            values[key] = _coerce(hints[key], table[key], f"{name}.{key}", from_env=False)
    return cls(**values)


def _coerce(hint: typing.Any, value: typing.Any, where: str, *, from_env: bool) -> typing.Any:
    """Turn a TOML value or an environment string into the field's declared type."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # `X | None`
        if value in ("", None):
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            items = value.split(",") if from_env else value
            if not isinstance(items, list):
                raise TypeError("expected a list")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if hint is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected a boolean, got {value!r}")
        if hint in (int, float) and isinstance(value, bool):
            raise TypeError("expected a number, got a boolean")
        if hint is str and not from_env and not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return hint(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
