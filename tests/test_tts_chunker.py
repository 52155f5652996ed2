"""The phrase chunker, in English and Arabic, one-shot and incremental."""

from __future__ import annotations

import pytest

from tts.chunker import PhraseChunker, split_phrases
from tts.config import ChunkerConfig

pytestmark = pytest.mark.unit


def stream(text: str, piece_chars: int, options: ChunkerConfig | None = None) -> list[list[str]]:
    """Feeds text in small deltas, as an LLM streams it; returns what each push and the flush gave."""
    chunker = PhraseChunker(options)
    out = [chunker.push(text[i:i + piece_chars]) for i in range(0, len(text), piece_chars)]
    out.append(chunker.flush())
    return out


def test_english_sentences_are_phrases() -> None:
    text = "Hello there. How can I help you today? I'm sorry to hear that! Let me check."
    assert split_phrases(text) == [
        "Hello there.", "How can I help you today?", "I'm sorry to hear that!", "Let me check.",
    ]


def test_arabic_sentence_ends_and_comma() -> None:
    text = "مرحباً بك في خدمة العملاء، كيف يمكنني مساعدتك اليوم؟ رصيدك الحالي هو ثلاثمائة دينار. شكراً لاتصالك"
    assert split_phrases(text) == [
        "مرحباً بك في خدمة العملاء،",
        "كيف يمكنني مساعدتك اليوم؟",
        "رصيدك الحالي هو ثلاثمائة دينار.",
        "شكراً لاتصالك",
    ]


def test_arabic_semicolon_and_urdu_full_stop() -> None:
    assert split_phrases("تم تحويل المبلغ بنجاح؛ سيصلك إشعار قريباً۔ هل تحتاج شيئاً آخر؟") == [
        "تم تحويل المبلغ بنجاح؛", "سيصلك إشعار قريباً۔", "هل تحتاج شيئاً آخر؟",
    ]


def test_semicolon_colon_and_newlines_end_phrases() -> None:
    text = "Your options are these: pay now; pay later\nor call us back tomorrow"
    assert split_phrases(text) == ["Your options are these:", "pay now;", "pay later", "or call us back tomorrow"]


def test_numbers_times_abbreviations_do_not_split() -> None:
    text = "Dr. Smith said the rate is 3.5 percent at 10:30 today, e.g. on example.com for you."
    assert split_phrases(text, ChunkerConfig(first_phrase_max_chars=120)) == [text]


def test_short_fragments_are_merged_with_the_next_phrase() -> None:
    assert split_phrases("Yes. I can help with that.\n1. Open the app\n2. Tap pay") == [
        "Yes. I can help with that.", "1. Open the app", "2. Tap pay",
    ]


def test_punctuation_only_text_says_nothing() -> None:
    assert split_phrases("... !!! ؟") == []
    assert split_phrases("   ") == []


def test_first_phrase_is_kept_short() -> None:
    text = ("Thank you for calling the customer care line of Acme Bank today, I will be glad to help "
            "you with your account.")
    phrases = split_phrases(text)
    assert phrases[0] == "Thank you for calling the customer care line of Acme Bank"
    assert " ".join(phrases) == text


def test_long_sentence_cut_at_comma_then_at_space() -> None:
    options = ChunkerConfig(first_phrase_max_chars=40, max_phrase_chars=50, min_phrase_chars=5)
    text = ("I can see two payments this month, one on the third and one on the twelfth, and both "
            "of them were made from your savings account without any problem at all")
    phrases = split_phrases(text, options)
    assert phrases[0] == "I can see two payments this month,"
    assert phrases[1] == "one on the third and one on the twelfth,"
    assert all(len(p) <= 50 for p in phrases)
    assert " ".join(phrases) == text  # cut on word boundaries only


def test_long_arabic_sentence_cut_on_word_boundaries() -> None:
    options = ChunkerConfig(first_phrase_max_chars=30, max_phrase_chars=40, min_phrase_chars=5)
    text = "نود إبلاغك بأن طلبك قيد المراجعة حالياً وسوف نتواصل معك خلال يومي عمل لإتمام الإجراءات المطلوبة"
    phrases = split_phrases(text, options)
    assert len(phrases) >= 3
    assert len(phrases[0]) <= 30 and all(len(p) <= 40 for p in phrases)
    assert " ".join(phrases) == text


def test_token_longer_than_the_limit_is_cut_anyway() -> None:
    options = ChunkerConfig(first_phrase_max_chars=20, max_phrase_chars=20, min_phrase_chars=5)
    phrases = split_phrases("x" * 50, options)
    assert "".join(phrases) == "x" * 50
    assert all(len(p) <= 20 for p in phrases)


@pytest.mark.parametrize("piece_chars", [1, 3, 7])
def test_incremental_matches_one_shot(piece_chars: int) -> None:
    text = ("Sure. Let me check that for you. Your balance is 300.25 dollars, and your next payment "
            "is due on the fifth of March. مرحباً بك، كيف يمكنني مساعدتك؟ Anything else?")
    pieces = stream(text, piece_chars)
    assert [p for batch in pieces for p in batch] == split_phrases(text)


def test_incremental_emits_a_phrase_as_soon_as_it_is_complete() -> None:
    chunker = PhraseChunker()
    assert chunker.push("Thank you for calling") == []
    assert chunker.push(" Acme Bank.") == []  # could still be "Acme Bank.com": wait for the next char
    assert chunker.push(" How") == ["Thank you for calling Acme Bank."]
    assert chunker.push(" can I help?") == []
    assert chunker.flush() == ["How can I help?"]
    assert chunker.flush() == []


def test_incremental_long_first_phrase_is_cut_before_its_sentence_ends() -> None:
    chunker = PhraseChunker(ChunkerConfig(first_phrase_max_chars=30, max_phrase_chars=200, min_phrase_chars=5))
    out: list[str] = []
    for word in "I can help you with that but first I need to verify your identity".split():
        out += chunker.push(word + " ")
    assert out and len(out[0]) <= 30
    assert " ".join(out + chunker.flush()) == "I can help you with that but first I need to verify your identity"


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        ChunkerConfig(first_phrase_max_chars=10, min_phrase_chars=10)
