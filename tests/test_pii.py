"""PII detection and redaction in English and Arabic: each kind's shapes, what must be left alone,
Arabic-Indic digits, overlaps, the two redaction styles, nested events and idempotence.

Valid test numbers are checked here with independent Luhn and mod-97 implementations, so a typo in a
fixture fails loudly instead of silently testing the negative path.
"""

from __future__ import annotations

import itertools

import pytest

from voiceai.pii import ALL, Kinds, PiiKind, PiiMatch, contains_pii, find_pii, redact, redact_obj

pytestmark = pytest.mark.unit

PHONE, EMAIL, EMIRATES_ID, CARD, IBAN = PiiKind.PHONE, PiiKind.EMAIL, PiiKind.EMIRATES_ID, PiiKind.CARD, PiiKind.IBAN


# ---- independent check-digit helpers -------------------------------------------------------------


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()][::-1]
    total = sum(d if i % 2 == 0 else (d * 2 if d < 5 else d * 2 - 9) for i, d in enumerate(digits))
    return total % 10 == 0


def luhn_complete(partial: str) -> str:
    """``partial`` with the Luhn check digit appended."""
    return next(partial + c for c in "0123456789" if luhn_valid(partial + c))


def iban_valid(iban: str) -> bool:
    compact = iban.replace(" ", "").upper()
    return int("".join(str(int(c, 36)) for c in compact[4:] + compact[:4])) % 97 == 1


def iban_for(country: str, bban: str) -> str:
    """An IBAN with correct check digits for ``bban``."""
    remainder = int("".join(str(int(c, 36)) for c in bban + country + "00")) % 97
    return f"{country}{98 - remainder:02d}{bban}"


def arabic_indic(s: str) -> str:
    return s.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))


def eastern_arabic_indic(s: str) -> str:
    return s.translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹"))


def found(text: str, kinds: Kinds = ALL) -> list[tuple[PiiKind, str]]:
    return [(m.kind, m.text) for m in find_pii(text, kinds)]


EID = luhn_complete("78419901234567")  # 784-1990-1234567-C
EID_DASHED = f"{EID[:3]}-{EID[3:7]}-{EID[7:14]}-{EID[14]}"
EID_BAD_CHECK = EID[:14] + str((int(EID[14]) + 1) % 10)
AE_IBAN = "AE070331234567890123456"  # the UAE example IBAN from the SWIFT registry
AE_IBAN_SPACED = "AE07 0331 2345 6789 0123 456"


def test_fixtures_are_valid() -> None:
    for card in (
        "4111111111111111",
        "5555555555554444",
        "378282246310005",
        "6011111111111117",
        "4222222222222",
        "2223003122003222",
    ):
        assert luhn_valid(card), card
    for bad in ("4111111111111112", "5555555555554445"):
        assert not luhn_valid(bad), bad
    assert luhn_valid(EID) and not luhn_valid(EID_BAD_CHECK)
    for iban in (AE_IBAN, "GB82WEST12345698765432", "DE89370400440532013000", "SA0380000000608010167519"):
        assert iban_valid(iban), iban
    assert not iban_valid("AE080331234567890123456")


# ---- phones --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("Call me on 050 123 4567 please", "050 123 4567"),
        ("my mobile: 0501234567.", "0501234567"),
        ("It's 055-123-4567, thanks", "055-123-4567"),
        ("reach me at +971 50 123 4567", "+971 50 123 4567"),
        ("+971501234567", "+971501234567"),
        ("dial 00971 50 123 4567 now", "00971 50 123 4567"),
        ("from abroad +971 (0)50 123 4567", "+971 (0)50 123 4567"),
        ("people write +971 0501234567 too", "+971 0501234567"),
        ("office 04 123 4567", "04 123 4567"),
        ("Abu Dhabi office: 02-2345678", "02-2345678"),
        ("fax (04) 123 4567", "(04) 123 4567"),
        ("Dubai landline +971 4 123 4567", "+971 4 123 4567"),
        ('{"caller": "971501234567"}', "971501234567"),
        ("London +44 20 7946 0958", "+44 20 7946 0958"),
        ("US office +1 (415) 555-2671 ext", "+1 (415) 555-2671"),
        ("India +91-98765-43210", "+91-98765-43210"),
        ("Riyadh +966 50 123 4567", "+966 50 123 4567"),
        ("GET /callback?to=%2B971501234567&x=1", "%2B971501234567"),
        ("digit by digit 0 5 0 1 2 3 4 5 6 7 ok", "0 5 0 1 2 3 4 5 6 7"),
        ("(+971 50 123 4567)", "+971 50 123 4567"),
    ],
)
def test_phone_english(text: str, phone: str) -> None:
    assert found(text) == [(PHONE, phone)]


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("رقمي ٠٥٥ ١٢٣ ٤٥٦٧ شكرا", "٠٥٥ ١٢٣ ٤٥٦٧"),
        ("٠٥٠١٢٣٤٥٦٧", "٠٥٠١٢٣٤٥٦٧"),
        ("رقم0501234567", "0501234567"),
        ("رقمي٠٥٠١٢٣٤٥٦٧وشكرا", "٠٥٠١٢٣٤٥٦٧"),
        ("0501234567شكرا", "0501234567"),
        ("اتصل على +٩٧١ ٥٠ ١٢٣ ٤٥٦٧ من فضلك", "+٩٧١ ٥٠ ١٢٣ ٤٥٦٧"),
        ("هاتفي ۰۵۰۱۲۳۴۵۶۷", "۰۵۰۱۲۳۴۵۶۷"),
        ("هاتف المكتب ٠٤ ١٢٣ ٤٥٦٧ في دبي", "٠٤ ١٢٣ ٤٥٦٧"),
        ("الرقم هو 050 123 4567، شكراً", "050 123 4567"),
        ("أرسل إلى ٠٠٩٧١٥٥١٢٣٤٥٦٧ رسالة", "٠٠٩٧١٥٥١٢٣٤٥٦٧"),
        ("mixed ٠٥٠ 123 ٤٥٦٧ digits", "٠٥٠ 123 ٤٥٦٧"),
    ],
)
def test_phone_arabic(text: str, phone: str) -> None:
    assert found(text) == [(PHONE, phone)]


# ---- things that must be left alone --------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The total is AED 1,250.50 including VAT",
        "AED 12,500,000.00 was transferred",
        "٢٥٠ درهم",
        "المبلغ ١٬٢٥٠٫٥٠ درهم",
        "on 2024-05-01 at 10:30",
        "due 01/05/2024, paid 1/5/24",
        "2024-05-01T10:30:45.123Z",
        "2024-05-01 10 30 45",
        "الموعد ٢٠٢٤/٠٥/٠١ الساعة ١٠:٣٠",
        "order 12345678 shipped",
        "طلب رقم ١٢٣٤٥٦٧٨",
        "reference 123456789",
        "a 50% discount, ٥٠٪ خصم",
        "since 1999, in 2024",
        "call 999 or 800 4444",
        "ext 1234",
        "INV0501234567",
        "sku-ab0501234567x",
        "pi is 3.0501234567",
        "ts_ms=1714550400123",
        "trace 4bf92f3577b34da6a3ce929d0e0e4736",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "version 1.20.3",
        "+5% today",
        "@username said hi",
        "user@localhost",
        "نعم، شكراً جزيلاً",
        "",
    ],
)
def test_not_pii(text: str) -> None:
    assert find_pii(text) == []
    assert redact(text) == text
    assert not contains_pii(text)


# ---- emails --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "email"),
    [
        ("write to ahmed.ali@example.com please", "ahmed.ali@example.com"),
        ("Email: A_B+tag@mail.example.co.ae.", "A_B+tag@mail.example.co.ae"),
        ("<sara-k@corp-mail.ae>", "sara-k@corp-mail.ae"),
        ("بريدي الإلكتروني ahmed@example.ae شكرا", "ahmed@example.ae"),
        ("بريديahmed@example.comشكرا", "ahmed@example.com"),
        ("البريد: fatima.2024@gmail.com، من فضلك", "fatima.2024@gmail.com"),
    ],
)
def test_email(text: str, email: str) -> None:
    assert found(text) == [(EMAIL, email)]


# ---- Emirates ID ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "eid"),
    [
        (f"my Emirates ID is {EID_DASHED}", EID_DASHED),
        (f"ID {EID}", EID),
        (f"ID {EID_DASHED.replace('-', ' ')} ok", EID_DASHED.replace("-", " ")),
        (f"رقم الهوية {arabic_indic(EID_DASHED)} من فضلك", arabic_indic(EID_DASHED)),
        (f"هويتي{EID}", EID),
        (f"الهوية {eastern_arabic_indic(EID)}", eastern_arabic_indic(EID)),
        # The printed 3-4-7-1 grouping is redacted even with a wrong check digit (a misheard digit).
        (f"ID 784-1990-1234567-{EID_BAD_CHECK[-1]}", f"784-1990-1234567-{EID_BAD_CHECK[-1]}"),
    ],
)
def test_emirates_id(text: str, eid: str) -> None:
    assert found(text) == [(EMIRATES_ID, eid)]


@pytest.mark.parametrize(
    "text",
    [
        f"ID {EID_BAD_CHECK}",  # unbroken 784 + 12 digits must pass Luhn
        "ID 784-1990-1234567",  # one digit short
        "ID 7841990123456789",  # 16 digits
        "code 784 only",
        "هوية ٧٨٤١٩٩٠",
    ],
)
def test_not_emirates_id(text: str) -> None:
    assert find_pii(text) == []


def test_luhn_valid_emirates_id_is_not_a_card() -> None:
    assert luhn_valid(EID) and len(EID) == 15
    assert found(f"{EID[:4]} {EID[4:8]} {EID[8:12]} {EID[12:]}") == [
        (EMIRATES_ID, f"{EID[:4]} {EID[4:8]} {EID[8:12]} {EID[12:]}")
    ]
    assert found(EID, {CARD}) == []


# ---- payment cards -------------------------------------------------------------------------------

CARD_19 = luhn_complete("622202000000000000")


@pytest.mark.parametrize(
    ("text", "card"),
    [
        ("card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
        ("4111-1111-1111-1111", "4111-1111-1111-1111"),
        ("pan=4111111111111111;", "4111111111111111"),
        ("Mastercard 5555 5555 5555 4444", "5555 5555 5555 4444"),
        ("new range 2223 0031 2200 3222", "2223 0031 2200 3222"),
        ("Amex 3782 822463 10005", "3782 822463 10005"),
        ("Discover 6011111111111117.", "6011111111111117"),
        ("old Visa 4222222222222", "4222222222222"),
        (
            f"19 digits {CARD_19[:4]} {CARD_19[4:8]} {CARD_19[8:12]} {CARD_19[12:16]} {CARD_19[16:]}",
            f"{CARD_19[:4]} {CARD_19[4:8]} {CARD_19[8:12]} {CARD_19[12:16]} {CARD_19[16:]}",
        ),
        ("read twice 4111 1111 1111 1111 2 times", "4111 1111 1111 1111"),
        ("رقم البطاقة 4111-1111-1111-1111 شكرا", "4111-1111-1111-1111"),
        ("البطاقة ٤١١١ ١١١١ ١١١١ ١١١١", "٤١١١ ١١١١ ١١١١ ١١١١"),
        ("بطاقتي٥٥٥٥٥٥٥٥٥٥٥٥٤٤٤٤", "٥٥٥٥٥٥٥٥٥٥٥٥٤٤٤٤"),
    ],
)
def test_card(text: str, card: str) -> None:
    assert found(text) == [(CARD, card)]


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # fails Luhn: an order or account reference, not a card
        "4111111111111112",
        "5555-5555-5555-4445",
        "رقم ٤١١١١١١١١١١١١١١٢",
        "12 digits 411111111111",
        "20 digits 41111111111111111113",
        "x4111111111111111",  # glued to Latin letters: part of an identifier
        "4111-1111-1111-1111-2222",
    ],
)
def test_not_card(text: str) -> None:
    assert find_pii(text) == []


# ---- IBAN ----------------------------------------------------------------------------------------

AT_IBAN_WITH_CARD_DIGITS = iban_for("AT", "4111111111111111")
AE_IBAN_WITH_PHONE_DIGITS = iban_for("AE", "0501234567000000000")
UNREGISTERED_IBAN = iban_for("XY", "12345678901234")


@pytest.mark.parametrize(
    ("text", "iban"),
    [
        (f"IBAN {AE_IBAN}", AE_IBAN),
        (f"IBAN: {AE_IBAN_SPACED} and more text", AE_IBAN_SPACED),
        (f"lower case {AE_IBAN.lower()}", AE_IBAN.lower()),
        ("UK GB82 WEST 1234 5698 7654 32.", "GB82 WEST 1234 5698 7654 32"),
        ("DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
        ("السعودية SA03 8000 0000 6080 1016 7519 شكرا", "SA03 8000 0000 6080 1016 7519"),
        (f"الآيبان{AE_IBAN}", AE_IBAN),
        (f"الآيبان AE07 {arabic_indic('0331 2345 6789 0123 456')}", f"AE07 {arabic_indic('0331 2345 6789 0123 456')}"),
        (f"generic shape {UNREGISTERED_IBAN}", UNREGISTERED_IBAN),
        (
            f"generic {UNREGISTERED_IBAN[:4]} {UNREGISTERED_IBAN[4:8]} {UNREGISTERED_IBAN[8:]} and more",
            f"{UNREGISTERED_IBAN[:4]} {UNREGISTERED_IBAN[4:8]} {UNREGISTERED_IBAN[8:]}",
        ),
    ],
)
def test_iban(text: str, iban: str) -> None:
    assert iban_valid(iban)
    assert found(text) == [(IBAN, iban)]


@pytest.mark.parametrize(
    "text",
    [
        "IBAN AE08 0331 2345 6789 0123 456",  # wrong checksum
        "AE080331234567890123456",
        f"{AE_IBAN}7",  # too long for a UAE IBAN
        f"x{AE_IBAN}",
        f"generic {UNREGISTERED_IBAN.lower()}",  # unregistered codes must be upper case
    ],
)
def test_not_iban(text: str) -> None:
    assert [m for m in find_pii(text) if m.kind is IBAN] == []


def test_iban_with_wrong_checksum_is_left_alone() -> None:
    text = "حوّل إلى AE08 0331 2345 6789 0123 456 اليوم"
    assert find_pii(text) == []
    assert redact(text) == text


# ---- overlaps and mixed text ---------------------------------------------------------------------


def test_most_specific_kind_wins() -> None:
    assert found("ahmed.0501234567@example.com") == [(EMAIL, "ahmed.0501234567@example.com")]
    assert found("ahmed.0501234567@example.com", {PHONE}) == [(PHONE, "0501234567")]

    spaced = " ".join(AT_IBAN_WITH_CARD_DIGITS[i : i + 4] for i in range(0, 20, 4))
    assert found(spaced, {CARD}) == [(CARD, "4111 1111 1111 1111")]
    assert found(spaced) == [(IBAN, spaced)]

    with_phone = f"{AE_IBAN_WITH_PHONE_DIGITS[:4]} 050 123 4567 000000000"
    assert found(with_phone, {PHONE}) == [(PHONE, "050 123 4567")]
    assert found(with_phone) == [(IBAN, with_phone)]


def test_adjacent_numbers_are_found_separately() -> None:
    assert found("050 123 4567 4111 1111 1111 1111") == [(PHONE, "050 123 4567"), (CARD, "4111 1111 1111 1111")]
    assert found("0501234567, 0521234567 / 04 123 4567") == [
        (PHONE, "0501234567"),
        (PHONE, "0521234567"),
        (PHONE, "04 123 4567"),
    ]


MIXED = (
    "Hi, I'm Ahmed. My mobile is 050 123 4567 and my email is ahmed.ali@example.ae. "
    f"رقم الهوية {arabic_indic(EID_DASHED)} والآيبان {AE_IBAN_SPACED}. "
    "Card 4111-1111-1111-1111, amount AED 1,250.50 on 01/05/2024, المبلغ ٢٥٠ درهم."
)


def test_mixed_text_tagged() -> None:
    assert redact(MIXED) == (
        "Hi, I'm Ahmed. My mobile is [PHONE] and my email is [EMAIL]. "
        "رقم الهوية [EMIRATES_ID] والآيبان [IBAN]. "
        "Card [CARD], amount AED 1,250.50 on 01/05/2024, المبلغ ٢٥٠ درهم."
    )


def test_matches_are_ordered_and_point_into_the_text() -> None:
    matches = find_pii(MIXED)
    assert [m.kind for m in matches] == [PHONE, EMAIL, EMIRATES_ID, IBAN, CARD]
    for m in matches:
        assert MIXED[m.start : m.end] == m.text
    assert all(a.end <= b.start for a, b in itertools.pairwise(matches))
    assert matches[0] == PiiMatch(PHONE, MIXED.index("050"), MIXED.index("050") + 12, "050 123 4567")


def test_kinds_filter() -> None:
    assert [m.kind for m in find_pii(MIXED, {EMAIL, CARD})] == [EMAIL, CARD]
    assert [m.kind for m in find_pii(MIXED, PHONE)] == [PHONE]  # a single kind may be passed bare
    assert [m.kind for m in find_pii(MIXED, ["iban"])] == [IBAN]  # type: ignore[list-item]
    assert find_pii(MIXED, set()) == []
    assert redact(MIXED, {EMAIL}).count("[") == 1
    with pytest.raises(ValueError):
        find_pii(MIXED, ["passport"])  # type: ignore[list-item]


def test_surrounding_text_and_bidi_marks_are_kept() -> None:
    text = "\u200fرقمي \u200e+971 50 123 4567\u200e وبريدي\u2067ahmed@example.ae\u2069 شكراً\u200f"
    assert redact(text) == "\u200fرقمي \u200e[PHONE]\u200e وبريدي\u2067[EMAIL]\u2069 شكراً\u200f"
    multiline = "line one\n\tcall 050 123 4567\r\nline three"
    assert redact(multiline) == "line one\n\tcall [PHONE]\r\nline three"


# ---- styles --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("card 4111 1111 1111 1111.", "card •••• 1111."),
        ("call +971 50 123 4567 now", "call •••• 4567 now"),
        ("رقمي ٠٥٥ ١٢٣ ٤٥٦٧ شكرا", "رقمي •••• ٤٥٦٧ شكرا"),
        (f"IBAN {AE_IBAN_SPACED}", "IBAN •••• 3456"),
        ("UK GB82 WEST 1234 5698 7654 32", "UK •••• 5432"),
        ("mail ahmed@example.ae", "mail [EMAIL]"),
        (f"ID {EID_DASHED}", "ID [EMIRATES_ID]"),
    ],
)
def test_mask_style(text: str, masked: str) -> None:
    assert redact(text, style="mask") == masked


def test_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="style"):
        redact("050 123 4567", style="blur")  # type: ignore[arg-type]


def test_nothing_found_returns_the_same_object() -> None:
    text = "nothing to hide here, order 12345678"
    assert redact(text) is text


IDEMPOTENCE_TEXTS = [
    MIXED,
    "0501234567 0521234567 4111111111111111 ahmed@example.com",
    "+44 20 7946 0958 2 times, 4111 1111 1111 1111 2 times",
    f"{AE_IBAN} {EID} {EID_DASHED}",
    "رقم0501234567 وبطاقة٤١١١١١١١١١١١١١١١",
    "0501234567 12345 and 4111111111111111 9",
]


@pytest.mark.parametrize("style", ["tag", "mask"])
@pytest.mark.parametrize("text", IDEMPOTENCE_TEXTS)
def test_redaction_is_idempotent(text: str, style: str) -> None:
    once = redact(text, style=style)  # type: ignore[arg-type]
    assert once != text
    assert redact(once, style=style) == once  # type: ignore[arg-type]
    assert not contains_pii(once)


# ---- objects -------------------------------------------------------------------------------------


def test_redact_obj_on_a_nested_event() -> None:
    event = {
        "type": "transcript.final",
        "call_id": "call-7f3a",
        "text": "my number is 050 123 4567",
        "ts_ms": 1714550400123,
        "confidence": 0.93,
        "final": True,
        "extra": None,
        "caller": {
            "phone": "+971501234567",
            "tags": ["vip", "email ahmed@example.com"],
            "ids": (EID_DASHED, 42),
            "raw": b"0501234567",
        },
        "0501234567": "a key is schema, not data",
        "turns": [{"role": "user", "text": "بطاقتي 4111 1111 1111 1111"}],
    }
    out = redact_obj(event)
    assert out == {
        "type": "transcript.final",
        "call_id": "call-7f3a",
        "text": "my number is [PHONE]",
        "ts_ms": 1714550400123,
        "confidence": 0.93,
        "final": True,
        "extra": None,
        "caller": {
            "phone": "[PHONE]",
            "tags": ["vip", "email [EMAIL]"],
            "ids": ("[EMIRATES_ID]", 42),
            "raw": b"0501234567",
        },
        "0501234567": "a key is schema, not data",
        "turns": [{"role": "user", "text": "بطاقتي [CARD]"}],
    }
    assert isinstance(out["caller"]["ids"], tuple)
    assert event["text"] == "my number is 050 123 4567"  # the input is not modified
    assert event["caller"]["tags"] == ["vip", "email ahmed@example.com"]  # type: ignore[index]


def test_redact_obj_styles_kinds_and_leaves() -> None:
    assert redact_obj({"card": "4111 1111 1111 1111"}, style="mask") == {"card": "•••• 1111"}
    assert redact_obj(["050 123 4567", "a@b.ae"], {EMAIL}) == ["050 123 4567", "[EMAIL]"]
    assert redact_obj("call 0501234567") == "call [PHONE]"
    marker = object()
    assert redact_obj(marker) is marker
    assert redact_obj(971501234567) == 971501234567  # numbers are not strings: keep identifiers as str


def test_contains_pii() -> None:
    assert contains_pii("رقمي ٠٥٥ ١٢٣ ٤٥٦٧")
    assert contains_pii("mail me: a@b.ae")
    assert contains_pii(MIXED, {IBAN})
    assert not contains_pii("AED 1,250.50 on 2024-05-01")
    assert not contains_pii("4111 1111 1111 1112")
