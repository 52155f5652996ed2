"""Whisper decoding through faster-whisper's CTranslate2 model, sized to the utterance.

faster-whisper's ``transcribe`` always pads audio to Whisper's 30 s window, so the encoder costs
the same for "yes" as for a 30 s monologue (~0.7 s for Whisper base on 2 CPU cores). The
CTranslate2 encoder also accepts shorter inputs, so this backend pads each utterance only to
``ceil(duration) + margin`` seconds (at least ``min_window_s``): a 3 s utterance then encodes in
~0.05 s. With less than ~2 s of trailing padding Whisper tends to loop ("Yes. Yes. Yes."), hence
the defaults; a repetition guard trims any loop that still gets through. Short windows are
what make sub-300 ms finals and frequent interims affordable on CPU; on GPU they raise batch
throughput. ``encoder_window = "full"`` restores the standard 30 s behaviour.

Utterances of one batch are padded to the same window, encoded together and decoded together
(CTranslate2 batches natively), which is how GPU servers batch concurrent streams.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.api import Word
from voiceai import models

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16000
_FULL_WINDOW_S = 30
_TOKENS_PER_AUDIO_S = 8  # generous upper bound of speech tokens per second, to stop loops


_SPACE_BEFORE_PUNCT = re.compile(r"\s+([?.!,:;؟،؛])")


def join_words(words: Iterable[str]) -> str:
    """Word texts as one line: "account?" rather than "account ?" (Whisper gives punctuation its own word)."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(w.strip() for w in words if w.strip()))


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    """One utterance to decode (16 kHz mono float32)."""

    audio: np.ndarray
    language: str  # "ar", "en" or "auto"
    offset_ms: int  # stream time of audio[0], for word timestamps
    word_timestamps: bool = False
    beam_size: int = 1
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class DecodeResult:
    text: str
    language: str
    language_probability: float
    confidence: float
    no_speech_probability: float
    words: tuple[Word, ...] = ()


def collapse_repeats(tokens: list[int], max_ngram: int = 12) -> list[int]:
    """Cuts a decoding loop: a tail n-gram repeated back to back is kept once.

    Whisper loops on short or unclear audio ("Yes. Yes.", "نعم نعم نعم"). A single token must
    repeat three times to count as a loop, a longer n-gram twice. A caller who really says
    "thank you, thank you" loses the second one, which is the cheaper mistake.
    """
    for n in range(1, max_ngram + 1):
        min_repeats = 3 if n == 1 else 2
        if len(tokens) < n * min_repeats:
            break
        tail = tokens[-n:]
        count, end = 1, len(tokens) - n
        while end - n >= 0 and tokens[end - n:end] == tail:
            count += 1
            end -= n
        if count >= min_repeats:
            return tokens[:end + n]
    return tokens


def drop_words_in_padding(words: tuple[Word, ...], audio_end_ms: int, margin_ms: int = 40) -> tuple[Word, ...]:
    """Words that start after the real audio ended were invented in the silence we padded with.

    The fitted encoder window adds seconds of zeros after the utterance; Whisper now and then
    "hears" a word there (often the utterance's first word again). Word timestamps place it.
    """
    return tuple(w for w in words if w.start_ms < audio_end_ms - margin_ms)


class FasterWhisperBackend:
    """Loads a CTranslate2 Whisper model from the models directory and decodes batches."""

    def __init__(self, model_dir: Path, device: str = "cpu", compute_type: str = "int8",
                 cpu_threads: int = 2, allowed_languages: Sequence[str] = ("ar", "en"),
                 encoder_window: str = "fit", window_margin_s: int = 2, min_window_s: int = 5) -> None:
        self.model_dir = model_dir
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.allowed_languages = tuple(allowed_languages)
        self.encoder_window = encoder_window
        self.window_margin_s = window_margin_s
        self.min_window_s = min_window_s
        self._model = None
        self._lock = threading.Lock()  # one decode at a time per model instance

    @classmethod
    def from_registry(cls, name: str, models_dir: Path, **kwargs) -> FasterWhisperBackend:
        return cls(models.require(name, models_dir), **kwargs)

    def load(self) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ImportError("faster-whisper is missing: pip install 'voiceai[cpu]' (or [gpu])") from err
        self._model = WhisperModel(str(self.model_dir), device=self.device, compute_type=self.compute_type,
                                   cpu_threads=self.cpu_threads, num_workers=1, local_files_only=True)
        # A first decode compiles kernels and fills caches; callers should not pay for it.
        self.decode_batch([DecodeRequest(np.zeros(SAMPLE_RATE_HZ, np.float32), "en", 0)])

    @property
    def model(self):
        if self._model is None:
            raise RuntimeError("model not loaded; call load() first")
        return self._model

    def window_s(self, n_samples: int) -> int:
        if self.encoder_window == "full":
            return _FULL_WINDOW_S
        # Trailing silence lets Whisper see the end of the speech as an end.
        return min(_FULL_WINDOW_S,
                   max(self.min_window_s, math.ceil(n_samples / SAMPLE_RATE_HZ) + self.window_margin_s))

    def decode_batch(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        """Decodes utterances in one encoder pass and one generate call (blocking)."""
        if not requests:
            return []
        with self._lock:
            return self._decode_locked(requests)

    def _decode_locked(self, requests: Sequence[DecodeRequest]) -> list[DecodeResult]:
        from faster_whisper.tokenizer import Tokenizer

        model = self.model
        window_s = max(self.window_s(len(r.audio)) for r in requests)
        n_window = window_s * SAMPLE_RATE_HZ
        batch = []
        for r in requests:
            audio = r.audio[:n_window].astype(np.float32, copy=False)
            padded = np.zeros(n_window, dtype=np.float32)
            padded[: len(audio)] = audio
            feats = model.feature_extractor(padded, padding=0)
            batch.append(feats[:, : window_s * 100])
        encoder_output = model.encode(np.stack(batch))

        languages: list[tuple[str, float]] = []
        auto = [i for i, r in enumerate(requests) if r.language in ("", "auto")]
        detected = model.model.detect_language(encoder_output) if auto and model.model.is_multilingual else None
        for i, r in enumerate(requests):
            if r.language not in ("", "auto"):
                languages.append((r.language, 1.0))
            elif detected is None:
                languages.append(("en", 1.0))
            else:
                languages.append(self._pick_language(detected[i]))

        tokenizers = [Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                language=lang) for lang, _ in languages]
        prompts = []
        for r, tok in zip(requests, tokenizers, strict=True):
            prompt: list[int] = []
            if r.prompt:
                prompt = [tok.sot_prev, *tok.encode(" " + r.prompt.strip())[-(223 // 2):]]
            prompts.append([*prompt, *tok.sot_sequence, tok.no_timestamps])
        max_audio_s = max(len(r.audio) for r in requests) / SAMPLE_RATE_HZ
        results = model.model.generate(
            encoder_output,
            prompts,
            beam_size=max(r.beam_size for r in requests),
            max_length=min(448, int(20 + _TOKENS_PER_AUDIO_S * max_audio_s) + max(len(p) for p in prompts)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )
        out = []
        for i, (r, tok, res) in enumerate(zip(requests, tokenizers, results, strict=True)):
            tokens = collapse_repeats([t for t in res.sequences_ids[0] if t < tok.eot])
            text = tok.decode(tokens).strip()
            score = float(res.scores[0]) if res.scores else 0.0
            words: tuple[Word, ...] = ()
            if r.word_timestamps and tokens:
                words = self._words(tok, tokens, encoder_output, i, window_s, r)
                audio_end_ms = r.offset_ms + len(r.audio) * 1000 // SAMPLE_RATE_HZ
                kept = drop_words_in_padding(words, audio_end_ms)
                if len(kept) < len(words):
                    words, text = kept, join_words(w.text for w in kept)
            lang, lang_p = languages[i]
            out.append(DecodeResult(text=text, language=lang, language_probability=lang_p,
                                    confidence=float(math.exp(min(0.0, score))),
                                    no_speech_probability=float(res.no_speech_prob), words=words))
        return out

    def _pick_language(self, ranked: list[tuple[str, float]]) -> tuple[str, float]:
        """Most probable language among those callers may speak (the platform serves ar/en)."""
        probs = {tok.strip("<|>"): p for tok, p in ranked}
        allowed = [(lang, probs.get(lang, 0.0)) for lang in self.allowed_languages] or list(probs.items())
        return max(allowed, key=lambda lp: lp[1])

    def _words(self, tok, tokens: list[int], encoder_output, index: int, window_s: int,
               r: DecodeRequest) -> tuple[Word, ...]:
        import ctranslate2

        model = self.model
        if len(self._batch_shape(encoder_output)) == 3 and self._batch_shape(encoder_output)[0] > 1:
            # align() takes the batch; slice out this item's encoder output.
            arr = np.array(encoder_output) if model.model.device == "cpu" else None
            if arr is None:  # pragma: no cover - GPU path, not runnable here
                return ()
            encoder_output = ctranslate2.StorageView.from_array(arr[index:index + 1])
        n_frames = min(len(r.audio) // 160, window_s * 100)
        aligned = model.find_alignment(tok, [tokens], encoder_output, n_frames)
        words = []
        for w in aligned[0] if aligned else []:
            words.append(Word(text=w["word"].strip(), start_ms=r.offset_ms + int(w["start"] * 1000),
                              end_ms=r.offset_ms + int(w["end"] * 1000), probability=float(w["probability"])))
        return tuple(w for w in words if w.text)

    @staticmethod
    def _batch_shape(storage) -> tuple[int, ...]:
        return tuple(storage.shape)
