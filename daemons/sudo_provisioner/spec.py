"""What a family's container should be: image, boot script, config.yaml, limits, labels.

The spec is computed from the settings, the family and the image; its hash goes into the
container's `sudo.config-hash` label. A running container whose label differs from the
current hash is stale and is recreated (never restarted with its old environment).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sudo_core.config import Settings
from sudo_core.db import Family
from sudo_core.families import api_key_for, llm_key_for, runtime_name, volume_name

BOOT_SCRIPT = (Path(__file__).parent / "boot.sh").read_text()
BUNDLED_PLUGINS = Path(__file__).parent / "plugins"
DATA_DIR = "/opt/data"
HERMES_CONFIG_VERSION = 33  # config.yaml schema of Hermes 0.19.0; older values trigger its migration
IDENTITY_MARKER = "Family identity (managed by Sudo, rewritten on every start):"

LABEL_OWNER = "sudo.owner"
LABEL_HASH = "sudo.config-hash"
LABEL_IMAGE = "sudo.image"
LABEL_SCOPE = "sudo.scope"
"""The runtime network: one Docker engine can host several Sudo installations apart."""


@dataclass(frozen=True)
class Image:
    ref: str
    """The configured reference (a tag)."""
    id: str
    """The content id the tag pointed at when resolved: containers are created from this."""
    entrypoint: tuple[str, ...]
    """The image's own entrypoint, which the boot script execs."""


@dataclass(frozen=True)
class Plugins:
    path: Path
    names: tuple[str, ...]
    digest: str
    """Hash of every file: an upgraded plugin makes every runtime stale."""

    @classmethod
    def scan(cls, path: Path | None) -> Plugins:
        path = (path or BUNDLED_PLUGINS).resolve()
        names = tuple(sorted(p.parent.name for p in path.glob("*/plugin.yaml")))
        h = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            h.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes() + b"\0")
        return cls(path, names, h.hexdigest()[:16])


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    volume: str
    create_args: dict[str, Any]
    """Keyword arguments for docker's containers.create, labels included."""
    config_hash: str


def family_phrase(name: str) -> str:
    """The family's name as it reads in a sentence: "the Smith family", "The Newcomers",
    "the Garcia Family" (a name that says "family" or starts with "the" is used as written)."""
    lower = name.lower()
    if lower.startswith("the "):
        return name
    return f"the {name}" if lower.endswith("family") else f"the {name} family"


def build_spec(
    settings: Settings,
    family: Family,
    secret: bytes,
    image: Image,
    plugins: Plugins,
    model: str,
    whatsapp_home: str | None = None,
) -> RuntimeSpec:
    """`whatsapp_home`: the family's first linked number, where cron results for WhatsApp go."""
    rt = settings.runtime
    api_key = api_key_for(secret, family.id)
    gateway = f"http://{rt.host_address}:{settings.gateway.port}/v1"
    hermes_config = {
        "_config_version": HERMES_CONFIG_VERSION,
        "model": {
            "default": model or "default",
            "provider": "custom",
            "base_url": gateway,
            "api_key": llm_key_for(secret, family.id),
            "context_length": settings.llm.context_length,
            # The gateway is no Ollama: 0 stops Hermes asking it whether it is one on every
            # turn (30 ms a turn, measured) and sends no num_ctx option to the provider.
            "ollama_num_ctx": 0,
            # A photo a member sends (web chat, WhatsApp) goes to the admin's model as pixels, an
            # image part of the turn. Hermes asks whether the model sees before it routes a photo
            # and again before it calls the model, stripping image parts otherwise (the photo then
            # reaches it as a description, from a second call). With provider "custom", Hermes's
            # "auto" never asks models.dev (it maps no custom endpoint), so it would always say
            # no: this declares it, as Hermes says to for a custom endpoint. A model that turns
            # images down gets the turn again without them (Hermes retries text only).
            "supports_vision": True,
        },
        "platforms": {
            "api_server": {
                "enabled": True,
                "extra": {"host": "0.0.0.0", "port": rt.api_port, "key": api_key},
            },
        },
        "plugins": {"enabled": list(plugins.names)},
        "platform_toolsets": {"api_server": list(rt.toolsets), "cron": list(rt.toolsets)},
        "memory": {"memory_enabled": True, "user_profile_enabled": True},
        "terminal": {"backend": "local"},
        "onboarding": {"profile_build": "off"},
        # Sudo shows no session titles: no extra LLM call per new session for one.
        "auxiliary": {"title_generation": {"enabled": False}},
        # No pip installs inside a family's container (it has no internet either).
        "security": {"allow_lazy_installs": False},
        # Hermes probes python and pip in subprocesses as it builds its first system prompt, to
        # warn the agent of pip trouble: about a second of a family's first reply, for a pip
        # that is not used here.
        "agent": {"environment_probe": False},
        # sudo-api, and the WhatsApp plugin's journal, give the next agent process what a stop cut
        # off, under its id. At start Hermes would also resume an interrupted session on its own,
        # with a turn of its own ("the session was restored") racing that redelivery, which then
        # finds the session busy. Its restart-loop breaker, tripped at the first such start, keeps
        # it from resuming (the next message still carries Hermes's note of the interruption).
        # Its delivery ledger is off for the same reason: both plugins journal a reply before
        # Hermes hears it was sent, and a turn cut off before then is answered again under the
        # same ids; the ledger would send its copy at start as a new message, a duplicate.
        "gateway": {"restart_loop_guard": {"max_restarts": 1}, "delivery_ledger": False},
        # A cron job's result as the agent wrote it, without Hermes's "Cronjob Response: <name>
        # (job_id: ...)" header and its footer: a reminder is said out loud at home (sudo_voice),
        # or read by a family that never made a "job".
        "cron": {"wrap_response": False},
    }
    if "sudo_chat" in plugins.names:
        hermes_config["platforms"]["sudo_chat"] = {
            "enabled": True,
            "extra": {"host": "0.0.0.0", "port": rt.chat_port, "key": api_key},
            # Stopped mid-turn (a stale config recreated, restart-all), Hermes would tell the
            # chat "Gateway shutting down" as the answer to the family's message; sudo-api
            # delivers that message again to the next agent process instead, which answers it.
            "gateway_restart_notification": False,
        }
        hermes_config["platform_toolsets"]["sudo_chat"] = list(rt.toolsets)
        # Token streaming as drafts (live in the page, never stored) then one final message.
        hermes_config["streaming"] = {
            "enabled": True,
            "transport": "draft",
            "edit_interval": 0.2,
            "buffer_threshold": 8,
            "cursor": "",
        }
        hermes_config["display"] = {
            "platforms": {
                "sudo_chat": {
                    "tool_progress": "off",
                    "interim_assistant_messages": False,
                    "long_running_notifications": False,
                    "busy_ack_detail": False,
                }
            }
        }
    if "sudo_voice" in plugins.names and "sudo_chat" in plugins.names:
        # Said out loud at home: handed to sudo_chat's listener in the container, whose outbox
        # carries it to sudo-api (the plugin has no listener of its own).
        hermes_config["platforms"]["sudo_voice"] = {
            "enabled": True,
            "extra": {"chat_port": rt.chat_port, "key": api_key},
            # Where the agent's send_message tool says what it sends to sudo_voice (cron jobs read
            # SUDO_VOICE_HOME_CHANNEL): the family's home devices.
            "home_channel": {"platform": "sudo_voice", "chat_id": "home", "name": "Home"},
            # Never "Gateway online" or "shutting down" out of the family's speakers (Hermes tells
            # every home channel so).
            "gateway_restart_notification": False,
        }
    if "twilio_whatsapp" in plugins.names:
        hermes_config["platforms"]["twilio_whatsapp"] = {
            "enabled": True,
            "extra": {
                "host": "0.0.0.0",
                "port": rt.whatsapp_port,
                "key": api_key,
                # Replies go out through the gateway, which holds the Twilio account.
                "gateway": gateway.removesuffix("/v1"),
                "gateway_key": llm_key_for(secret, family.id),
            },
            # As for sudo_chat: the plugin's journal hands an interrupted message to the next
            # process, so no "Gateway shutting down" goes to the family's phone.
            "gateway_restart_notification": False,
        }
        hermes_config["platform_toolsets"]["twilio_whatsapp"] = list(rt.toolsets)
        hermes_config.setdefault("display", {"platforms": {}})["platforms"]["twilio_whatsapp"] = {
            "streaming": False,  # a WhatsApp message cannot be edited: one message per answer
            "tool_progress": "off",
            "interim_assistant_messages": False,
            "long_running_notifications": False,
            "busy_ack_detail": False,
        }
    if "twilio_whatsapp" in plugins.names or "sudo_chat" in plugins.names:
        # Voice notes are transcribed by Hermes through the gateway's speech-to-text; the
        # transcript goes to the agent only, never echoed to the member as a reply of its own.
        hermes_config["stt"] = {
            "enabled": True,
            "echo_transcripts": False,
            "provider": "openai",
            "openai": {"base_url": gateway, "api_key": llm_key_for(secret, family.id), "model": "whisper-1"},
        }
    identity = (
        f"{IDENTITY_MARKER}\n"
        f"You are the family assistant of {family_phrase(family.name)} on Sudo (account {family.id}). "
        "Everyone who talks to you here is a member of this family. Each message's user label "
        "gives the member's name and, in brackets, the role Sudo vouches for: [adult] or [child]. "
        "Every member has their own conversation with you; your memory is the whole family's. "
        "When the speaker is a [child], answer for their age: simple words, warmth, and nothing "
        "unsuitable for a child. A voice turn comes from the home device, shared by the family: "
        "its speaker is someone at home."
    )
    volume = volume_name(family.id)
    tmpfs = {"/tmp": "rw,nosuid,nodev,size=256m", "/run": "rw,nosuid,nodev,size=16m"}
    args: dict[str, Any] = {
        "image": image.id,
        "name": runtime_name(family.id),
        "entrypoint": ["/bin/sh", "-c", BOOT_SCRIPT, "sudo-boot"],
        "command": [*(image.entrypoint or ("hermes",)), "gateway", "run"],
        "environment": {
            "HERMES_HOME": DATA_DIR,
            "API_SERVER_KEY": api_key,
            "API_SERVER_HOST": "0.0.0.0",
            "API_SERVER_PORT": str(rt.api_port),
            # The provisioner recreates containers on purpose; Hermes's restart-storm limiter
            # would otherwise delay the sixth start within two minutes by up to 5 minutes.
            "HERMES_GATEWAY_MAX_STARTS": "0",
            "TIRITH_ENABLED": "false",
            # Hermes checks that the image's CA bundle loads as it sets up every turn (60 ms a
            # turn, measured): the bundle is fixed when the image is built.
            "HERMES_SKIP_SSL_GUARD": "1",
            # Only sudo-api reaches the sudo_chat listener, with the family's key; cron and
            # other proactive messages go to the family's chat.
            "SUDO_CHAT_ALLOW_ALL_USERS": "true",
            "SUDO_CHAT_HOME_CHANNEL": "family",
            # A cron job delivering to sudo_voice speaks to whoever is at home.
            "SUDO_VOICE_HOME_CHANNEL": "home",
            # sudo-api hands the plugin only messages from numbers linked to this family.
            "TWILIO_WHATSAPP_ALLOW_ALL_USERS": "true",
            # JSON is YAML: the config is rendered with the standard library alone.
            "SUDO_CONFIG_YAML": json.dumps(hermes_config, indent=1),
            "SUDO_IDENTITY": identity,
        },
        "volumes": {
            volume: {"bind": DATA_DIR, "mode": "rw"},
            str(plugins.path): {"bind": f"{DATA_DIR}/plugins", "mode": "ro"},
        },
        "network": rt.network,
        "user": rt.user,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": rt.read_only,
        "tmpfs": tmpfs if rt.read_only else None,
        "mem_limit": rt.memory,
        "memswap_limit": rt.memory,
        "nano_cpus": int(rt.cpus * 1e9),
        "pids_limit": rt.pids_limit,
        "restart_policy": {"Name": "no"},
        "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "2"}},
    }
    if whatsapp_home and "twilio_whatsapp" in plugins.names:
        args["environment"]["TWILIO_WHATSAPP_HOME_CHANNEL"] = whatsapp_home
    digest_input = {"args": args, "plugins": plugins.digest, "image_ref": image.ref}
    config_hash = hashlib.sha256(json.dumps(digest_input, sort_keys=True).encode()).hexdigest()[:16]
    args["labels"] = {
        LABEL_OWNER: str(family.id),
        LABEL_HASH: config_hash,
        LABEL_IMAGE: image.ref,
        LABEL_SCOPE: rt.network,
    }
    return RuntimeSpec(args["name"], volume, args, config_hash)
