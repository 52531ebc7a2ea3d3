"""The OpenAPI 3.1 document of /v1, served at /v1/openapi.json.

Written by hand, one entry per route; a test checks that it names exactly the routes served
(the public listener's, and the /v1/service lookups served on `api.service_listen` only).
"""

from __future__ import annotations

from typing import Any

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
ACCOUNT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "email": {"type": ["string", "null"]},
        "username": {"type": ["string", "null"], "description": "a child's login"},
        "name": {"type": "string"},
        "user_id": {"type": ["string", "null"], "format": "uuid", "description": "the family"},
        "role": {"enum": ["owner", "adult", "child", None]},
        "is_admin": {"type": "boolean"},
    },
}
MEMBER = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "role": {"enum": ["owner", "adult", "child"]},
        "email": {"type": ["string", "null"]},
        "username": {"type": ["string", "null"]},
    },
}
INVITATION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "role": {"enum": ["owner", "adult"]},
        "created_at": {"type": "number"},
        "expires_at": {"type": "number"},
        "token": {"type": "string", "description": "only when created"},
        "url": {"type": "string", "description": "only when created: the link to hand over"},
    },
}
SESSION = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "created_at": {"type": "number"},
        "last_seen_at": {"type": "number"},
        "user_agent": {"type": "string"},
        "address": {"type": "string"},
        "current": {"type": "boolean"},
    },
}
MESSAGE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "n": {"type": "integer", "description": "position in the history"},
        "account_id": {"type": ["string", "null"], "description": "the member whose thread it is in"},
        "home": {"type": "boolean", "description": "in the family's Home thread (voice): every member's"},
        "role": {"enum": ["user", "assistant"]},
        "sender": {"type": "string"},
        "text": {"type": "string"},
        "html": {
            "type": ["string", "null"],
            "description": "an agent's message: its Markdown as HTML, cleaned (only formatting tags,"
            " links to http, https and mailto with rel=noopener noreferrer); a member's: null, its"
            " text is plain",
        },
        "status": {
            "enum": [
                "queued",
                "delivered",
                "answered",
                "failed",
                "final",
                "to_speak",
                "spoken",
                "not_spoken",
            ],
            "description": "the agent's messages to the home devices (Home thread): to_speak, then"
            " spoken, or not_spoken (no device was online to say it, or none did in time: a note)",
        },
        "reply_to": {"type": ["string", "null"]},
        "error": {"type": ["string", "null"]},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
        "media_type": {
            "type": ["string", "null"],
            "description": "a member's photo or voice note sent with it: its media type",
        },
        "media_bytes": {"type": ["integer", "null"]},
        "media_url": {
            "type": ["string", "null"],
            "description": "where its sender (only they) fetches the file: /v1/chat/media/<id>",
        },
    },
}
MATCH = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "n": {"type": "integer", "description": "position in the history"},
        "role": {"enum": ["user", "assistant"]},
        "sender": {"type": "string"},
        "created_at": {"type": "number"},
        "snippet": {"type": "string", "description": "the words around those found, as plain text"},
        "snippet_html": {"type": "string", "description": "the snippet escaped, words found in <mark>"},
    },
}
DEVICE = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "online": {"type": "boolean"},
        "muted": {"type": "boolean"},
        "created_at": {"type": "number"},
        "last_seen_at": {"type": ["number", "null"]},
    },
}
NUMBER = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "number": {"type": "string", "description": "E.164"},
        "verified": {"type": "boolean"},
        "created_at": {"type": "number"},
        "member_id": {"type": ["string", "null"], "description": "the member who linked it"},
        "member_name": {"type": ["string", "null"]},
    },
}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
PUSH_PREFERENCES = _obj(replies=BOOLEAN, proactive=BOOLEAN)

# (method, path, summary, security, request body schema or None, success status, success schema)
ROUTES: list[tuple[str, str, str, str, dict[str, Any] | None, int, dict[str, Any]]] = [
    (
        "post",
        "/v1/auth/signup",
        "Create a family and its first account",
        "none",
        _obj(email=STRING, password=STRING, name=STRING, family_name=STRING),
        201,
        _obj(token=STRING, account=ACCOUNT),
    ),
    (
        "post",
        "/v1/auth/login",
        "Log in with an email or a child's username (rate-limited)",
        "none",
        _obj(login=STRING, password=STRING),
        200,
        _obj(token=STRING, account=ACCOUNT),
    ),
    ("post", "/v1/auth/logout", "End this session", "session", None, 204, {}),
    ("get", "/v1/me", "The caller's account", "session", None, 200, _obj(account=ACCOUNT)),
    (
        "patch",
        "/v1/me",
        "Change the caller's name and/or email",
        "session",
        {"type": "object", "properties": {"name": STRING, "email": STRING}},
        200,
        _obj(account=ACCOUNT),
    ),
    (
        "post",
        "/v1/me/password",
        "Change the password (the current one is required); every other session ends",
        "session",
        _obj(current=STRING, password=STRING),
        204,
        {},
    ),
    (
        "get",
        "/v1/me/sessions",
        "The caller's sessions",
        "session",
        None,
        200,
        _obj(sessions={"type": "array", "items": SESSION}),
    ),
    ("delete", "/v1/me/sessions", "Log out every other session", "session", None, 200, _obj(ended=INTEGER)),
    ("delete", "/v1/me/sessions/{session_id}", "Log out one session", "session", None, 204, {}),
    ("post", "/v1/me/leave", "Leave the family (not the owner)", "session", None, 204, {}),
    (
        "post",
        "/v1/auth/join",
        "Take an invitation: join its family, or (an admin's) create a new family",
        "none",
        {
            "type": "object",
            "required": ["token", "email", "password", "name"],
            "properties": {
                "token": STRING,
                "email": STRING,
                "password": STRING,
                "name": STRING,
                "family_name": STRING,
            },
        },
        201,
        _obj(token=STRING, account=ACCOUNT),
    ),
    (
        "post",
        "/v1/auth/reset",
        "Set a new password with a reset link's token (single use, valid an hour)",
        "none",
        _obj(token=STRING, password=STRING),
        200,
        _obj(token=STRING, account=ACCOUNT),
    ),
    (
        "post",
        "/v1/auth/reset/whatsapp",
        "A forgotten password: without code, a code goes to the member's WhatsApp number; with code "
        "and password, the password is set (rate-limited per number)",
        "none",
        {
            "type": "object",
            "required": ["number"],
            "properties": {"number": STRING, "code": STRING, "password": STRING},
        },
        200,
        _obj(token=STRING, account=ACCOUNT),
    ),
    (
        "get",
        "/v1/family",
        "The family, its members, (for parents) its pending invitations, and its agent's use of"
        " the provider the last 7 days (tokens; daily_budget null: no limit), and its data volume's size as"
        " last measured against its quota (storage null: not measured yet)",
        "session",
        None,
        200,
        _obj(
            family={"type": "object"},
            members={"type": "array", "items": MEMBER},
            invitations={"type": "array", "items": INVITATION},
            usage=_obj(
                daily_budget={"type": ["integer", "null"]},
                days={
                    "type": "array",
                    "items": _obj(
                        day=STRING, tokens_in=INTEGER, tokens_out=INTEGER, answers=INTEGER, tokens=INTEGER
                    ),
                },
                storage={
                    "type": ["object", "null"],
                    "properties": {
                        "bytes": INTEGER,
                        "quota": INTEGER,
                        "measured_at": {"type": "number"},
                        "over_quota": {"type": "boolean"},
                    },
                },
            ),
        ),
    ),
    (
        "delete",
        "/v1/family",
        "Delete the family and everything of it, typing its name to confirm (owner; irreversible)",
        "session",
        _obj(name=STRING),
        204,
        {},
    ),
    (
        "get",
        "/v1/family/archive",
        "Download everything of the family as the archive sudoctl backup writes (owner)",
        "session",
        None,
        200,
        {},
    ),
    (
        "post",
        "/v1/family/invitations",
        "Invite someone to join as an adult: a link valid 7 days (parents)",
        "session",
        None,
        201,
        _obj(invitation=INVITATION),
    ),
    (
        "delete",
        "/v1/family/invitations/{invitation_id}",
        "Revoke an invitation (parents)",
        "session",
        None,
        204,
        {},
    ),
    (
        "post",
        "/v1/family/children",
        "Add a child who logs in with a username (parents)",
        "session",
        _obj(username=STRING, password=STRING, name=STRING),
        201,
        _obj(member=MEMBER),
    ),
    (
        "patch",
        "/v1/family/members/{member_id}",
        "Change a member's role to adult or child (owner)",
        "session",
        _obj(role={"enum": ["adult", "child"]}),
        200,
        _obj(member=MEMBER),
    ),
    (
        "delete",
        "/v1/family/members/{member_id}",
        "Remove a member at once: sessions, streams and numbers end (owner)",
        "session",
        None,
        204,
        {},
    ),
    (
        "post",
        "/v1/family/members/{member_id}/owner",
        "Hand ownership to an adult (owner)",
        "session",
        None,
        200,
        _obj(member=MEMBER),
    ),
    (
        "post",
        "/v1/family/members/{member_id}/reset",
        "A one-time password reset link for a member, valid an hour (parents)",
        "session",
        None,
        201,
        _obj(token=STRING, url=STRING),
    ),
    (
        "get",
        "/v1/chat/messages",
        "History, oldest first; page with ?before=<n>&limit=; ?thread=me (the member's own, the"
        " default) or home (the family's voice turns, which every member reads); ?around=<id>: the"
        " message and up to limit/2 on either side (404 if it is not in that thread); more: older"
        " ones exist, newer: newer ones exist past those",
        "session",
        None,
        200,
        _obj(
            messages={"type": "array", "items": MESSAGE},
            more={"type": "boolean"},
            newer={"type": "boolean"},
        ),
    ),
    (
        "get",
        "/v1/chat/search",
        "Search the member's own thread: ?q=<words> (each a word or a word's start, all required;"
        " 1 to 200 characters, else 400), ?limit= (1 to 100, default 20); newest first. A match's"
        " snippet_html is its snippet escaped, each word found in <mark>; /chat?around=<id> shows it",
        "session",
        None,
        200,
        _obj(matches={"type": "array", "items": MATCH}),
    ),
    (
        "post",
        "/v1/chat/messages",
        "Send a message to the family's agent (stored before the answer)",
        "session",
        _obj(text=STRING),
        202,
        _obj(message=MESSAGE),
    ),
    (
        "get",
        "/v1/chat/media/{message_id}",
        "The photo or voice note the caller sent with a message of their own thread, with its own"
        " Content-Type (nosniff, Cache-Control private), fetched from the family's volume (the agent"
        " is woken for it); 404 for any other member's message, one without a file, or none",
        "session",
        None,
        200,
        None,
    ),
    (
        "post",
        "/v1/chat/messages/{message_id}/retry",
        "Send a failed message again",
        "session",
        None,
        202,
        _obj(message=MESSAGE),
    ),
    (
        "get",
        "/v1/chat/stream",
        "Server-sent events: message (of the member's thread or, `home` true, the Home thread),"
        " draft (the answer being written: text, and html as a message's), status, reset",
        "session",
        None,
        200,
        {"type": "string", "contentMediaType": "text/event-stream"},
    ),
    (
        "get",
        "/v1/push/key",
        "The host's VAPID public key (base64url), the applicationServerKey of pushManager.subscribe",
        "session",
        None,
        200,
        _obj(public_key=STRING),
    ),
    (
        "post",
        "/v1/push/subscriptions",
        "Notify this browser (a PushSubscription's JSON) of the agent's words while no page is open;"
        " its endpoint must be at one of api.push_services, else 400",
        "session",
        _obj(endpoint=STRING, keys=_obj(p256dh=STRING, auth=STRING)),
        201,
        _obj(endpoint=STRING),
    ),
    (
        "delete",
        "/v1/push/subscriptions",
        "Stop notifying the browser of this endpoint",
        "session",
        _obj(endpoint=STRING),
        204,
        {},
    ),
    (
        "get",
        "/v1/push/preferences",
        "What the member is notified of: the agent's replies, its proactive messages",
        "session",
        None,
        200,
        PUSH_PREFERENCES,
    ),
    (
        "put",
        "/v1/push/preferences",
        "Choose what the member is notified of",
        "session",
        PUSH_PREFERENCES,
        200,
        PUSH_PREFERENCES,
    ),
    (
        "post",
        "/v1/runtime/ensure",
        "Wake the family's agent and wait until it is ready",
        "session",
        None,
        200,
        _obj(state=STRING),
    ),
    (
        "post",
        "/v1/devices/pairing",
        "A device asks for a pairing code; gets its token, valid once paired",
        "none",
        _obj(name=STRING),
        201,
        _obj(
            pairing_id=STRING,
            code=STRING,
            device_token=STRING,
            expires_at={"type": "number"},
            heartbeat_sec={"type": "number"},
        ),
    ),
    (
        "get",
        "/v1/devices/pairing",
        "A device checks whether its code was entered",
        "device",
        None,
        200,
        {  # family_name and confirm_code while confirming: what the device says
            "type": "object",
            "required": ["state"],
            "properties": {
                "state": {"enum": ["pending", "confirming", "paired", "expired", "revoked"]},
                "family_name": STRING,
                "confirm_code": STRING,
            },
        },
    ),
    (
        "post",
        "/v1/devices/pairing/complete",
        "A parent enters a device's code: the device then says the family's name and a code to type back",
        "session",
        _obj(code=STRING),
        202,
        _obj(pairing=_obj(id=STRING, device_name=STRING, state=STRING, expires_at={"type": "number"})),
    ),
    (
        "post",
        "/v1/devices/pairing/confirm",
        "A parent types back the code the claimed device says: it becomes the family's (5 tries)",
        "session",
        _obj(pairing_id=STRING, code=STRING),
        201,
        _obj(device=DEVICE),
    ),
    (
        "get",
        "/v1/devices",
        "The family's devices with online status",
        "session",
        None,
        200,
        _obj(devices={"type": "array", "items": DEVICE}),
    ),
    (
        "delete",
        "/v1/devices/{device_id}",
        "Revoke a device; its token stops working",
        "session",
        None,
        204,
        {},
    ),
    (
        "post",
        "/v1/devices/heartbeat",
        "A paired device is on: keeps the agent warm (and says whether it is muted)",
        "device",
        {"type": "object", "properties": {"muted": {"type": "boolean"}}},  # no body: not muted
        200,
        _obj(next_in={"type": "number"}),
    ),
    (
        "get",
        "/v1/whatsapp/numbers",
        "The family's WhatsApp numbers",
        "session",
        None,
        200,
        _obj(numbers={"type": "array", "items": NUMBER}),
    ),
    (
        "post",
        "/v1/whatsapp/numbers",
        "Link a number: a code is sent to it over WhatsApp",
        "session",
        _obj(number=STRING),
        201,
        _obj(number=NUMBER),
    ),
    (
        "post",
        "/v1/whatsapp/numbers/{number_id}/verify",
        "Prove the number with the code it received",
        "session",
        _obj(code=STRING),
        200,
        _obj(number=NUMBER),
    ),
    ("delete", "/v1/whatsapp/numbers/{number_id}", "Unlink a number", "session", None, 204, {}),
    (
        "post",
        "/v1/whatsapp/inbound",
        "Twilio's webhook for an inbound WhatsApp message; answers empty TwiML",
        "twilio",
        _obj(MessageSid=STRING, From=STRING, To=STRING, Body=STRING)
        | {"description": "Twilio's form; also NumMedia, MediaUrlN, MediaContentTypeN, ProfileName"},
        200,
        None,
    ),
    (
        "post",
        "/v1/whatsapp/status",
        "Twilio's status callback for a message sent (queued, sent, delivered, read, failed...)",
        "twilio",
        _obj(MessageSid=STRING, MessageStatus=STRING)
        | {"description": "Twilio's form; also ErrorCode and ErrorMessage on failures"},
        200,
        None,
    ),
    (
        "post",
        "/v1/voice/token",
        "A LiveKit token for the device's family room, dispatching the voice agent",
        "device",
        None,
        200,
        _obj(url=STRING, room=STRING, token=STRING, expires_at={"type": "number"}),
    ),
    (
        "get",
        "/v1/service/rooms/{room}",
        "The family a room belongs to, with its gateway key for speech (voice bridge)",
        "service",
        None,
        200,
        _obj(user_id=STRING, name=STRING, room=STRING, gateway_key=STRING),
    ),
    (
        "post",
        "/v1/service/runtimes/{user_id}",
        "Wake a family's agent; where it answers and its key (voice bridge)",
        "service",
        None,
        200,
        _obj(url=STRING, api_key=STRING),
    ),
    (
        "post",
        "/v1/service/voice/turns",
        "A voice turn a device's room heard and answered, for the family's Home thread (voice bridge)",
        "service",
        _obj(room=STRING, heard=STRING, answered=STRING),
        201,
        _obj(messages={"type": "array", "items": MESSAGE}),
    ),
    (
        "get",
        "/v1/service/rooms/{room}/announcements",
        "What the agent said to the room's device, not said there yet, oldest first; ?wait=<seconds,"
        " up to 60> holds the answer until there is some (voice bridge)",
        "service",
        None,
        200,
        _obj(
            announcements={
                "type": "array",
                "items": _obj(id=STRING, text=STRING, created_at={"type": "number"}),
            }
        ),
    ),
    (
        "post",
        "/v1/service/rooms/{room}/announcements/{announcement_id}/spoken",
        "The room said the announcement: not handed out again, shown spoken (voice bridge)",
        "service",
        None,
        204,
        {},
    ),
    (
        "get",
        "/v1/service/livekit",
        "The LiveKit server the voice bridge registers with (voice bridge)",
        "service",
        None,
        200,
        _obj(url=STRING, api_key=STRING, api_secret=STRING),
    ),
    (
        "get",
        "/v1/admin/settings",
        "Global settings; secrets only as whether they are set",
        "admin",
        None,
        200,
        _obj(settings={"type": "object"}),
    ),
    (
        "put",
        "/v1/admin/settings",
        "Change settings (all or none); a new model restarts every runtime",
        "admin",
        {"type": "object", "additionalProperties": STRING},
        200,
        _obj(
            settings={"type": "object"},
            changed={"type": "array", "items": STRING},
            restarting={"type": "boolean"},
        ),
    ),
    (
        "get",
        "/v1/admin/restart-all",
        "Progress of the fleet restart",
        "admin",
        None,
        200,
        _obj(progress={"type": "object"}),
    ),
    (
        "post",
        "/v1/admin/restart-all",
        "Recreate every running runtime (409 while one runs)",
        "admin",
        None,
        202,
        _obj(progress={"type": "object"}),
    ),
    (
        "get",
        "/v1/admin/fleet",
        "Each family's runtime, activity, memory and tokens used today; the host's units; the nightly "
        "backups' last run (backup.state: ok, failed, or none yet)",
        "admin",
        None,
        200,
        _obj(
            families={"type": "array"},
            units={"type": "array"},
            backup={"type": "object"},
            image={"type": "object"},
        ),
    ),
    (
        "get",
        "/v1/admin/image",
        "The runtimes' Hermes image, the previous one, an upgrade under way, the last upgrades and "
        "rollbacks; the progress of a change started from this API or /admin",
        "admin",
        None,
        200,
        _obj(image={"type": "object"}, progress={"type": "object"}),
    ),
    (
        "post",
        "/v1/admin/image/upgrade",
        "Upgrade to the local image `ref`: a canary runtime (healthy, a chat turn), then every running "
        "runtime; rolled back if the canary or more than image.max_failures fail (409 while one runs)",
        "admin",
        _obj(ref=STRING),
        202,
        _obj(image={"type": "object"}, progress={"type": "object"}),
    ),
    (
        "post",
        "/v1/admin/image/rollback",
        "Every runtime back on the previous image (409 while a change runs)",
        "admin",
        None,
        202,
        _obj(image={"type": "object"}, progress={"type": "object"}),
    ),
    (
        "delete",
        "/v1/admin/families/{user_id}",
        "Delete a family: its runtime, volume, rows, devices and sessions (irreversible)",
        "admin",
        None,
        204,
        {},
    ),
    (
        "post",
        "/v1/admin/families/{user_id}/disable",
        "Disable a family: its agent stops and its members are told",
        "admin",
        None,
        200,
        _obj(disabled={"type": "boolean"}),
    ),
    (
        "post",
        "/v1/admin/families/{user_id}/enable",
        "Enable a disabled family again",
        "admin",
        None,
        200,
        _obj(disabled={"type": "boolean"}),
    ),
    (
        "post",
        "/v1/admin/accounts/{account_id}/reset",
        "A one-time password reset link for any account, valid an hour",
        "admin",
        None,
        201,
        _obj(token=STRING, url=STRING),
    ),
    (
        "get",
        "/v1/admin/invitations",
        "Pending invitations to sign up a new family",
        "admin",
        None,
        200,
        _obj(invitations={"type": "array", "items": INVITATION}),
    ),
    (
        "post",
        "/v1/admin/invitations",
        "Invite someone to sign up a new family (sign-up mode invite): a link valid 7 days",
        "admin",
        None,
        201,
        _obj(invitation=INVITATION),
    ),
    ("delete", "/v1/admin/invitations/{invitation_id}", "Revoke an invitation", "admin", None, 204, {}),
    ("get", "/v1/openapi.json", "This document", "none", None, 200, {"type": "object"}),
]

UNAVAILABLE = {
    ("post", "/v1/chat/messages"): {
        "413": "the file is over 16 MB (the error says so, as the page does)",
        "429": "the family sent api.family_messages_per_minute this minute (Retry-After says when)",
        "503": "sudo-api is stopping, or the agent could not be woken to take the file: send again",
        "507": "the family's storage is past runtime.volume_quota: new messages wait",
    },
    ("post", "/v1/chat/messages/{message_id}/retry"): {"503": "sudo-api is stopping: retry in a moment"},
    ("get", "/v1/chat/media/{message_id}"): {"503": "the agent could not be woken: try again"},
    ("post", "/v1/runtime/ensure"): {"502": "the agent could not be started (the reason is given)"},
    ("post", "/v1/whatsapp/numbers"): {
        "502": "Twilio refused or could not be reached: nothing was recorded",
        "503": "WhatsApp is not set up (an admin sets the Twilio account)",
    },
    ("delete", "/v1/family"): {
        "502": "the family's agent could not be removed: nothing was deleted, try again"
    },
    ("get", "/v1/family/archive"): {"502": "the family's data could not be copied"},
    ("delete", "/v1/admin/families/{user_id}"): {"502": "the family's agent could not be removed"},
    ("post", "/v1/admin/families/{user_id}/disable"): {"502": "disabled, but the agent could not be stopped"},
    ("post", "/v1/auth/reset/whatsapp"): {
        "502": "Twilio refused or could not be reached",
        "503": "WhatsApp is not set up (an admin sets the Twilio account)",
    },
    ("post", "/v1/voice/token"): {"503": "voice is not set up (an admin sets the LiveKit server)"},
    ("post", "/v1/service/runtimes/{user_id}"): {"502": "the agent could not be started"},
    ("get", "/v1/service/livekit"): {"503": "voice is not set up (an admin sets the LiveKit server)"},
}
"""The 5xx an operation answers on purpose: a feature not set up, or a part it needs that failed."""

SECURITY = {
    "none": [],
    "session": [{"session": []}, {"cookie": []}],
    "device": [{"device": []}],
    "admin": [{"session": []}, {"cookie": []}],
    "service": [{"service": []}],
    "twilio": [{"twilio": []}],
}
SERVICE_ONLY = (
    "Served on `api.service_listen` only (loopback, for the voice bridge), never on the public"
    " listener nor through the proxy: there, this path is a 404."
)
"""What every /v1/service operation says of where it is served."""
FORM_BODIES = {"/v1/whatsapp/inbound", "/v1/whatsapp/status"}
"""Twilio's webhooks: form-encoded, as Twilio sends them."""
MULTIPART_BODIES = {
    ("post", "/v1/chat/messages"): _obj(
        text={"type": "string", "description": "optional when a file is attached; at most 8000 characters"},
        file={
            "type": "string",
            "contentMediaType": "image/jpeg, image/png, image/webp, audio/ogg, audio/webm, audio/mpeg,"
            " audio/amr, audio/mp4, audio/aac",
            "description": "one photo or voice note, at most 16 MB; any other type is refused (400)"
            " with a message naming it, a larger one (413) with the limit",
        },
    )
}
"""Bodies also taken as multipart/form-data, beside JSON."""
FILE_RESPONSES = {("get", "/v1/chat/media/{message_id}"): ("image/*", "audio/*")}
"""Answers that are a file, of the media types given."""


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, security, body, status, schema in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "security": SECURITY[security],
            "responses": {
                str(status): {"description": "success"}
                | ({"content": {"application/json": {"schema": schema}}} if schema else {}),
                "4XX": {"description": "bad request", "content": {"application/json": {"schema": ERROR}}},
            }
            | {
                code: {"description": why, "content": {"application/json": {"schema": ERROR}}}
                for code, why in UNAVAILABLE.get((method, path), {}).items()
            },
        }
        if security == "service":
            operation["description"] = SERVICE_ONLY
        if body:
            kind = "application/x-www-form-urlencoded" if path in FORM_BODIES else "application/json"
            operation["requestBody"] = {"required": True, "content": {kind: {"schema": body}}}
            if (method, path) in MULTIPART_BODIES:
                multipart = {"schema": MULTIPART_BODIES[(method, path)]}
                operation["requestBody"]["content"]["multipart/form-data"] = multipart
        if (method, path) in FILE_RESPONSES:
            operation["responses"][str(status)]["content"] = {
                kind: {"schema": {"type": "string", "contentMediaType": kind}}
                for kind in FILE_RESPONSES[(method, path)]
            }
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sudo API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "session": {"type": "http", "scheme": "bearer", "description": "token from /v1/auth/login"},
                "cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "sudo_session",
                    "description": "the web session; state changes also need the X-CSRF-Token header",
                },
                "device": {"type": "http", "scheme": "bearer", "description": "device token from pairing"},
                "service": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the service-token credential",
                },
                "twilio": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Twilio-Signature",
                    "description": "Twilio's signature over the URL it called and the form, keyed "
                    "with the account's auth token",
                },
            }
        },
    }
