"""Typed configuration of the VAD and ASR services."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class VadConfig(BaseModel):
    """Silero VAD, run per 32 ms window (512 samples at 16 kHz)."""

    model: str = Field("silero-vad", description="Model name in the registry (voiceai/models.toml).")
    threshold: float = Field(0.5, ge=0.05, le=0.95, description="Speech probability that starts speech.")
    neg_threshold: float = Field(
        0.35, ge=0.0, le=0.95, description="Probability below which a window counts as silence."
    )
    min_speech_ms: int = Field(150, ge=0, description="Shorter speech bursts are dropped.")
    min_silence_ms: int = Field(300, ge=32, description="Silence that ends a speech segment.")
    speech_pad_ms: int = Field(64, ge=0, description="Audio kept before speech start for the ASR.")
    max_stream_s: int = Field(4 * 3600, ge=1, description="A VAD stream is closed past this duration.")


class AsrBatchConfig(BaseModel):
    """Cross-stream batching of decodes (GPU backends)."""

    max_batch_size: int = Field(1, ge=1, description="Most utterances decoded in one model call.")
    max_wait_ms: int = Field(10, ge=0, description="How long a decode may wait for batch partners.")


class AsrConfig(BaseModel):
    """Streaming Whisper through faster-whisper (CTranslate2)."""

    model: str = Field("whisper-base", description="Model name in the registry.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="CTranslate2 device.")
    compute_type: str = Field("int8", description="CTranslate2 compute type: int8, float16, int8_float16.")
    cpu_threads: int = Field(2, ge=1, description="Intra-op threads for CPU decoding.")
    beam_size: int = Field(1, ge=1, le=10, description="Beam size of final decodes.")
    interim_beam_size: int = Field(1, ge=1, le=10, description="Beam size of interim decodes.")
    languages: list[str] = Field(["ar", "en"], description="Languages a stream may ask for.")
    interim_interval_ms: int = Field(
        1000, ge=100, description="Default cadence of interim hypotheses, in ms of new speech."
    )
    endpoint_silence_ms: int = Field(
        500, ge=100, description="Default silence that ends an utterance on the server's VAD."
    )
    early_decode: bool = Field(
        True,
        description="Start decoding the utterance at the first silent window, so the final is ready "
        "soon after the endpoint; the result is discarded if speech resumes.",
    )
    encoder_window: Literal["fit", "full"] = Field(
        "fit", description="'fit': pad each utterance to its own length plus a margin (fast); "
        "'full': Whisper's standard 30 s window."
    )
    encoder_margin_s: int = Field(2, ge=1, le=10, description="Silence padded after the speech (fit).")
    encoder_min_window_s: int = Field(5, ge=2, le=30, description="Smallest encoder window (fit).")
    max_utterance_s: float = Field(28.0, ge=1, le=30, description="Longer speech is cut into utterances.")
    max_stream_s: int = Field(4 * 3600, ge=1, description="A stream is closed past this duration.")
    min_utterance_ms: int = Field(200, ge=0, description="Shorter speech is not decoded.")
    batch: AsrBatchConfig = AsrBatchConfig()
