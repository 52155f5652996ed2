"""Turns an uploaded file into titled sections of readable text, or says exactly why it cannot.

The format is read from the bytes (magic numbers) and checked against the extension, because uploads
arrive renamed, mis-saved and half-downloaded; a file whose content contradicts its name fails with a
reason instead of being parsed as something it is not. Text keeps its original script and spelling:
normalisation for search happens later (rag.normalize), never to what users and the LLM read.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import PurePath
from typing import Literal

import docx
from bs4 import BeautifulSoup, NavigableString, Tag
from docx.document import Document as DocxDocument
from docx.table import Table
from docx.text.paragraph import Paragraph
from pypdf import PasswordType, PdfReader

from rag.normalize import detect_language
from rag.pdf_text import PdfLine, pdf_lines

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DocumentError",
    "DocumentErrorReason",
    "ParsedDocument",
    "Section",
    "flatten_table",
    "load_document",
]

DocumentErrorReason = Literal["empty", "scanned_pdf", "encrypted", "corrupt", "unsupported_type", "too_large"]

_EXTENSION_FORMATS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
}
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_EXTENSION_FORMATS)
_SUPPORTED_LIST = "pdf, docx, html, md, txt"

# Formats recognised by their first bytes. Anything else is treated as text and must then decode as text.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"PK\x03\x04", "zip", "a zip archive"),
    (b"PK\x05\x06", "zip", "an empty zip archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "ole", "an OLE file (legacy or password-protected Office)"),
    (b"\x89PNG\r\n\x1a\n", "binary", "a PNG image"),
    (b"\xff\xd8\xff", "binary", "a JPEG image"),
    (b"GIF8", "binary", "a GIF image"),
    (b"II*\x00", "binary", "a TIFF image"),
    (b"MM\x00*", "binary", "a TIFF image"),
    (b"\x1f\x8b", "binary", "gzip data"),
    (b"Rar!", "binary", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "binary", "a 7z archive"),
)
_FORMAT_LABELS = {"pdf": "PDF", "docx": "DOCX", "html": "HTML", "markdown": "Markdown", "text": "text"}


class DocumentError(Exception):
    """An upload that cannot be indexed: `reason` is a stable code for programs, str(err) the message for people."""

    def __init__(self, reason: DocumentErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: DocumentErrorReason = reason


@dataclass(frozen=True, slots=True)
class Section:
    """The text under one heading. Tables are already flattened to lines, so every consumer sees prose."""

    heading: str  # heading path, e.g. "Cards > Fees", without the document title; "" for text above headings
    text: str  # readable text in its original script, not normalised


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """What a loader found in a file, independent of the file format."""

    title: str  # first top-level heading, <title>, DOCX core title or PDF metadata title; else the file stem
    format: str  # "pdf" | "docx" | "html" | "markdown" | "text"
    sections: tuple[Section, ...]
    language: str  # "ar" | "en", the dominant script of the whole text
    pages: int  # PDF page count; for other formats an estimate, max(1, round(chars / 3000))


@dataclass(slots=True)
class _Draft:
    sections: list[Section]
    title: str | None = None  # an explicit title from metadata, if the format has one
    top_heading: str | None = None
    pages: int | None = None


def load_document(data: bytes, filename: str, *, max_bytes: int = 20 * 2**20) -> ParsedDocument:
    """Parses an uploaded file; raises DocumentError with a reason code when it cannot be indexed."""
    if len(data) > max_bytes:
        raise DocumentError("too_large", f"file is {_size(len(data))}; the limit is {_size(max_bytes)}")
    if not data.strip():
        raise DocumentError("empty", "file is empty")
    fmt, text = _resolve_format(data, filename)
    try:
        draft = _PARSERS[fmt](data, text)
    except RecursionError as exc:  # markup nested thousands deep: hostile or broken, never a real document
        raise DocumentError("corrupt", f"{_FORMAT_LABELS[fmt]} is nested too deeply to read") from exc
    sections = tuple(section for section in draft.sections if section.text.strip())
    if not sections:
        raise DocumentError("empty", f"{_FORMAT_LABELS[fmt]} file has no text to index")
    title = draft.title or draft.top_heading or PurePath(filename).stem or filename
    body = "\n".join(section.text for section in sections)
    return ParsedDocument(
        title=title,
        format=fmt,
        sections=_without_title(sections, title),
        language=detect_language(body),
        pages=draft.pages if draft.pages is not None else max(1, round(len(body) / 3000)),
    )


def _without_title(sections: tuple[Section, ...], title: str) -> tuple[Section, ...]:
    """Drops a title heading that wraps the whole document ("# Card Fees Guide" over everything).

    The title travels separately; every path repeating it would only dilute the section names in
    citations and embeddings. A first heading that merely has siblings is a section, and stays.
    """
    prefix = f"{title} > "
    if not all(s.heading in ("", title) or s.heading.startswith(prefix) for s in sections):
        return sections
    return tuple(Section("" if s.heading == title else s.heading.removeprefix(prefix), s.text) for s in sections)


def _size(size_bytes: int) -> str:
    if size_bytes >= 2**20:
        return f"{size_bytes / 2**20:.1f} MiB"
    return f"{size_bytes / 1024:.1f} KiB" if size_bytes >= 1024 else f"{size_bytes} bytes"


# ---------------------------------------------------------------------------------------------------
# Format sniffing and text decoding


def _sniff(data: bytes) -> tuple[str, str]:
    """(kind, description) from magic numbers; kind "text" means no known binary signature."""
    # The PDF header may follow a little junk (some mail gateways prepend headers); readers allow 1 KiB.
    if b"%PDF-" in data[:1024]:
        return "pdf", "a PDF document"
    for magic, kind, description in _SIGNATURES:
        if data.startswith(magic):
            return kind, description
    return "text", "text"


def _resolve_format(data: bytes, filename: str) -> tuple[str, str]:
    """The format to parse as, plus the decoded text for text formats ("" for binary ones)."""
    ext = PurePath(filename).suffix.lower()
    if ext and ext not in _EXTENSION_FORMATS:
        raise DocumentError("unsupported_type", f"'{ext}' is not a supported type ({_SUPPORTED_LIST})")
    declared = _EXTENSION_FORMATS.get(ext)
    kind, description = _sniff(data)
    if kind == "pdf" and declared in (None, "pdf"):
        return "pdf", ""
    if kind in ("zip", "ole") and declared in (None, "docx"):
        return "docx", ""
    if kind != "text":
        if declared is None:
            raise DocumentError("unsupported_type", f"{description} is not a supported type ({_SUPPORTED_LIST})")
        raise DocumentError(
            "unsupported_type", f"'{filename}' is named {ext} but contains {description}; rename it to match"
        )
    if declared in ("pdf", "docx"):
        if _looks_like_html(data[:4096].decode("utf-8", errors="replace")):
            message = f"'{filename}' is named {ext} but contains HTML; rename it to match"
            raise DocumentError("unsupported_type", message)
        if declared == "pdf":
            raise DocumentError("corrupt", "file is not a PDF (no %PDF header); it may be damaged or mislabelled")
        raise DocumentError("corrupt", "DOCX is not a valid zip archive")
    text = _decode_text(data)
    if declared == "html" or _looks_like_html(text):
        return "html", text
    return declared or "text", text


_HTML_START_RE = re.compile(
    r"\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b", re.I | re.S
)
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xef\xbb\xbf", "utf-8-sig"),
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
# C0 controls other than tab, newline, carriage return and form feed, plus DEL: text never has many.
_CONTROL_BYTES = bytes([*range(0, 9), 11, *range(14, 32), 127])
_MAX_CONTROL_SHARE = 0.01


def _looks_like_html(text: str) -> bool:
    return _HTML_START_RE.match(text[:4096]) is not None


def _decode_text(data: bytes) -> str:
    """Decodes uploaded text: a BOM decides, else UTF-8, else cp1256 (Windows Arabic, what older Arabic
    Windows tools save); binary data is refused rather than decoded into mojibake."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)
            except UnicodeDecodeError as exc:
                message = f"file starts with a {codec} byte-order mark but is not {codec}"
                raise DocumentError("corrupt", message) from exc
    sample = data[:65536]
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if b"\x00" in sample or controls > _MAX_CONTROL_SHARE * len(sample):
        raise DocumentError("corrupt", "file is not text: it contains binary data")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # cp1256 maps every byte, so this cannot fail; the control-byte check above is what rejects junk.
        return data.decode("cp1256", errors="replace")


# ---------------------------------------------------------------------------------------------------
# Shared text shaping: headings into paths, tables into lines

# Invisible characters that survive copy-paste and PDF export: zero-width space, soft hyphen, BOM, and
# bidi embedding controls. They split words for search and mean nothing to a reader of plain text.
_INVISIBLE_RE = re.compile("[\u200b\u00ad\ufeff\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_HSPACE_RE = re.compile(r"[^\S\n]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean_inline(text: str) -> str:
    text = _CONTROL_RE.sub(" ", _INVISIBLE_RE.sub("", text))
    return _HSPACE_RE.sub(" ", text.replace("\n", " ")).strip()


class _Outline:
    """Collects body lines under a stack of headings and emits one Section per heading that has text."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []
        self._lines: list[str] = []
        self._sections: list[Section] = []
        self.top_heading: str | None = None  # the first heading of the highest level seen
        self._top_level = 99

    def heading(self, level: int, text: str) -> None:
        text = _clean_inline(text)
        if not text:
            return
        self._flush()
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        if level < self._top_level:
            self.top_heading, self._top_level = text, level

    def line(self, text: str) -> None:
        text = _clean_inline(text)
        if text:
            self._lines.append(text)

    def lines(self, texts: Iterable[str]) -> None:
        for text in texts:
            self.line(text)

    def finish(self, *, title: str | None = None, pages: int | None = None) -> _Draft:
        self._flush()
        return _Draft(self._sections, title=title or None, top_heading=self.top_heading, pages=pages)

    def _flush(self) -> None:
        if self._lines:
            path = " > ".join(text for _, text in self._stack)
            self._sections.append(Section(path, "\n".join(self._lines)))
            self._lines = []


_DIGIT_RE = re.compile(r"\d")


def flatten_table(rows: Sequence[Sequence[str]], *, header: bool | None = None) -> list[str]:
    """One line per table row, readable without the table around it.

    With a header row each line reads "Card: Classic | Annual fee: AED 100": a chunk may carry only
    some rows of a table, and repeating the column names keeps every row self-explaining to the LLM
    and findable by BM25 on the column words, which a bare "Classic | AED 100" would not be.
    Without a known header the cells are joined as "a | b". `header=None` guesses: a first row of
    three or more non-empty, digit-free cells is a header (fee tables); two-column tables are
    usually label/value lists, where a guessed header would pair the wrong words.
    """
    table = [[_clean_inline(cell) for cell in row] for row in rows]
    table = [row for row in table if any(row)]
    if not table:
        return []
    if header is None:
        first = table[0]
        header = len(first) >= 3 and all(first) and not any(_DIGIT_RE.search(cell) for cell in first)
    if not header or len(table) < 2 or len(table[0]) < 2:
        return [" | ".join(cell for cell in row if cell) for row in table]
    names = table[0]
    lines = []
    for row in table[1:]:
        cells = zip_longest(names, row, fillvalue="")
        lines.append(" | ".join(f"{name}: {value}" if name else value for name, value in cells if value))
    return lines


# ---------------------------------------------------------------------------------------------------
# Plain text and Markdown

_MAX_HEADING_WORDS = 10
_MAX_HEADING_CHARS = 80
_SENTENCE_END_CHARS = ".,;:!?،؛؟…"


def _looks_like_heading(line: str) -> bool:
    """A short line with no closing punctuation: how headings look when nothing else marks them."""
    words = line.split()
    return (
        0 < len(words) <= _MAX_HEADING_WORDS
        and len(line) <= _MAX_HEADING_CHARS
        and line[-1] not in _SENTENCE_END_CHARS
        and any(char.isalpha() for char in line)
        and "|" not in line
    )


def _parse_text(data: bytes, text: str) -> _Draft:
    """Plain text has no markup, so a heading is a heading-like line between a blank line and text."""
    outline = _Outline()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for i, raw in enumerate(lines):
        line = raw.strip()
        before_blank = i == 0 or not lines[i - 1].strip()
        followed = i + 1 < len(lines) and lines[i + 1].strip()
        if before_blank and followed and _looks_like_heading(line):
            outline.heading(1, line)
        else:
            outline.line(line)
    return outline.finish()


_ATX_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_RE = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_TABLE_RULE_RE = re.compile(r"^ *\|? *:?-+:? *(?:\| *:?-+:? *)*\|? *$")
_RULE_RE = re.compile(r"^ {0,3}(?:(?:-[ \t]*){3,}|(?:\*[ \t]*){3,}|(?:_[ \t]*){3,})$")
_LIST_RE = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_INLINE_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"!\[([^\]]*)\]\([^)]*\)"), r"\1"),  # image: keep the alt text
    (re.compile(r"\[([^\]]+)\]\((\S+?)(?:\s+\"[^\"]*\")?\)"), r"\1 (\2)"),  # link: the URL can be the answer
    (re.compile(r"<[^>\n]+>"), " "),  # inline HTML tags
    (re.compile(r"(\*\*|__)(.+?)\1"), r"\2"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<!\w)_(?!\s)(.+?)(?<!\s)_(?!\w)"), r"\1"),
    (re.compile(r"`([^`]+)`"), r"\1"),
    (re.compile(r"^\s{0,3}>\s?"), ""),  # block quote marker
)


def _strip_markdown(line: str) -> str:
    line = _LIST_RE.sub("- ", line)
    for pattern, replacement in _INLINE_RULES:
        line = pattern.sub(replacement, line)
    return line


def _table_cells(line: str) -> list[str]:
    line = line.strip()
    line = line.removeprefix("|").removesuffix("|")
    return [_strip_markdown(cell.strip()) for cell in re.split(r"(?<!\\)\|", line)]


def _parse_markdown(data: bytes, text: str) -> _Draft:
    """CommonMark headings (ATX and setext), pipe tables and fenced code; inline markup is stripped.

    A small line parser rather than a Markdown library: only the structure matters here, and the
    renderers that produce HTML would need a second pass to get it back out.
    """
    outline = _Outline()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    fence: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        fence_match = _FENCE_RE.match(line)
        if fence is not None:
            fence = None if fence_match and fence_match.group(1)[0] == fence[0] else fence
            if fence is not None:
                outline.line(line)
        elif fence_match:
            fence = fence_match.group(1)
        elif atx := _ATX_RE.match(line):
            outline.heading(len(atx.group(1)), _strip_markdown(atx.group(2) or ""))
        elif "|" in line and _TABLE_RULE_RE.match(nxt) and "-" in nxt:
            rows = [_table_cells(line)]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_table_cells(lines[i]))
                i += 1
            outline.lines(flatten_table(rows, header=True))
            continue
        elif line.strip() and _SETEXT_RE.match(nxt) and not _LIST_RE.match(line):
            outline.heading(1 if nxt.strip()[0] == "=" else 2, _strip_markdown(line))
            i += 1
        elif not _RULE_RE.match(line):
            outline.line(_strip_markdown(line))
        i += 1
    return outline.finish()


# ---------------------------------------------------------------------------------------------------
# HTML

_HEADING_TAGS = {f"h{level}": level for level in range(1, 7)}
# Not content: code, styling, embedded media and site navigation menus.
_SKIP_TAGS = frozenset(
    {"script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "head", "nav", "button", "select"}
)
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "div", "dl",
        "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "html", "li", "main", "ol",
        "p", "pre", "section", "summary", "ul",
    }
)


class _HtmlWalker:
    """Walks the DOM in document order, turning block elements into lines and headings into sections."""

    def __init__(self) -> None:
        self.outline = _Outline()
        self._inline: list[str] = []

    def walk(self, node: Tag) -> None:
        for child in node.children:
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:  # not a Comment, Doctype, CData or declaration
                    self._inline.append(str(child))
            elif isinstance(child, Tag):
                self._element(child)

    def _element(self, tag: Tag) -> None:
        name = tag.name
        if name in _SKIP_TAGS:
            return
        if name in _HEADING_TAGS:
            self.flush()
            self.outline.heading(_HEADING_TAGS[name], tag.get_text(" "))
        elif name == "table":
            self.flush()
            self.outline.lines(_html_table_lines(tag))
        elif name == "br":
            self.flush()
        elif name in _BLOCK_TAGS:
            self.flush()
            if name == "li":
                self._inline.append("- ")
            self.walk(tag)
            self.flush()
        else:
            self.walk(tag)

    def flush(self) -> None:
        if self._inline:
            self.outline.line("".join(self._inline))
            self._inline = []


def _html_table_lines(table: Tag) -> list[str]:
    rows = [row for row in table.find_all("tr") if row.find_parent("table") is table]
    cells = [row.find_all(["td", "th"], recursive=False) for row in rows]
    if not cells:
        return []
    first = cells[0]
    # <th> cells or a <thead> say which row is the header; otherwise flatten_table guesses.
    marked = bool(first) and (all(cell.name == "th" for cell in first) or rows[0].find_parent("thead") is not None)
    texts = [[cell.get_text(" ") for cell in row] for row in cells]
    return flatten_table(texts, header=True if marked else None)


def _parse_html(data: bytes, text: str) -> _Draft:
    soup = BeautifulSoup(text, "lxml")
    title_tag = soup.title
    title = _clean_inline(title_tag.get_text()) if title_tag is not None else None
    walker = _HtmlWalker()
    walker.walk(soup.body if soup.body is not None else soup)
    walker.flush()
    return walker.outline.finish(title=title)


# ---------------------------------------------------------------------------------------------------
# DOCX

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Word keeps a password-protected .docx as an OLE file holding an "EncryptedPackage" stream.
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")
# A few MiB of zip can inflate to gigabytes of XML; real documents stay far below this.
_MAX_DOCX_XML_BYTES = 256 * 2**20
_HEADING_STYLE_RE = re.compile(r"^heading\s*([1-9])$", re.I)
_BODY_OUTLINE_LEVEL = 9


def _open_docx(data: bytes) -> DocxDocument:
    if data.startswith(_OLE_MAGIC):
        if _ENCRYPTED_PACKAGE in data:
            raise DocumentError("encrypted", "DOCX is password-protected; upload an unprotected copy")
        raise DocumentError("unsupported_type", "file is a legacy Word .doc (OLE format); save it as .docx")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo("word/document.xml")
    except KeyError as exc:
        raise DocumentError("unsupported_type", "zip archive is not a Word document (no word/document.xml)") from exc
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DocumentError("corrupt", "DOCX is not a valid zip archive") from exc
    if info.file_size > _MAX_DOCX_XML_BYTES:
        raise DocumentError("too_large", f"DOCX text is {info.file_size / 2**20:.0f} MiB uncompressed; too large")
    try:
        return docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx surfaces zip, XML and content-type errors as many types
        raise DocumentError("corrupt", f"DOCX could not be read: {exc}") from exc


def _docx_heading_level(paragraph: Paragraph) -> int | None:
    """Heading level from the paragraph's outline level or its style chain ("Title" is level 0).

    Built-in heading styles keep their English names in styles.xml even in Arabic Word; the outline
    level catches custom heading styles.
    """
    own = paragraph._p.xpath("./w:pPr/w:outlineLvl/@w:val")
    if own:
        return _outline_level(own[0])
    style = paragraph.style
    while style is not None:
        name = style.name or ""
        if name.lower() == "title":
            return 0
        if match := _HEADING_STYLE_RE.match(name):
            return int(match.group(1))
        levels = style.element.xpath("./w:pPr/w:outlineLvl/@w:val")
        if levels:
            return _outline_level(levels[0])
        style = style.base_style
    return None


def _outline_level(value: str) -> int | None:
    level = int(value) if value.isdigit() else _BODY_OUTLINE_LEVEL
    return level + 1 if level < _BODY_OUTLINE_LEVEL else None


def _docx_table_lines(table: Table) -> list[str]:
    rows: list[list[str]] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # a merged cell is repeated once per grid column it spans
                continue
            previous = cell._tc
            cells.append(cell.text)
        rows.append(cells)
    marked = bool(table.rows) and bool(table.rows[0]._tr.xpath("./w:trPr/w:tblHeader"))
    return flatten_table(rows, header=True if marked else None)


def _parse_docx(data: bytes, text: str) -> _Draft:
    document = _open_docx(data)
    outline = _Outline()
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            outline.lines(_docx_table_lines(block))
            continue
        level = _docx_heading_level(block)
        if level is not None:
            outline.heading(level, block.text)
        elif block._p.xpath("./w:pPr/w:numPr"):
            outline.line(f"- {block.text}")
        else:
            outline.line(block.text)
    return outline.finish(title=document.core_properties.title)


# ---------------------------------------------------------------------------------------------------
# PDF

# Page numbers ("3", "Page 3 of 9", "صفحة ٣ من ٩") are furniture, not content.
_PAGE_NUMBER_RE = re.compile(r"^\s*(?:page\s*|صفحة\s*)?\d+(?:\s*(?:/|of|من)\s*\d+)?\s*$", re.I)
# Producers that write their own name or the source file into the title field.
_USELESS_TITLE_RE = re.compile(r"^(?:microsoft \w+ - .*|.*\.(?:docx?|pdf|odt|rtf|txt))$|^untitled$", re.I)
# Heading text is at least this much larger than the body text, as in every default heading style.
_HEADING_SIZE_RATIO = 1.15


def _open_pdf(data: bytes) -> PdfReader:
    # Without %%EOF near the end the file was cut off; pypdf would quietly recover what it can.
    if b"%%EOF" not in data[-4096:]:
        raise DocumentError("corrupt", "PDF is truncated (no %%EOF marker); upload the complete file")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            _decrypt(reader)
        _ = len(reader.pages)
    except DocumentError:
        raise
    except Exception as exc:  # pypdf reports damage as many exception types
        raise DocumentError("corrupt", f"PDF is damaged: {exc}") from exc
    return reader


def _decrypt(reader: PdfReader) -> None:
    """Opens PDFs that only restrict printing or copying (empty user password); others are refused."""
    try:
        result = reader.decrypt("")
    except Exception as exc:  # e.g. AES without the cryptography package
        raise DocumentError("encrypted", "PDF is encrypted; upload an unprotected copy") from exc
    if result == PasswordType.NOT_DECRYPTED:
        raise DocumentError("encrypted", "PDF is encrypted; upload an unprotected copy")


def _pdf_title(reader: PdfReader) -> str | None:
    try:
        metadata = reader.metadata
        title = _clean_inline(str(metadata.title or "")) if metadata is not None else ""
    except Exception:  # a damaged info dictionary must not cost the document
        return None
    return title if title and not _USELESS_TITLE_RE.match(title) else None


def _heading_levels(lines: Sequence[PdfLine]) -> dict[float, int]:
    """Level per font size: sizes clearly above the body size that are used for heading-like lines.

    Without a bigger font nothing is a heading: a false heading splits a section and mislabels every
    citation under it, while a missed one only makes the section path coarser.
    """
    weights: Counter[float] = Counter()
    for line in lines:
        weights[line.size_pt] += len(line.text)
    body = weights.most_common(1)[0][0]
    sizes = {
        line.size_pt for line in lines if line.size_pt >= body * _HEADING_SIZE_RATIO and _looks_like_heading(line.text)
    }
    return {size: level for level, size in enumerate(sorted(sizes, reverse=True), start=1)}


def _parse_pdf(data: bytes, text: str) -> _Draft:
    reader = _open_pdf(data)
    try:
        pages = pdf_lines(reader.pages)
    except Exception as exc:
        raise DocumentError("corrupt", f"PDF text could not be read: {exc}") from exc
    lines = [line for page in pages for line in page if line.text and not _PAGE_NUMBER_RE.match(line.text)]
    if not lines:
        count = len(pages)
        raise DocumentError(
            "scanned_pdf", f"PDF has {count} page{'s' if count != 1 else ''} and no text layer (scanned?); "
            "OCR is not supported"
        )
    levels = _heading_levels(lines)
    outline = _Outline()
    heading: list[str] = []
    heading_level = 0
    for line in lines:
        level = levels.get(line.size_pt)
        if heading and level != heading_level:
            outline.heading(heading_level, " ".join(heading))  # a wrapped heading spans several lines
            heading = []
        if level is None:
            outline.line(line.text)
        else:
            heading.append(line.text)
            heading_level = level
    if heading:
        outline.heading(heading_level, " ".join(heading))
    return outline.finish(title=_pdf_title(reader), pages=len(pages))


_PARSERS: dict[str, Callable[[bytes, str], _Draft]] = {
    "pdf": _parse_pdf,
    "docx": _parse_docx,
    "html": _parse_html,
    "markdown": _parse_markdown,
    "text": _parse_text,
}
