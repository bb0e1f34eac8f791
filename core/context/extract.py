"""Text out of a document: UTF-8/UTF-16 text formats (BOM-aware, junk refused) and PDF (pypdf,
page by page, with a page cap and a time cap), plus the deterministic summary the prompt carries.

Reading a big PDF takes seconds of CPU: coroutines call `extract_text_off_loop`, which runs it
in a worker thread so every other chat goes on meanwhile.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import re
import time

MAX_DOCUMENT_BYTES = 20 * 1024 * 1024  # Telegram's getFile limit for bots
MAX_SUMMARY_CHARS = 500
# A PDF's text is extracted page by page; past these it is refused with a clear reason.
PDF_MAX_PAGES = 2000
PDF_MAX_SECONDS = 60.0
SUPPORTED_TYPES = "plain text, Markdown, source code, JSON, CSV and PDF"
TEXT_MEDIA_TYPES = frozenset({
    "application/json", "application/xml", "application/yaml", "application/x-yaml", "application/toml",
    "application/javascript", "application/x-python", "application/x-sh", "application/sql",
    "application/csv", "application/x-ndjson", "application/x-tex", "application/x-subrip"})
TEXT_EXTENSIONS = frozenset(
    "txt md markdown rst org log csv tsv json jsonl ndjson yaml yml toml ini cfg conf env xml html htm css"
    " py pyi js mjs ts tsx jsx go rs java kt c h cc cpp hpp cs rb php pl swift scala sh bash zsh ps1 sql"
    " r lua dart tex srt vtt diff patch".split())
_CONTROL = re.compile(r"[\x01-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
         (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_JUNK_SAMPLE_CHARS = 1_000_000


class UnsupportedDocument(ValueError):
    """A document we cannot turn into text; the message is fit to show the user."""

    kind = "unsupported_document"


def _is_pdf(data: bytes, file_name: str, mime_type: str) -> bool:
    return mime_type == "application/pdf" or file_name.lower().endswith(".pdf") or data[:5] == b"%PDF-"


def is_text_type(file_name: str, mime_type: str) -> bool:
    extension = file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    return (mime_type.startswith("text/") or mime_type in TEXT_MEDIA_TYPES or mime_type.endswith(("+json", "+xml"))
            or extension in TEXT_EXTENSIONS)


def _guess_utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM: ASCII-heavy text has a NUL in every other byte."""
    sample = data[:4096]
    if len(sample) < 4 or len(sample) % 2:
        return None
    half = len(sample) // 2
    even, odd = sample[0::2].count(0) / half, sample[1::2].count(0) / half
    if odd > 0.4 and even < 0.05:
        return "utf-16-le"
    if even > 0.4 and odd < 0.05:
        return "utf-16-be"
    return None


def decode_text(data: bytes) -> str:
    """Text from bytes (BOM-aware, UTF-8 by default); UnsupportedDocument for binary junk."""
    bom, codec = next(((b, c) for b, c in _BOMS if data.startswith(b)), (b"", _guess_utf16(data) or "utf-8"))
    text = data[len(bom):].decode(codec, errors="replace")
    sample = text[:_JUNK_SAMPLE_CHARS]
    if sample:
        undecodable = sample.count("\ufffd") / len(sample)
        nul = sample.count("\x00") / len(sample)
        control = len(_CONTROL.findall(sample)) / len(sample)
        if undecodable > 0.02 or nul > 0.001 or control > 0.05:
            raise UnsupportedDocument(
                f"this file does not look like text ({undecodable:.0%} undecodable bytes, {control + nul:.0%}"
                f" control characters): I can read {SUPPORTED_TYPES}; save text as UTF-8")
    return text


def pdf_text(data: bytes, *, max_pages: int = PDF_MAX_PAGES, max_seconds: float = PDF_MAX_SECONDS) -> str:
    """The text of every page; refused past `max_pages` pages or `max_seconds` of work (a 20 MB
    PDF can take minutes: the caller runs this in a worker thread, and the cap ends the thread)."""
    deadline = time.monotonic() + max_seconds
    # Imported here, in the worker thread of the first PDF: pypdf brings PIL and fontTools, 11 MB
    # of resident memory that a bot nobody sends a PDF to never needs.
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnsupportedDocument("this PDF is password-protected: send it without the password")
        pages = len(reader.pages)
        if pages > max_pages:
            raise UnsupportedDocument(f"this PDF has {pages} pages and I read at most {max_pages}: "
                                      "send the part that matters")
        texts: list[str] = []
        for number, page in enumerate(reader.pages, start=1):
            if time.monotonic() > deadline:
                raise UnsupportedDocument(f"reading this PDF took over {max_seconds:g} s (stopped at page {number}"
                                          f" of {pages}): send a smaller part of it, or its text")
            texts.append((page.extract_text() or "").strip())
        return "\n\n".join(texts).strip()
    except UnsupportedDocument:
        raise
    except Exception as error:  # pypdf raises many types for damaged files
        raise UnsupportedDocument(f"could not read this PDF ({type(error).__name__}): is it damaged?") from None


def extract_text(data: bytes, *, file_name: str, mime_type: str, max_pdf_pages: int = PDF_MAX_PAGES,
                 max_pdf_seconds: float = PDF_MAX_SECONDS) -> str:
    """The text of a document: UTF-8/UTF-16 text formats and PDF; UnsupportedDocument otherwise.
    CPU-bound for seconds on a big file: call it through `extract_text_off_loop` from a coroutine."""
    mime_type = (mime_type or "").split(";")[0].strip().lower()
    if len(data) > MAX_DOCUMENT_BYTES:
        raise UnsupportedDocument(f"this file is {len(data) / 2**20:.1f} MB: the limit is"
                                  f" {MAX_DOCUMENT_BYTES // 2**20} MB")
    if _is_pdf(data, file_name, mime_type):
        text = pdf_text(data, max_pages=max_pdf_pages, max_seconds=max_pdf_seconds)
        if not text:
            raise UnsupportedDocument("this PDF has no text layer (a scan?): I cannot read images")
        return text
    if is_text_type(file_name, mime_type) or mime_type in ("", "application/octet-stream"):
        text = decode_text(data)
        if not text.strip():
            raise UnsupportedDocument("this file is empty")
        return text
    raise UnsupportedDocument(f"I cannot read {mime_type or 'this kind of file'}: send {SUPPORTED_TYPES}")


async def extract_text_off_loop(data: bytes, *, file_name: str, mime_type: str,
                                max_pdf_pages: int = PDF_MAX_PAGES, max_pdf_seconds: float = PDF_MAX_SECONDS) -> str:
    """`extract_text` in a worker thread: every other chat goes on while a big PDF is read."""
    return await asyncio.to_thread(extract_text, data, file_name=file_name, mime_type=mime_type,
                                   max_pdf_pages=max_pdf_pages, max_pdf_seconds=max_pdf_seconds)


def summarize(text: str, *, max_chars: int = MAX_SUMMARY_CHARS) -> str:
    """A deterministic extractive summary: the first sentences that fit, whitespace collapsed."""
    if max_chars < 1:
        raise ValueError("max_chars must be >= 1")
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    kept = ""
    for sentence in re.split(r"(?<=[.!?…])\s+", flat):
        candidate = f"{kept} {sentence}" if kept else sentence
        if len(candidate) > max_chars:
            break
        kept = candidate
    if len(kept) >= max_chars // 2:
        return kept
    cut = flat[: max_chars - 1]
    space = cut.rfind(" ")
    if space >= max_chars // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"
