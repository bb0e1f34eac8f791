"""PDF extraction off the event loop, with a page cap and a time cap."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime

import pytest
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from core.context.extract import UnsupportedDocument, extract_text
from core.contracts import Attachment, InboundMessage
from core.tracing import current_trace_id, new_turn_span
from tests.core.fakes import MakePipeline


def report_pdf(pages: int, *, lines: int = 60) -> bytes:
    """A PDF of `pages` pages of text (one shared content stream: small to build, slow to read)."""
    writer = PdfWriter()
    font = writer._add_object(DictionaryObject({
        NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
        NameObject("/BaseFont"): NameObject("/Helvetica")}))
    content = DecodedStreamObject()
    content.set_data(" ".join(f"BT /F1 9 Tf 40 {780 - 12 * n} Td (Line {n:03d} of a long report.) Tj ET"
                              for n in range(lines)).encode())
    content_ref = writer._add_object(content)
    for _ in range(pages):
        page = writer.add_blank_page(width=612, height=792)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        page[NameObject("/Contents")] = content_ref
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_pdf_over_the_page_cap_is_refused_with_the_numbers() -> None:
    data = report_pdf(5, lines=2)
    assert "Line 001" in extract_text(data, file_name="r.pdf", mime_type="application/pdf", max_pdf_pages=5)
    with pytest.raises(UnsupportedDocument, match="has 5 pages and I read at most 4"):
        extract_text(data, file_name="r.pdf", mime_type="application/pdf", max_pdf_pages=4)


def test_a_pdf_over_the_time_cap_is_refused() -> None:
    with pytest.raises(UnsupportedDocument, match=r"took over 0 s \(stopped at page 1 of 3\)"):
        extract_text(report_pdf(3, lines=2), file_name="r.pdf", mime_type="application/pdf", max_pdf_seconds=0)


async def test_other_chats_go_on_while_a_big_pdf_is_read(make_pipeline: MakePipeline) -> None:
    """The ingest stage reads a PDF in a worker thread: a coroutine that ticks every 5 ms keeps
    ticking. Extraction on the loop would stop it for the whole read (about a second here)."""
    services, pipeline, llm, channel = await make_pipeline(user_daily_token_budget=0)
    data = report_pdf(200)
    channel.files["big"] = data
    gaps: list[float] = []
    reading = True
    ticking = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while reading:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            ticking.set()

    ticker = asyncio.create_task(tick())
    await ticking.wait()  # ticking before the turn starts
    started = time.perf_counter()
    with new_turn_span(services.tracer, "turn"):
        inbound = InboundMessage(
            update_id=1, trace_id=current_trace_id(), chat_id=100, chat_type="private", user_id=100, text="",
            received_at=datetime.now(UTC),
            attachment=Attachment(file_id="big", file_name="report.pdf", mime_type="application/pdf",
                                  size_bytes=len(data)))
        outcome = await pipeline.run_turn(inbound, channel)
    elapsed = time.perf_counter() - started
    reading = False
    await ticker
    assert outcome == "replied" and "Document report.pdf stored as artifact://" in llm.requests[0].messages[-1].content
    assert elapsed > 0.3, "the PDF was read too fast to show anything: make it bigger"
    assert max(gaps) < elapsed / 2, (max(gaps), elapsed)
