"""Knowledge-base documents: loaders for every format in English and Arabic, bad files, Arabic
normalisation, BM25 tokens, language detection and chunking. Documents are built for real by
tests/kb_docs.py (fpdf2 with HarfBuzz shaping for PDFs, python-docx, hand-written HTML/Markdown/text).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

import pytest

from rag.chunking import Chunk, chunk_document, chunk_sections, estimate_tokens
from rag.loaders import SUPPORTED_EXTENSIONS, DocumentError, ParsedDocument, Section, flatten_table, load_document
from rag.normalize import detect_language, normalize_text, tokenize
from tests import kb_docs

pytestmark = pytest.mark.unit

MAKERS: dict[str, tuple[Callable[..., bytes], str]] = {
    "pdf": (kb_docs.make_pdf, "guide.pdf"),
    "docx": (kb_docs.make_docx, "guide.docx"),
    "html": (kb_docs.make_html, "guide.html"),
    "markdown": (kb_docs.make_markdown, "guide.md"),
    "text": (kb_docs.make_text, "guide.txt"),
}
LANGS = ("en", "ar")
STRUCTURED = ("pdf", "docx", "html", "markdown")  # formats that mark heading levels
TABLE_ROWS = {
    "en": ("Card: Classic | Annual fee: AED 100 | Cash withdrawal fee: 3%",
           "Card: Platinum | Annual fee: AED 300 | Cash withdrawal fee: 2.5%"),
    "ar": ("البطاقة: كلاسيك | الرسوم السنوية: ١٠٠ درهم | رسوم السحب النقدي: ٣٪",
           "البطاقة: بلاتينيوم | الرسوم السنوية: ٣٠٠ درهم | رسوم السحب النقدي: ٢٫٥٪"),
}


def load(fmt: str, lang: str) -> ParsedDocument:
    make, filename = MAKERS[fmt]
    return load_document(make(lang), filename)


def flat(text: str) -> str:
    """Whitespace-collapsed, so a phrase that a PDF wrapped over two lines still matches."""
    return " ".join(text.split())


def section_text(doc: ParsedDocument, leaf: str) -> str:
    matches = [s.text for s in doc.sections if s.heading.split(" > ")[-1] == leaf]
    assert matches, f"no section {leaf!r} in {[s.heading for s in doc.sections]}"
    return flat(matches[0])


# ---------------------------------------------------------------------------------------------------
# Every format, both languages


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("fmt", list(MAKERS))
def test_format_yields_every_heading_and_paragraph(fmt: str, lang: str) -> None:
    doc = load(fmt, lang)
    assert doc.format == fmt
    assert doc.language == lang
    assert doc.pages == 1
    leaves = [s.heading.split(" > ")[-1] for s in doc.sections]
    assert leaves == [s.heading for s in kb_docs.sections(lang)]
    for expected in kb_docs.sections(lang):
        for paragraph in expected.paragraphs:
            assert paragraph in section_text(doc, expected.heading)


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("fmt", STRUCTURED)
def test_heading_paths_nest_subsections_and_title_is_found(fmt: str, lang: str) -> None:
    doc = load(fmt, lang)
    parent, child = kb_docs.sections(lang)[0].heading, kb_docs.sections(lang)[2].heading
    sibling = kb_docs.sections(lang)[3].heading
    paths = [s.heading for s in doc.sections]
    assert f"{parent} > {child}" in paths
    assert sibling in paths  # back at the top level, not nested under the previous section
    assert doc.title == kb_docs.TITLES[lang]
    assert not any(path.startswith(doc.title) for path in paths)  # Markdown's "# title" is not repeated


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("fmt", ["docx", "html", "markdown"])
def test_tables_become_header_value_rows(fmt: str, lang: str) -> None:
    doc = load(fmt, lang)
    fees = doc.sections[1].text.split("\n")
    for row in TABLE_ROWS[lang]:
        assert row in fees


def test_table_without_a_known_header() -> None:
    label_value = [["Annual fee", "AED 100"], ["Late fee", "AED 25"]]
    assert flatten_table(label_value) == ["Annual fee | AED 100", "Late fee | AED 25"]
    fees = [["Card", "Annual fee", "Late fee"], ["Classic", "AED 100", "AED 25", "new"], ["Gold", "", "AED 30"]]
    assert flatten_table(fees) == [
        "Card: Classic | Annual fee: AED 100 | Late fee: AED 25 | new",  # extra cell kept, empty one skipped
        "Card: Gold | Late fee: AED 30",
    ]
    numbers_first = [["2023", "2024", "2025"], ["AED 90", "AED 100", "AED 110"]]
    assert flatten_table(numbers_first) == ["2023 | 2024 | 2025", "AED 90 | AED 100 | AED 110"]


def test_text_title_falls_back_to_first_heading_and_headings_are_flat() -> None:
    doc = load("text", "en")
    assert doc.title == "Credit Cards"
    assert [s.heading for s in doc.sections] == ["Credit Cards", "Annual Fees", "Late Payment", "Debit Cards"]


def test_loaders_keep_the_original_spelling() -> None:
    doc = load("docx", "ar")
    fees = section_text(doc, "الرسوم السنوية")
    assert "تُحتسب" in fees  # damma kept for display
    assert "البطاقة" in fees and "البطاقه" not in fees


def test_html_menu_and_script_are_not_content() -> None:
    text = " ".join(s.text for s in load("html", "en").sections)
    assert "do-not-index" not in text
    assert "Cards menu" not in text


def test_markdown_inline_markup_is_stripped() -> None:
    doc = load("markdown", "en")
    credit = section_text(doc, "Credit Cards")
    assert credit.startswith("Our credit cards give you")
    assert "**" not in credit and "|" not in credit


# ---------------------------------------------------------------------------------------------------
# Arabic through PDF


def test_arabic_pdf_letters_and_digits_come_back_in_logical_order() -> None:
    doc = load("pdf", "ar")
    late = section_text(doc, "رسوم التأخير")
    assert "تُطبق رسوم تأخير قدرها ٢٥ درهم" in late  # not "٥٢ درهم", not "مهرد"
    assert "الحد الأدنى للدفعة في تاريخ الاستحقاق." in late
    fees = section_text(doc, "الرسوم السنوية")
    assert "بلاتينيوم ٣٠٠ درهم ٢٫٥٪" in fees
    everything = " ".join(s.text for s in doc.sections)
    assert not re.search("[\ufb50-\ufdff\ufe70-\ufefe]", everything), "presentation forms left in the text"


def test_arabic_pdf_lines_mixing_latin_digits_and_brackets() -> None:
    lines = (
        "وتسري الرسوم نفسها على بطاقات Visa Platinum أيضاً.",
        "رسوم السحب النقدي (٣٪) من المبلغ، بحد أدنى 25 درهم.",
        "(٢٥٪) رسوم [Visa] للبطاقة",
        "رسوم ١٬٢٥٠٫٥٠ درهم سنوياً",
        "Call 800 123 or visit فرع الرياض today.",
    )
    data = kb_docs.make_pdf("ar", (kb_docs.DocSection(1, "الرسوم", lines),))
    doc = load_document(data, "mixed.pdf")
    assert doc.sections[0].text.split("\n") == list(lines)


def test_arabic_pdf_stored_without_shaping_is_not_returned_reversed() -> None:
    doc = load_document(kb_docs.make_pdf("ar", shaping=False), "unshaped.pdf")
    assert "تُطبق رسوم تأخير قدرها ٢٥ درهم" in section_text(doc, "رسوم التأخير")
    assert "ةقاطبلا" not in " ".join(s.text for s in doc.sections)


def test_pdf_headings_follow_font_size_across_pages() -> None:
    long_section = kb_docs.DocSection(2, "Fee Details", tuple(
        f"Clause {n}: the fee described in this clause is charged once per statement cycle." for n in range(60)
    ))
    content = (kb_docs.DocSection(1, "Credit Cards", ("Intro paragraph for the cards.",)), long_section,
               kb_docs.DocSection(1, "Debit Cards", ("Debit cards have no annual fee.",)))
    doc = load_document(kb_docs.make_pdf("en", content), "long.pdf")
    assert doc.pages >= 2
    details = [s for s in doc.sections if s.heading == "Credit Cards > Fee Details"]
    assert len(details) == 1
    assert "Clause 0:" in details[0].text and "Clause 59:" in details[0].text
    assert doc.sections[-1] == Section("Debit Cards", "Debit cards have no annual fee.")


def test_pdf_restricted_only_by_an_owner_password_loads() -> None:
    doc = load_document(kb_docs.make_encrypted_pdf(user_password=""), "restricted.pdf")
    assert doc.sections[0].heading == "Credit Cards"


# ---------------------------------------------------------------------------------------------------
# Bad files


@pytest.mark.parametrize(
    ("data", "filename", "reason", "message"),
    [
        (kb_docs.empty(), "guide.pdf", "empty", "file is empty"),
        (b"  \n\t ", "notes.txt", "empty", "file is empty"),
        (kb_docs.truncated_pdf(), "guide.pdf", "corrupt", "truncated"),
        (kb_docs.make_scanned_pdf(pages=3), "scan.pdf", "scanned_pdf",
         "PDF has 3 pages and no text layer (scanned?); OCR is not supported"),
        (kb_docs.make_encrypted_pdf(), "locked.pdf", "encrypted", "PDF is encrypted; upload an unprotected copy"),
        (kb_docs.docx_not_zip(), "guide.docx", "corrupt", "DOCX is not a valid zip archive"),
        (b"PK\x03\x04" + bytes(100), "guide.docx", "corrupt", "DOCX is not a valid zip archive"),
        (kb_docs.zip_without_document(), "sheet.docx", "unsupported_type", "no word/document.xml"),
        (kb_docs.encrypted_docx(), "locked.docx", "encrypted", "DOCX is password-protected"),
        (kb_docs.random_binary(), "notes.txt", "corrupt", "file is not text: it contains binary data"),
        (kb_docs.random_binary(), "notes.md", "corrupt", "binary data"),
        (kb_docs.png_bytes(), "notes.txt", "unsupported_type", "named .txt but contains a PNG image"),
        (kb_docs.make_pdf("en"), "guide.docx", "unsupported_type", "named .docx but contains a PDF document"),
        (kb_docs.make_docx("en"), "guide.pdf", "unsupported_type", "named .pdf but contains a zip archive"),
        (kb_docs.make_html("en"), "guide.pdf", "unsupported_type", "named .pdf but contains HTML"),
        (b"plain words, nothing else", "guide.pdf", "corrupt", "no %PDF header"),
        (b"a,b\n1,2\n", "sheet.xlsx", "unsupported_type", "'.xlsx' is not a supported type (pdf, docx, html, md, txt)"),
        (kb_docs.png_bytes(), "receipt", "unsupported_type", "a PNG image is not a supported type"),
        (b"<html><body><script>x()</script></body></html>", "page.html", "empty", "HTML file has no text to index"),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 24 else None,
)
def test_bad_files_fail_with_a_reason(data: bytes, filename: str, reason: str, message: str) -> None:
    with pytest.raises(DocumentError) as caught:
        load_document(data, filename)
    assert caught.value.reason == reason
    assert message in str(caught.value)


def test_file_over_the_size_limit_is_refused_before_parsing() -> None:
    with pytest.raises(DocumentError) as caught:
        load_document(kb_docs.make_text("en"), "guide.txt", max_bytes=100)
    assert caught.value.reason == "too_large"
    assert re.fullmatch(r"file is \d+ bytes; the limit is 100 bytes", str(caught.value))


def test_supported_extensions_are_the_documented_ones() -> None:
    assert {".pdf", ".docx", ".html", ".htm", ".md", ".markdown", ".txt"} == SUPPORTED_EXTENSIONS


# ---------------------------------------------------------------------------------------------------
# Sniffing and text decoding


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "cp1256"])
def test_arabic_text_decodes_from_every_common_encoding(encoding: str) -> None:
    doc = load_document(kb_docs.make_text("ar", encoding=encoding), "guide.txt")
    assert [s.heading for s in doc.sections] == [s.heading for s in kb_docs.sections("ar")]
    amount = "25 درهم" if encoding == "cp1256" else "٢٥ درهم"
    assert amount in section_text(doc, "رسوم التأخير")


def test_format_comes_from_the_bytes_when_the_name_has_no_extension() -> None:
    assert load_document(kb_docs.make_docx("en"), "upload").format == "docx"
    assert load_document(kb_docs.make_pdf("ar"), "upload").format == "pdf"
    assert load_document(kb_docs.make_html("en"), "upload").format == "html"
    assert load_document(kb_docs.make_text("en"), "upload").format == "text"


def test_html_saved_as_txt_is_parsed_as_html() -> None:
    doc = load_document(kb_docs.make_html("en"), "saved-page.txt")
    assert doc.format == "html"
    assert "<p>" not in doc.sections[0].text


# ---------------------------------------------------------------------------------------------------
# Normalisation


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("بِطَاقَةٌ", "بطاقه"),  # kasra, fatha, tanween; then taa marbuta
        ("مُسْتَحَقّ", "مستحق"),  # damma, sukun, shadda
        ("هٰذا", "هذا"),  # superscript alef
        ("رســـوم", "رسوم"),  # tatweel
        ("أحمد", "احمد"),
        ("إصدار", "اصدار"),
        ("آلي", "الي"),
        ("ٱلبنك", "البنك"),  # alef wasla
        ("على", "علي"),  # alef maqsura
        ("مؤسسة", "موسسه"),
        ("الطائرة", "الطايره"),
        ("٢٥ درهم", "25 درهم"),  # Arabic-Indic digits
        ("۱۲۳۴۵۶۷۸۹۰", "1234567890"),  # Eastern Arabic-Indic digits
        ("٢٫٥٪", "2.5%"),  # Arabic decimal separator and percent sign
        ("ﺍﻟﺒﻄﺎﻗﺔ", "البطاقه"),  # presentation forms
        ("ﻻ", "لا"),  # lam-alef ligature
        ("Annual FEE", "annual fee"),
        ("  رسوم \t\n التأخير  ", "رسوم التاخير"),
    ],
)
def test_normalize_text_rule(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_tokenize_english_keeps_numbers_and_drops_punctuation() -> None:
    assert tokenize("The Fee is 2.5%, or AED 1,000!") == ["the", "fee", "is", "2.5", "or", "aed", "1000"]


def test_tokenize_strips_the_arabic_article_only_when_a_word_remains() -> None:
    assert tokenize("بالبطاقة والرسوم للبنك فالحساب كالعادة الكريم") == [
        "بطاقه", "رسوم", "بنك", "حساب", "عاده", "كريم",
    ]
    assert tokenize("إلى") == ["الي"]  # "ال" + one letter: not an article
    assert tokenize("البطاقة") == tokenize("بطاقه")  # query without the article finds the document word


def test_tokenize_mixed_script_and_digits() -> None:
    assert tokenize("رسوم Visa: ٢٥ درهم؟") == ["رسوم", "visa", "25", "درهم"]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("ما هي رسوم البطاقة؟", "ar"),
        ("What is the card fee?", "en"),
        ("رسوم بطاقة Visa البلاتينية السنوية", "ar"),
        ("Is the رسوم fee charged annually for Platinum?", "en"),
        ("١٢٣ 456 ?!", "en"),
        ("", "en"),
    ],
)
def test_detect_language(text: str, language: str) -> None:
    assert detect_language(text) == language


# ---------------------------------------------------------------------------------------------------
# Chunking

SENTENCE = "The annual fee for the Classic card is AED 100 and it is charged on the card anniversary."
SENTENCE_AR = "تُحتسب الرسوم السنوية للبطاقة الكلاسيكية بقيمة ١٠٠ درهم في تاريخ إصدار البطاقة كل عام."


def long_section(heading: str, sentence: str, count: int) -> Section:
    return Section(heading, " ".join(f"({n}) {sentence}" for n in range(count)))


def test_estimate_tokens_rates() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("annual fee") == 3  # 2 x 1.3
    assert estimate_tokens("الرسوم السنوية") == 4  # 2 x 1.6
    assert estimate_tokens("AED 25.") == 4  # 1.3 + number + punctuation
    assert estimate_tokens("بِطَاقَةٌ") == estimate_tokens("بطاقة") == 2  # diacritics are not words


@pytest.mark.parametrize("sentence", [SENTENCE, SENTENCE_AR])
def test_chunks_fit_and_consecutive_chunks_overlap(sentence: str) -> None:
    section = long_section("Cards > Fees", sentence, 80)
    chunks = chunk_sections([section], max_tokens=120, overlap=30)
    assert len(chunks) > 5
    for chunk in chunks:
        assert estimate_tokens(chunk.text) <= 120
        assert chunk.text in section.text
    for before, after in pairwise(chunks):
        shared = _shared(before.text, after.text)
        assert shared, "consecutive chunks share no text"
        assert estimate_tokens(shared) <= 30
        assert re.match(r"\(\d+\)", after.text), "overlap should start at a sentence"
    assert chunks[-1].text.endswith(section.text[-40:])


def _shared(before: str, after: str) -> str:
    """The longest suffix of `before` that `after` starts with."""
    for start in range(len(before)):
        if after.startswith(before[start:]):
            return before[start:]
    return ""


def test_chunk_size_follows_a_passed_tokenizer() -> None:
    section = long_section("Fees", SENTENCE, 50)

    def chars_as_tokens(text: str) -> int:
        return len(text)

    chunks = chunk_sections([section], max_tokens=400, overlap=100, count_tokens=chars_as_tokens)
    assert all(len(chunk.text) <= 400 for chunk in chunks)
    assert max(len(chunk.text) for chunk in chunks) > 300  # packed, not one sentence per chunk


def test_no_chunk_spans_two_sections() -> None:
    sections = [long_section("Cards > Fees", SENTENCE, 30), long_section("Cards > Late", SENTENCE_AR, 30)]
    chunks = chunk_sections(sections, max_tokens=100, overlap=20)
    assert {chunk.section for chunk in chunks} == {"Cards > Fees", "Cards > Late"}
    for chunk in chunks:
        home = next(s for s in sections if s.heading == chunk.section)
        assert chunk.text in home.text
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))


def test_long_sentence_is_split_on_word_boundaries() -> None:
    words = [f"w{n}" for n in range(900)]
    section = Section("Terms", " ".join(words))  # one sentence, no punctuation
    chunks = chunk_sections([section], max_tokens=100, overlap=20)
    assert len(chunks) > 5
    seen: list[str] = []
    for chunk in chunks:
        assert estimate_tokens(chunk.text) <= 100
        assert set(chunk.text.split()) <= set(words)  # no word cut in half
        seen += chunk.text.split()
    assert list(dict.fromkeys(seen)) == words  # everything covered, in order
    assert all(_shared(a.text, b.text) for a, b in pairwise(chunks))


def test_tiny_section_joins_the_next_one() -> None:
    sections = [
        Section("Cards", "See below."),
        long_section("Cards > Fees", SENTENCE, 3),
        Section("Contact", "Call us."),
        long_section("Branches", SENTENCE_AR, 3),
    ]
    chunks = chunk_sections(sections)
    assert [chunk.section for chunk in chunks] == ["Cards > Fees", "Branches"]
    assert chunks[0].text.startswith("See below.\n\n(0)")  # parent heading already in the path
    assert chunks[1].text.startswith("Contact\nCall us.\n\n(0)")  # a sibling's heading is kept in the text


def test_whole_document_chunks_keep_original_text_and_section_paths() -> None:
    doc = load("docx", "ar")
    chunks = chunk_document(doc)
    assert all(isinstance(chunk, Chunk) for chunk in chunks)
    assert [chunk.section for chunk in chunks] == [s.heading for s in doc.sections]
    assert any("تُحتسب" in chunk.text for chunk in chunks)


def test_chunking_rejects_an_overlap_as_large_as_the_chunk() -> None:
    with pytest.raises(ValueError, match="overlap"):
        chunk_sections([Section("", "text")], max_tokens=100, overlap=100)
