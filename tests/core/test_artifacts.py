"""Artifacts: content addressing, dedupe, ref resolution, paging, text extraction, summaries."""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from core.context.artifacts import ArtifactCorrupt, ArtifactRefError, ArtifactStore
from core.context.extract import MAX_DOCUMENT_BYTES, UnsupportedDocument, extract_text, summarize
from core.context.tokens import counter_for_model
from core.store import open_sqlite

COUNTER = counter_for_model("gpt-4o-mini")
NOW = "2025-01-01T00:00:00.000+00:00"


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(open_sqlite(":memory:"), tmp_path / "artifacts", counter=COUNTER)


async def put(store: ArtifactStore, content: bytes, *, chat_id: int = 1, media_type: str = "text/plain",
        label: str = "notes.txt", now: str = NOW):
    return await store.put(content=content, media_type=media_type, chat_id=chat_id, user_id=7, label=label,
                     summary=summarize(content.decode("utf-8", "replace")), kind="document", trace_id=None, now=now)


def files(store: ArtifactStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


async def test_same_content_is_stored_once(store: ArtifactStore) -> None:
    first = await put(store, b"hello world")
    again = await put(store, b"hello world", label="other name")
    sha = hashlib.sha256(b"hello world").hexdigest()
    assert first.created and first.linked and not again.created and not again.linked
    assert first.sha256 == sha and first.ref == "artifact://" + sha[:16] and again.label == "notes.txt"
    assert files(store) == [store.root / sha[:2] / sha]
    assert store.db.conn.execute("SELECT COUNT(*) FROM artifacts").fetchone()[0] == 1
    other = await put(store, b"hello world", chat_id=2)
    assert not other.created and other.linked
    assert store.db.conn.execute("SELECT COUNT(*) FROM artifact_links").fetchone()[0] == 2
    assert len(files(store)) == 1 and first.tokens == COUNTER.count("hello world")
    assert await store.read_bytes(first) == b"hello world"


async def test_resolve_forms_and_refusals(store: ArtifactStore) -> None:
    info = await put(store, b"some document text")
    for ref in (info.ref, info.sha256, info.sha256[:12], "ARTIFACT://" + info.sha256[:12].upper(), f" {info.ref} "):
        assert (await store.resolve(1, ref)).sha256 == info.sha256
    for bad in ("artifact://" + info.sha256[:11], "artifact://xyz123456789abc", "", "artifact://", "../../etc/passwd",
                "artifact://" + "0" * 65, info.sha256[:6] + "-" + info.sha256[7:14]):
        with pytest.raises(ArtifactRefError, match="invalid artifact reference"):
            await store.resolve(1, bad)
    with pytest.raises(ArtifactRefError) as other_chat:
        await store.resolve(2, info.ref)
    unknown = "0" * 16 if not info.sha256.startswith("0" * 16) else "1" * 16
    with pytest.raises(ArtifactRefError) as not_there:
        await store.resolve(1, unknown)
    # Another chat's artifact reads exactly like an unknown one.
    assert str(other_chat.value) == str(not_there.value).replace(unknown, info.sha256[:16])


async def test_ambiguous_prefix(store: ArtifactStore) -> None:
    prefix = "abcdef123456"
    for tail in ("0", "1"):
        sha = prefix + tail * 52
        store.db.conn.execute("INSERT INTO artifacts(sha256, media_type, size_bytes, tokens, created_at)"
                         " VALUES (?, 'text/plain', 1, 1, ?)", [sha, NOW])
        store.db.conn.execute("INSERT INTO artifact_links(sha256, chat_id, user_id, label, summary, kind, trace_id,"
                         " created_at) VALUES (?, 1, 1, 'x', 'x', 'document', NULL, ?)", [sha, NOW])
    with pytest.raises(ArtifactRefError, match="several"):
        await store.resolve(1, "artifact://" + prefix)
    assert (await store.resolve(1, "artifact://" + prefix + "1")).sha256 == prefix + "1" * 52
    with pytest.raises(ArtifactRefError, match="no artifact"):
        await store.resolve(2, prefix)


async def test_list_read_and_corruption(store: ArtifactStore) -> None:
    a = await put(store, b"first", now="2025-01-01T00:00:00")
    b = await put(store, b"second", now="2025-01-02T00:00:00")
    assert [i.sha256 for i in await store.list(1)] == [b.sha256, a.sha256] and await store.list(2) == []
    store.root.joinpath(a.sha256[:2], a.sha256).write_bytes(b"tampered")
    with pytest.raises(ArtifactCorrupt):
        await store.read_bytes(a)
    with pytest.raises(ValueError):
        await store.put(content=b"x", media_type="text/plain", chat_id=1, user_id=None, label="x", summary="x",
                  kind="bogus", trace_id=None, now=NOW)
    binary = await put(store, bytes(range(256)), media_type="application/octet-stream")
    assert binary.tokens is None
    with pytest.raises(UnsupportedDocument):
        await store.read_text_slice(binary, offset_tokens=0, max_tokens=10)


@pytest.mark.parametrize("text", [
    " ".join(f"sentence {i} of a long document." for i in range(900)),
    "日本語のテキスト、絵文字 🎉🧪 と العربية mixed. " * 150,
])
async def test_read_text_slice_is_bounded_and_pages_to_the_end(store: ArtifactStore, text: str) -> None:
    info = await put(store, text.encode())
    pieces, offset, seen = [], 0, 0
    while offset is not None:
        part = await store.read_text_slice(info, offset_tokens=offset, max_tokens=700)
        assert part.offset == offset and part.total_tokens == info.tokens
        assert COUNTER.count(part.text) <= 700 and part.text
        pieces.append(part.text)
        offset, seen = part.next_offset, seen + 1
    assert "".join(pieces) == text and seen >= 2
    capped = await store.read_text_slice(info, offset_tokens=0, max_tokens=50_000)
    assert COUNTER.count(capped.text) <= 2000 and capped.next_offset is not None
    end = await store.read_text_slice(info, offset_tokens=10**9, max_tokens=10)
    assert end.text == "" and end.next_offset is None
    with pytest.raises(ValueError):
        await store.read_text_slice(info, offset_tokens=-1, max_tokens=10)


def tiny_pdf(text: str) -> bytes:
    writer = PdfWriter()
    page = writer.add_blank_page(width=612, height=792)
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})})
    content = DecodedStreamObject()
    content.set_data(f"BT /F1 24 Tf 72 700 Td ({text}) Tj ET".encode())
    page[NameObject("/Contents")] = writer._add_object(content)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_extract_text_formats() -> None:
    assert extract_text(b"# Title\nbody", file_name="a.md", mime_type="text/markdown") == "# Title\nbody"
    assert extract_text(codecs.BOM_UTF8 + "héllo".encode(), file_name="a.txt", mime_type="text/plain") == "héllo"
    assert extract_text(codecs.BOM_UTF16_LE + "héllo".encode("utf-16-le"), file_name="a.txt",
                        mime_type="text/plain") == "héllo"
    assert extract_text("plain utf16 text".encode("utf-16-le"), file_name="a.txt", mime_type="") == "plain utf16 text"
    data = json.dumps({"a": [1, 2]}).encode()
    assert json.loads(extract_text(data, file_name="x.json", mime_type="application/json")) == {"a": [1, 2]}
    assert extract_text(b"a,b\n1,2\n", file_name="t.csv", mime_type="text/csv") == "a,b\n1,2\n"
    assert extract_text(b"def f(): pass\n", file_name="m.py", mime_type="application/octet-stream").startswith("def")
    assert "Hello from a PDF" in extract_text(tiny_pdf("Hello from a PDF"), file_name="r.pdf",
                                              mime_type="application/pdf")


def test_extract_text_refusals() -> None:
    junk = random.Random(1).randbytes(4096)
    for data, name, mime in [(junk, "a.txt", "text/plain"), (junk, "blob", "application/octet-stream"),
                             (b"%PDF-1.7 broken beyond repair", "r.pdf", "application/pdf"),
                             (b"\x89PNG\r\n\x1a\n" + junk, "p.png", "image/png"), (b"   \n", "e.txt", "text/plain"),
                             (b"a\x00b\x00\x00c" * 10, "n.txt", "text/plain")]:
        with pytest.raises(UnsupportedDocument):
            extract_text(data, file_name=name, mime_type=mime)
    with pytest.raises(UnsupportedDocument, match="limit"):
        extract_text(b"x" * (MAX_DOCUMENT_BYTES + 1), file_name="big.txt", mime_type="text/plain")
    with pytest.raises(UnsupportedDocument, match="PDF"):
        extract_text(b"not a pdf at all", file_name="r.pdf", mime_type="application/pdf")


def test_summarize_examples() -> None:
    text = "First sentence here.  Second one!\n\nThird line without end " + "word " * 200
    assert summarize(text, max_chars=40) == "First sentence here. Second one!"
    assert summarize("  a\n b  ") == "a b"
    long_word = summarize("x" * 1000, max_chars=100)
    assert len(long_word) == 100 and long_word.endswith("…")


@given(text=st.text(max_size=2000), max_chars=st.integers(1, 600))
def test_summarize_is_bounded_and_deterministic(text: str, max_chars: int) -> None:
    summary = summarize(text, max_chars=max_chars)
    assert len(summary) <= max_chars and summary == summarize(text, max_chars=max_chars)
    assert "\n" not in summary and summary == summary.strip()
