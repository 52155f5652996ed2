"""Typed configuration of the call loop (``call`` section of the settings)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class EndpointConfig(BaseModel):
    """When the caller's turn is over."""

    silence_ms: dict[str, int] = Field(
        {"en": 500, "ar": 700},
        description="Silence after the caller's last word that ends the turn, per language "
        "(Arabic callers pause longer between phrases).",
    )
    default_silence_ms: int = Field(600, ge=100, description="For languages not listed above.")
    asr_segment_silence_ms: int = Field(
        250, ge=100, description="Silence at which the ASR closes a segment and sends its final; the turn "
        "may go on with more segments.",
    )
    short_answer_max_words: int = Field(3, ge=1, description="A final this short may end the turn at once.")


class InterruptionConfig(BaseModel):
    """Barge-in: when caller speech stops the bot."""

    enabled: bool = Field(True, description="Let callers interrupt the bot.")
    min_speech_ms: int = Field(
        350, ge=0, description="Speech shorter than this (a cough, a click) pauses the bot, then it resumes.")
    confirm_speech_ms: int = Field(
        900, ge=0, description="Speech this long interrupts without waiting for its transcript.")
    backchannels: list[str] = Field(
        ["mm", "mhm", "mm-hmm", "uh-huh", "hmm", "uh", "um", "ok", "okay", "yeah", "right", "aha",
         "اها", "آها", "اه", "آه", "ايوه", "ايوا", "طيب", "اوكي", "ممم", "هم", "نعم نعم"],
        description="Short acknowledgements that do not interrupt.",
    )


class CallTimeouts(BaseModel):
    """Per-stage limits; a stage that passes its limit counts as a failure of that dependency."""

    asr_final_ms: int = Field(3000, ge=100, description="From a segment's end to its final transcript.")
    llm_first_token_ms: int = Field(6000, ge=100, description="From the turn's end to the first token.")
    llm_total_ms: int = Field(20000, ge=100, description="Whole generation.")
    tts_first_chunk_ms: int = Field(3000, ge=100, description="From a phrase's request to its first audio.")


class BreakerConfig(BaseModel):
    """Circuit breaker per dependency (ASR, LLM, TTS)."""

    failure_threshold: int = Field(2, ge=1, description="Consecutive failures that open the breaker.")
    reset_after_s: float = Field(5.0, gt=0, description="Open time before a half-open probe.")


class TransferConfig(BaseModel):
    """Handing the caller to people: where to, and the key that asks for it."""

    target: str = Field("sip:agents@127.0.0.1", description="Where transfers go: a SIP URI (a queue or a number) "
                        "for phone calls; web callers get a `transfer` event with it.")
    dtmf_digit: str = Field("0", pattern=r"^[0-9*#A-D]?$", description="The key that asks for a person "
                            "(empty: none).")
    timeout_s: float = Field(8.0, gt=0, description="How long the transport may take to hand the call over.")


class CallConfig(BaseModel):
    """The call loop."""

    endpoint: EndpointConfig = EndpointConfig()
    interruption: InterruptionConfig = InterruptionConfig()
    timeouts: CallTimeouts = CallTimeouts()
    breaker: BreakerConfig = BreakerConfig()
    speculative: bool = Field(True, description="Start the LLM on a segment's final during the silence window.")
    greeting: bool = Field(True, description="Greet the caller when the call starts.")
    silence_prompt_s: float = Field(10.0, gt=0, description="Caller silence before 'are you still there?'.")
    silence_prompts: int = Field(2, ge=0, description="Prompts before the bot says goodbye and hangs up.")
    max_call_s: float = Field(1800.0, gt=0, description="Longest call; then goodbye and hang up.")
    max_reply_tokens: int = Field(80, ge=8, description="Most tokens in one spoken reply.")
    frame_ms: int = Field(20, ge=10, le=60, description="Size of the audio frames sent to the caller.")
    history_turns: int = Field(12, ge=1, description="Turns of history sent to the LLM.")
    transfer: TransferConfig = TransferConfig()
