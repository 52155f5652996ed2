"""Deterministic parts of the ASR: stable prefix, loop trimming, decode scheduling."""

from __future__ import annotations

import asyncio
import threading

import pytest

from asr.api import Word
from asr.scheduler import PRIORITY_FINAL, PRIORITY_INTERIM, DecodeScheduler
from asr.stabilizer import StablePrefix
from asr.whisper import collapse_repeats, drop_words_in_padding

pytestmark = pytest.mark.unit


def test_stable_prefix_commits_what_two_hypotheses_agree_on():
    s = StablePrefix()
    assert s.update("Hello I") == ("", "Hello I")
    assert s.update("Hello, I would") == ("Hello, I", "would")
    # A later hypothesis that rewrites the committed part does not withdraw it.
    stable, unstable = s.update("Yellow I would like")
    assert stable == "Hello, I"
    assert unstable == "would like"
    # Agreement restarts from the newest pair of hypotheses.
    assert s.update("Hello I would like to") == ("Hello, I", "would like to")
    assert s.update("Hello I would like to check") == ("Hello, I would like to", "check")


def test_stable_prefix_arabic_ignores_diacritics_and_punctuation():
    s = StablePrefix()
    s.update("أريد التحدث")
    stable, unstable = s.update("أُرِيدُ التحدث، مع")
    assert stable == "أُرِيدُ التحدث،"  # agreed despite diacritics and the Arabic comma
    assert unstable == "مع"


def test_collapse_repeats_trims_loops_only():
    assert collapse_repeats([7, 8, 7, 8, 7, 8]) == [7, 8]
    assert collapse_repeats([1, 7, 8, 7, 8]) == [1, 7, 8]
    assert collapse_repeats([1, 2, 3, 4]) == [1, 2, 3, 4]
    assert collapse_repeats([3, 3]) == [3, 3]  # two is a real repetition, three is a loop
    assert collapse_repeats([9, 4, 4, 4, 4]) == [9, 4]
    assert collapse_repeats([5, 6, 5, 6]) == [5, 6]  # "Yes. Yes." is two tokens twice
    assert collapse_repeats([1, 5, 6, 2, 5, 6]) == [1, 5, 6, 2, 5, 6]  # not back to back


class ScriptedDecoder:
    """Stands in for Whisper: records batches and blocks until released."""

    def __init__(self):
        self.batches: list[list[str]] = []
        self.release = threading.Event()

    def __call__(self, requests):
        self.release.wait(5)
        self.batches.append(list(requests))
        return [f"decoded {r}" for r in requests]


async def test_finals_jump_ahead_of_interims_and_stale_interims_are_dropped():
    decoder = ScriptedDecoder()
    sched = DecodeScheduler(decoder, max_batch_size=1)
    blocker = asyncio.create_task(sched.submit("first", PRIORITY_INTERIM, key="a"))
    await asyncio.sleep(0.05)  # the worker now holds "first"
    old = asyncio.create_task(sched.submit("interim-1", PRIORITY_INTERIM, key="s"))
    new = asyncio.create_task(sched.submit("interim-2", PRIORITY_INTERIM, key="s"))
    final = asyncio.create_task(sched.submit("final", PRIORITY_FINAL, key="s"))
    await asyncio.sleep(0.05)
    decoder.release.set()
    assert await blocker == "decoded first"
    assert await old is None  # superseded before it ran
    assert await final == "decoded final"
    assert await new == "decoded interim-2"
    assert [b[0] for b in decoder.batches] == ["first", "final", "interim-2"]
    await sched.close()


async def test_batches_collect_concurrent_requests():
    decoder = ScriptedDecoder()
    decoder.release.set()
    sched = DecodeScheduler(decoder, max_batch_size=4, max_wait_ms=30)
    results = await asyncio.gather(*(sched.submit(f"u{i}", PRIORITY_FINAL) for i in range(4)))
    assert results == [f"decoded u{i}" for i in range(4)]
    assert len(decoder.batches) == 1 and len(decoder.batches[0]) == 4
    await sched.close()


async def test_a_failing_model_fails_its_jobs_and_keeps_serving():
    calls = {"n": 0}

    def flaky(requests):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: out of memory")
        return ["ok" for _ in requests]

    sched = DecodeScheduler(flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        await sched.submit("a", PRIORITY_FINAL)
    assert await sched.submit("b", PRIORITY_FINAL) == "ok"
    await sched.close()


def test_words_placed_in_the_padding_are_dropped():
    words = (Word("Please", 500, 800, 0.9), Word("hold.", 800, 1200, 0.9), Word("Please", 2480, 2700, 0.4))
    assert [w.text for w in drop_words_in_padding(words, audio_end_ms=2450)] == ["Please", "hold."]
    assert drop_words_in_padding(words, audio_end_ms=3000) == words


def test_dropped_padding_words_are_rejoined_without_space_before_punctuation() -> None:
    from asr.whisper import join_words

    assert join_words(["What", "is", "my", "account", "?"]) == "What is my account?"
    assert join_words([" مرحبا", "،", "كيف", "حالك", "؟"]) == "مرحبا، كيف حالك؟"
    assert join_words(["", " ok", "."]) == "ok."
