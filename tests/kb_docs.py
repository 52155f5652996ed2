"""Real knowledge-base documents built in memory: PDF, DOCX, HTML, Markdown and text, English and Arabic.

The content is a UAE bank's card-fee guide, the kind of page customer care answers from. Arabic amounts
use Arabic-Indic digits (٢٥ درهم) as Arabic banks print them. PDFs are made with fpdf2 and HarfBuzz
shaping on DejaVu Sans, so Arabic is stored as shaped glyphs the way real producers store it.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import docx
from docx.enum.text import WD_ALIGN_PARAGRAPH
from docx.oxml import OxmlElement
from fpdf import FPDF
from PIL import Image, ImageDraw
from pypdf import PdfReader, PdfWriter

FONT_PATH = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@dataclass(frozen=True, slots=True)
class DocSection:
    """A heading, its paragraphs and an optional table (first row is the header)."""
    level: int
    heading: str
    paragraphs: tuple[str, ...]
    table: tuple[tuple[str, ...], ...] = ()


TITLES = {"en": "Card Fees Guide", "ar": "دليل رسوم البطاقات"}

_EN = (
    DocSection(1, "Credit Cards", (
        "Our credit cards give you up to 55 days interest-free. Apply online or at any branch.",
    )),
    DocSection(2, "Annual Fees", (
        "The annual fee is charged on the card anniversary. Platinum cardholders pay no fee in the first year.",
    ), (
        ("Card", "Annual fee", "Cash withdrawal fee"),
        ("Classic", "AED 100", "3%"),
        ("Platinum", "AED 300", "2.5%"),
    )),
    DocSection(2, "Late Payment", (
        "A late payment fee of AED 25 applies when the minimum payment is not received by the due date.",
    )),
    DocSection(1, "Debit Cards", (
        "Withdrawals at our own ATMs are free. Other banks' ATMs in the UAE charge AED 2 per withdrawal.",
    )),
)

_AR = (
    DocSection(1, "البطاقات الائتمانية", (
        "تمنحك بطاقاتنا الائتمانية فترة سماح تصل إلى ٥٥ يوماً بدون فوائد. يمكنك التقديم عبر الموقع أو في أي فرع.",
    )),
    DocSection(2, "الرسوم السنوية", (
        "تُحتسب الرسوم السنوية في تاريخ إصدار البطاقة. لا يدفع حاملو البطاقة البلاتينية أي رسوم في السنة الأولى.",
    ), (
        ("البطاقة", "الرسوم السنوية", "رسوم السحب النقدي"),
        ("كلاسيك", "١٠٠ درهم", "٣٪"),
        ("بلاتينيوم", "٣٠٠ درهم", "٢٫٥٪"),
    )),
    DocSection(2, "رسوم التأخير", (
        "تُطبق رسوم تأخير قدرها ٢٥ درهم إذا لم يصلنا الحد الأدنى للدفعة في تاريخ الاستحقاق.",
    )),
    DocSection(1, "بطاقات الخصم", (
        "السحب من أجهزة الصراف الآلي التابعة لنا مجاني. تبلغ رسوم السحب من بنوك أخرى في الإمارات ٢ درهم لكل عملية.",
    )),
)


def sections(lang: str) -> tuple[DocSection, ...]:
    """The guide's sections in "en" or "ar"."""
    return {"en": _EN, "ar": _AR}[lang]


def _content(lang: str, content: Sequence[DocSection] | None) -> Sequence[DocSection]:
    return sections(lang) if content is None else content


# ---------------------------------------------------------------------------------------------------
# PDF


def make_pdf(lang: str, content: Sequence[DocSection] | None = None, *, shaping: bool = True,
             title: str | None = None) -> bytes:
    """A text PDF: headings at 16/13 pt over 11 pt body; Arabic right-aligned and shaped by HarfBuzz.

    `shaping=False` stores Arabic in logical order, unjoined, as producers without a shaper do.
    Tables are written as one line per row, which is all a PDF keeps of them.
    """
    pdf = FPDF()
    pdf.add_font("dejavu", fname=FONT_PATH)
    pdf.set_text_shaping(shaping)
    pdf.set_title(TITLES[lang] if title is None else title)
    pdf.add_page()
    align = "R" if lang == "ar" else "L"
    for section in _content(lang, content):
        pdf.set_font("dejavu", size=16 if section.level == 1 else 13)
        pdf.multi_cell(0, 10, section.heading, align=align, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("dejavu", size=11)
        for paragraph in section.paragraphs:
            pdf.multi_cell(0, 7, paragraph, align=align, new_x="LMARGIN", new_y="NEXT")
        for row in section.table:
            pdf.multi_cell(0, 7, "    ".join(row), align=align, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def make_scanned_pdf(pages: int = 2) -> bytes:
    """A PDF whose pages are only pictures of text: what a scanner without OCR produces."""
    pdf = FPDF()
    for number in range(pages):
        image = Image.new("L", (800, 400), color=255)
        draw = ImageDraw.Draw(image)
        draw.text((40, 40), f"Card Fees Guide, page {number + 1}", fill=0)
        draw.text((40, 80), "The annual fee is AED 100.", fill=0)
        pdf.add_page()
        pdf.image(image, x=10, y=10, w=190)
    return bytes(pdf.output())


def make_encrypted_pdf(*, user_password: str = "secret") -> bytes:
    """The English guide encrypted with RC4-128; an empty `user_password` only restricts permissions."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf("en"))))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------
# DOCX, HTML, Markdown, text


def make_docx(lang: str, content: Sequence[DocSection] | None = None) -> bytes:
    """A Word document with Title/Heading styles, core title and a real table; Arabic paragraphs RTL."""
    document = docx.Document()
    document.core_properties.title = TITLES[lang]
    for section in _content(lang, content):
        heading = document.add_heading(section.heading, level=section.level)
        paragraphs = [heading]
        for text in section.paragraphs:
            paragraphs.append(document.add_paragraph(text))
        if section.table:
            table = document.add_table(rows=len(section.table), cols=len(section.table[0]))
            table.style = "Table Grid"
            for row, values in zip(table.rows, section.table, strict=True):
                for cell, value in zip(row.cells, values, strict=True):
                    cell.text = value
        if lang == "ar":
            for paragraph in paragraphs:
                _right_to_left(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _right_to_left(paragraph: Any) -> None:
    """Marks a paragraph right-to-left (<w:bidi/>) and right-aligned, as Arabic Word does."""
    paragraph.alignment = WD_ALIGN_PARAGRAPH.RIGHT
    properties = paragraph._p.get_or_add_pPr()
    # Schema order: <w:bidi> precedes these siblings inside <w:pPr>.
    properties.insert_element_before(
        OxmlElement("w:bidi"), "w:adjustRightInd", "w:snapToGrid", "w:spacing", "w:ind", "w:contextualSpacing",
        "w:mirrorIndents", "w:suppressOverlap", "w:jc", "w:textDirection", "w:textAlignment", "w:outlineLvl",
        "w:rPr", "w:sectPr", "w:pPrChange",
    )


def make_html(lang: str, content: Sequence[DocSection] | None = None) -> bytes:
    """An HTML page with <title>, h1/h2, a <th> table, plus a menu and script that must not be indexed."""
    direction = "rtl" if lang == "ar" else "ltr"
    parts = [
        f'<!DOCTYPE html>\n<html lang="{lang}" dir="{direction}"><head><meta charset="utf-8">',
        f"<title>{escape(TITLES[lang])}</title><style>body {{ font-family: sans-serif; }}</style></head><body>",
        '<nav><a href="/">Home</a> | <a href="/cards">Cards menu</a></nav>',
        "<script>var tracking = 'do-not-index';</script>",
    ]
    for section in _content(lang, content):
        parts.append(f"<h{section.level}>{escape(section.heading)}</h{section.level}>")
        parts.extend(f"<p>{escape(text)}</p>" for text in section.paragraphs)
        if section.table:
            head, *body = section.table
            parts.append("<table><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in head) + "</tr></thead>")
            for row in body:
                parts.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts).encode("utf-8")


def make_markdown(lang: str, content: Sequence[DocSection] | None = None) -> bytes:
    """Markdown with a # title, ATX headings one level down, **bold** and a pipe table."""
    lines = [f"# {TITLES[lang]}", ""]
    for section in _content(lang, content):
        lines += ["#" * (section.level + 1) + " " + section.heading, ""]
        for text in section.paragraphs:
            first, _, rest = text.partition(" ")
            lines += [f"**{first}** {rest}", ""]
        if section.table:
            head, *body = section.table
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            lines += ["| " + " | ".join(row) + " |" for row in body]
            lines.append("")
    return "\n".join(lines).encode("utf-8")


def make_text(lang: str, content: Sequence[DocSection] | None = None, *, encoding: str = "utf-8") -> bytes:
    """Plain text: each heading on its own line between a blank line and its paragraph.

    cp1256 has no Arabic-Indic digits (Windows Arabic shapes ASCII digits at display time), so text
    saved in it carries 0-9.
    """
    blocks = []
    for section in _content(lang, content):
        blocks.append(section.heading + "\n" + "\n".join(section.paragraphs))
    text = "\n\n".join(blocks) + "\n"
    if encoding == "cp1256":
        text = text.translate(str.maketrans("٠١٢٣٤٥٦٧٨٩٫", "0123456789."))
    return text.encode(encoding)


# ---------------------------------------------------------------------------------------------------
# Bad files


def truncated_pdf() -> bytes:
    """A download cut off halfway."""
    data = make_pdf("en")
    return data[: len(data) // 2]


def docx_not_zip() -> bytes:
    """What a .docx holds after a text editor has "repaired" it."""
    return b"This was a Word document once, saved by a text editor.\n" * 20


def zip_without_document() -> bytes:
    """A zip that is not a Word document (an .xlsx renamed to .docx has the same shape)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("xl/workbook.xml", "<workbook/>")
    return out.getvalue()


def encrypted_docx() -> bytes:
    """The start of a password-protected Word file: an OLE container with an EncryptedPackage stream.

    Only the parts the loader reads are real (signature and stream name); no library here writes
    encrypted OOXML.
    """
    header = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
    return header + "EncryptedInfo".encode("utf-16-le") + bytes(64) + "EncryptedPackage".encode("utf-16-le")


def random_binary(size_bytes: int = 4096, seed: int = 7) -> bytes:
    """Random bytes, deterministic per seed."""
    return random.Random(seed).randbytes(size_bytes)


def png_bytes() -> bytes:
    """A real PNG image (a photo of a receipt uploaded by mistake)."""
    out = io.BytesIO()
    Image.new("RGB", (32, 32), color=(200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def empty() -> bytes:
    """A zero-byte upload."""
    return b""

