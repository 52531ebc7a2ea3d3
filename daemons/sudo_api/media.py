"""The photos and voice notes a member sends the agent: which kinds, how large, and how a refusal reads.

One set of rules for every way in: WhatsApp (whatsapp.py, the files Twilio holds) and the web
chat (a file attached or a voice note recorded in the page, or posted to /v1). A file that
breaks them is refused in words the member reads, never dropped in silence.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiohttp import web

MEDIA_MAX = 16 * 1024 * 1024
"""The largest file (bytes): WhatsApp's own limit, kept for the web chat too."""
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
"""What the agent's model sees as pictures."""
AUDIO_TYPES = frozenset(
    {
        "audio/ogg",  # WhatsApp's voice notes (Opus), Firefox's recordings
        "audio/webm",  # Chromium's recordings (MediaRecorder, Opus)
        "audio/mpeg",
        "audio/amr",
        "audio/mp4",
        "audio/aac",
    }
)
"""What the agent hears as voice notes (transcribed by speech-to-text)."""
MEDIA_TYPES = IMAGE_TYPES | AUDIO_TYPES
UPLOAD_BODY_MAX = MEDIA_MAX + 64 * 1024
"""A request carrying a file: the file, the message's text and the form's own framing."""

UNSUPPORTED = "I can read text, photos and voice notes, but not {kinds} files yet."
TOO_LARGE = "That file is too large for me: the limit is 16 MB."
EMPTY = "That file is empty: attach a photo or record a voice note again."
ONE_FILE = "Send one photo or voice note per message."


class MediaRefused(ValueError):
    """A file that breaks the rules; its message is what the sender reads."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """A file as a member sent it, checked."""

    type: str
    data: bytes

    @property
    def is_image(self) -> bool:
        return self.type in IMAGE_TYPES


def media_type(declared: str) -> str:
    """The bare media type, without parameters: `audio/webm;codecs=opus` is `audio/webm`."""
    return declared.split(";")[0].strip().lower()


def kind_name(declared: str) -> str:
    """How a refusal names a kind of file: `video/mp4` is "mp4"."""
    return media_type(declared).split("/")[-1] or "unknown"


def check(declared: str, size: int) -> str:
    """The file's bare media type if the agent takes it; MediaRefused (400 or 413) otherwise."""
    kind = media_type(declared)
    if kind not in MEDIA_TYPES:
        raise MediaRefused(400, UNSUPPORTED.format(kinds=kind_name(declared)))
    if size > MEDIA_MAX:
        raise MediaRefused(413, TOO_LARGE)
    if size == 0:
        raise MediaRefused(400, EMPTY)
    return kind


async def form_upload(form: Any, field: str = "file") -> Upload | None:
    """The checked file of a parsed multipart form (aiohttp's `request.post()`), or None.

    A browser's form sends an empty part with no file name when nothing was chosen: no file.
    """
    values = form.getall(field, [])
    files = [v for v in values if isinstance(v, web.FileField)]
    if len(values) > 1:
        raise MediaRefused(400, ONE_FILE)
    if not files:
        if values and values[0]:
            raise MediaRefused(400, f"{field} must be a file upload (multipart/form-data)")
        return None
    upload = files[0]
    data = await asyncio.to_thread(upload.file.read, MEDIA_MAX + 1)  # spooled: may be on disk
    upload.file.close()
    return Upload(check(upload.content_type, len(data)), data)


def file_response(kind: str, data: bytes) -> web.Response:
    """A member's own file as they fetch it back (`/v1/chat/media`, `/chat/media`): its own type,
    never sniffed, never kept by a shared cache."""
    return web.Response(
        body=data,
        content_type=kind,
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
