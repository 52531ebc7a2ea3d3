"""Speech engines: the family's words in, the agent's answer out.

The default is an OpenAI-compatible provider reached through sudo-gateway with the family's own
gateway key (the gateway swaps in the admin's provider and key), so the bridge holds no provider
secret. The offline engines run on the host: pocketsphinx hears, espeak-ng or Piper speaks.

Pocketsphinx decodes while the person is still talking (a VAD stream marks the utterance), so
when they stop only the last few frames remain to decode: the transcript is ready within tens
of milliseconds of the end of the turn instead of after a second pass over the whole recording.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import uuid
import wave
from pathlib import Path

import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectOptions,
    APIError,
    stt,
    tts,
    utils,
    vad,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr
from livekit.plugins import openai, silero

from sudo_core.config import VoiceSettings

log = logging.getLogger(__name__)
STT_RATE = 16000
"""What pocketsphinx's bundled en-us model was trained on (hertz)."""
STT_LEAD_SEC = 0.15
"""Speech-to-text ends its segment this long before the pause that ends the turn, so that the
transcript is ready when the turn ends instead of after it. A pause that long within a sentence
makes two segments of one turn, which livekit-agents joins."""


class PocketsphinxSTT(stt.STT):
    """Offline speech-to-text with pocketsphinx's bundled US English model, streaming."""

    def __init__(self, vad_model: vad.VAD) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=True, interim_results=False))
        self._vad = vad_model

    @property
    def model(self) -> str:
        return "pocketsphinx-en-us"

    @property
    def provider(self) -> str:
        return "pocketsphinx"

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        frame = utils.merge_frames(buffer)
        pcm = _resampled(frame, STT_RATE)
        decoder = await asyncio.to_thread(_decoder)
        text = await asyncio.to_thread(_decode_all, decoder, pcm)
        return _final(text)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _PocketsphinxStream(self, self._vad, conn_options)


class _PocketsphinxStream(stt.RecognizeStream):
    def __init__(self, owner: PocketsphinxSTT, vad_model: vad.VAD, conn_options: APIConnectOptions) -> None:
        super().__init__(stt=owner, conn_options=conn_options, sample_rate=STT_RATE)
        self._vad = vad_model

    async def _run(self) -> None:
        vad_stream = self._vad.stream()
        decoder = await asyncio.to_thread(_decoder)

        async def forward() -> None:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    vad_stream.flush()
                else:
                    vad_stream.push_frame(item)
            vad_stream.end_input()

        async def recognize() -> None:
            speaking = False
            async for event in vad_stream:
                pcm = b"".join(bytes(f.data) for f in event.frames)
                if event.type == vad.VADEventType.START_OF_SPEECH:
                    # The event carries the utterance so far, padding included.
                    speaking = True
                    self._event_ch.send_nowait(stt.SpeechEvent(stt.SpeechEventType.START_OF_SPEECH))
                    await asyncio.to_thread(_start, decoder, pcm)
                elif event.type == vad.VADEventType.INFERENCE_DONE and speaking:
                    await asyncio.to_thread(decoder.process_raw, pcm)
                elif event.type == vad.VADEventType.END_OF_SPEECH and speaking:
                    speaking = False
                    self._event_ch.send_nowait(stt.SpeechEvent(stt.SpeechEventType.END_OF_SPEECH))
                    text = await asyncio.to_thread(_finish, decoder)
                    if text:
                        self._event_ch.send_nowait(_final(text))

        tasks = [asyncio.create_task(forward()), asyncio.create_task(recognize())]
        try:
            await asyncio.gather(*tasks)
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            await vad_stream.aclose()


def _decoder():  # pocketsphinx.Decoder; imported late, it loads its model
    """Without the flat-lexicon second pass, which goes over the whole utterance again once it
    ends: measured on twelve espeak-ng questions in room noise, the same word error rate
    (0.54), and the end of the utterance decoded in 7 ms (p50) instead of 66 ms."""
    from pocketsphinx import Decoder

    return Decoder(samprate=STT_RATE, loglevel="ERROR", fwdflat=False)


def _start(decoder, pcm: bytes) -> None:
    decoder.start_utt()
    decoder.process_raw(pcm)


def _finish(decoder) -> str:
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.strip() if hyp else ""


def _decode_all(decoder, pcm: bytes) -> str:
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    return _finish(decoder)


def _final(text: str) -> stt.SpeechEvent:
    return stt.SpeechEvent(
        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
        alternatives=[stt.SpeechData(language="en", text=text, confidence=1.0 if text else 0.0)],
    )


def _resampled(frame: rtc.AudioFrame, rate: int) -> bytes:
    if frame.sample_rate == rate and frame.num_channels == 1:
        return bytes(frame.data)
    resampler = rtc.AudioResampler(frame.sample_rate, rate, num_channels=frame.num_channels)
    pcm = b"".join(bytes(f.data) for f in resampler.push(frame) + resampler.flush())
    if frame.num_channels == 1:
        return pcm
    channels = np.frombuffer(pcm, dtype=np.int16).reshape(-1, frame.num_channels)
    return channels.mean(axis=1).astype(np.int16).tobytes()


class EspeakTTS(tts.TTS):
    """Offline text-to-speech with espeak-ng (Debian's package): robotic, instant, everywhere."""

    RATE = 22050  # espeak-ng's only output rate (hertz)

    def __init__(self, voice: str = "en-us", words_per_minute: int = 165) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False), sample_rate=self.RATE, num_channels=1
        )
        self.voice = voice
        self.words_per_minute = words_per_minute

    @property
    def model(self) -> str:
        return f"espeak-ng:{self.voice}"

    @property
    def provider(self) -> str:
        return "espeak-ng"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _EspeakStream(tts=self, input_text=text, conn_options=conn_options)


class _EspeakStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        engine: EspeakTTS = self._tts  # type: ignore[assignment]
        wav = await espeak_wav(self._input_text, engine.voice, engine.words_per_minute)
        with wave.open(io.BytesIO(wav)) as reader:
            output_emitter.initialize(
                request_id=uuid.uuid4().hex,
                sample_rate=reader.getframerate(),
                num_channels=reader.getnchannels(),
                mime_type="audio/pcm",
            )
            output_emitter.push(reader.readframes(reader.getnframes()))
        output_emitter.flush()


async def espeak_wav(text: str, voice: str, words_per_minute: int = 165) -> bytes:
    """espeak-ng's WAV for `text` (read from stdin, so no text is ever taken for an option)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "espeak-ng", "--stdin", "--stdout", "-v", voice, "-s", str(words_per_minute),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise APIError("espeak-ng is not installed (apt install espeak-ng)", retryable=False) from exc
    out, err = await proc.communicate(text.encode())
    if proc.returncode != 0 or not out:
        raise APIError(f"espeak-ng failed ({proc.returncode}): {err.decode(errors='replace').strip()}")
    return out


class PiperTTS(tts.TTS):
    """Offline neural text-to-speech with a Piper voice the operator supplies (.onnx + .onnx.json)."""

    def __init__(self, model: Path) -> None:
        from piper import PiperVoice

        if not model.is_file() or not Path(f"{model}.json").is_file():
            raise FileNotFoundError(f"voice.piper_voice: {model} and {model}.json must both exist")
        self._voice = PiperVoice.load(model)
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=self._voice.config.sample_rate,
            num_channels=1,
        )
        self._name = model.stem

    @property
    def model(self) -> str:
        return f"piper:{self._name}"

    @property
    def provider(self) -> str:
        return "piper"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _PiperStream(tts=self, input_text=text, conn_options=conn_options)


class _PiperStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        engine: PiperTTS = self._tts  # type: ignore[assignment]
        output_emitter.initialize(
            request_id=uuid.uuid4().hex, sample_rate=engine.sample_rate, num_channels=1, mime_type="audio/pcm"
        )
        chunks = await asyncio.to_thread(lambda: list(engine._voice.synthesize(self._input_text)))
        for chunk in chunks:
            output_emitter.push(chunk.audio_int16_bytes)
        output_emitter.flush()


def silero_vad(min_silence_sec: float) -> vad.VAD:
    """Silero's model (shipped in its package), ending speech after a pause this long."""
    return silero.VAD.load(min_silence_duration=min_silence_sec, prefix_padding_duration=0.3)


@functools.cache
def segment_vad(end_of_turn_sec: float) -> vad.VAD:
    """The speech-to-text's VAD, loaded once per process: it ends a segment STT_LEAD_SEC before
    the turn ends."""
    return silero_vad(max(end_of_turn_sec - STT_LEAD_SEC, 0.1))


def make_stt(settings: VoiceSettings, gateway_url: str, gateway_key: str) -> stt.STT:
    segments = segment_vad(settings.end_of_turn_sec)
    if settings.stt == "pocketsphinx":
        return PocketsphinxSTT(segments)
    # The gateway enforces the admin's model; the name here only fills the field.
    return stt.StreamAdapter(
        stt=openai.STT(
            base_url=gateway_url, api_key=gateway_key, model="whisper-1", language=settings.language
        ),
        vad=segments,
    )


def make_tts(settings: VoiceSettings, gateway_url: str, gateway_key: str) -> tts.TTS:
    if settings.tts == "espeak":
        return EspeakTTS(settings.espeak_voice)
    if settings.tts == "piper":
        assert settings.piper_voice is not None  # checked by VoiceSettings
        return PiperTTS(settings.piper_voice)
    return openai.TTS(
        base_url=gateway_url,
        api_key=gateway_key,
        model="tts-1",
        voice=settings.tts_voice,
        response_format="pcm",
    )
