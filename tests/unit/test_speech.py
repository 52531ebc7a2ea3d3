"""The offline speech engines on their own: espeak-ng, pocketsphinx, Piper (with a voice made here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from livekit import rtc
from livekit.agents import APIError
from onnx import TensorProto, helper
from voice_audio import RATE, spoken

from sudo_core.config import ConfigError, VoiceSettings
from sudo_voice_bridge import speech
from sudo_voice_bridge.session import load_vad

SAMPLES_PER_ID = 256


async def synthesized(engine, text: str) -> tuple[bytes, int]:
    frames = [event.frame async for event in engine.synthesize(text)]
    return b"".join(bytes(f.data) for f in frames), frames[0].sample_rate


async def test_espeak_speaks_any_text_and_never_takes_it_for_an_option():
    engine = speech.EspeakTTS("en-us")
    pcm, rate = await synthesized(engine, "It will be sunny tomorrow.")
    assert rate == 22050 and 1.0 < len(pcm) / 2 / rate < 3.0
    # On the command line this would be an option; from stdin it is words.
    pcm, _ = await synthesized(engine, "--help me please")
    assert len(pcm) / 2 / rate > 0.5


async def test_a_host_without_espeak_ng_gets_a_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(APIError, match="apt install espeak-ng"):
        await speech.espeak_wav("hello", "en-us")


async def test_pocketsphinx_recognizes_a_whole_utterance():
    stt = speech.PocketsphinxSTT(load_vad(VoiceSettings()))
    pcm = spoken("what is the weather tomorrow")
    frame = rtc.AudioFrame(pcm, RATE, 1, len(pcm) // 2)
    event = await stt.recognize(buffer=frame)
    assert "weather tomorrow" in event.alternatives[0].text


def piper_voice(directory: Path) -> Path:
    """A stand-in Piper voice (none can be downloaded here): a real ONNX model with Piper's
    inputs and output, whose "speech" is each phoneme id held for SAMPLES_PER_ID samples, and
    a config mapping espeak-ng's English phonemes to ids."""
    ids = helper.make_tensor_value_info("input", TensorProto.INT64, [1, None])
    lengths = helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1])
    scales = helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3])
    audio = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 1, None])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, SAMPLES_PER_ID])
    flat = helper.make_tensor("flat", TensorProto.INT64, [4], [1, 1, 1, -1])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.01])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axes"], ["u"]),
        helper.make_node("Expand", ["u", "shape"], ["e"]),
        helper.make_node("Reshape", ["e", "flat"], ["r"]),
        helper.make_node("Mul", ["r", "scale"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "stand-in", [ids, lengths, scales], [audio], [shape, flat, scale, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = directory / "stand-in.onnx"
    onnx.save(model, path)
    symbols = (
        "_^$ ,.?!'abcdefghijklmnopqrstuvwxyzæçðøħŋœǀǁǂǃɐɑɒɓɔɕɖɗɘəɚɛɜɞɟɠɡ"  # noqa: RUF001
        "ɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʘʙʛʜʝʟʡʢʲˈˌːˑ˞βθχᵻⱱ"
    )
    config = {
        "num_symbols": len(symbols),
        "num_speakers": 1,
        "audio": {"sample_rate": 16000},
        "espeak": {"voice": "en-us"},
        "phoneme_id_map": {s: [i] for i, s in enumerate(symbols)},
    }
    Path(f"{path}.json").write_text(json.dumps(config))
    return path


async def test_piper_speaks_with_the_operators_voice(tmp_path: Path):
    engine = speech.PiperTTS(piper_voice(tmp_path))
    pcm, rate = await synthesized(engine, "Good morning.")
    samples = np.frombuffer(pcm, dtype=np.int16)
    assert rate == 16000 and engine.model == "piper:stand-in"
    # The model's output came through: blocks of SAMPLES_PER_ID equal samples, not silence.
    assert len(samples) >= 5 * SAMPLES_PER_ID and samples.any()
    assert (samples[:SAMPLES_PER_ID] == samples[0]).all()


def test_piper_without_its_files_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"voice\.piper_voice"):
        speech.PiperTTS(tmp_path / "missing.onnx")


def test_voice_settings_refuse_unknown_engines():
    with pytest.raises(ConfigError, match=r"voice\.stt"):
        VoiceSettings(stt="whisper.cpp")
    with pytest.raises(ConfigError, match=r"voice\.tts"):
        VoiceSettings(tts="festival")
    with pytest.raises(ConfigError, match="piper_voice"):
        VoiceSettings(tts="piper")
