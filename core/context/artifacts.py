"""Content-addressed artifacts: documents, long messages and archives kept out of the prompt.

On SQLite a file lives at `<root>/<sha[:2]>/<sha>` (root is normally DATA_DIR/artifacts),
written to a temp file in the same folder and renamed, so a crash never leaves half a file under
a real name. On PostgreSQL nothing depends on the local disk (a PaaS wipes it, and other
instances cannot see it): the bytes are an `artifact_blobs` row, written in the transaction that
adds the `artifacts` row. Metadata is one `artifacts` row per content and one `artifact_links` row per chat that
stored it: the same bytes are kept once. A chat can only resolve its own links, and another
chat's artifact looks exactly like an unknown one, so refs do not leak between chats.
Text extraction (pypdf for PDF) and summaries live in core/context/extract.py.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import re
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.context.database import ContextDatabase
from core.context.extract import (
    MAX_SUMMARY_CHARS,
    UnsupportedDocument,
    decode_text,
    is_text_type,
    pdf_text,
    summarize,
)
from core.context.tokens import TokenCounter

REF_PREFIX = "artifact://"
REF_HEX_DIGITS = 16
MIN_REF_HEX_DIGITS = 12
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024
MAX_LABEL_CHARS = 200
MAX_SLICE_TOKENS = 2000
KINDS = frozenset({"document", "long_message", "long_answer", "hot_state_archive", "history_archive", "image",
                   "voice"})
_HEX = re.compile(r"[0-9a-f]{12,64}")
_SHA = re.compile(r"[0-9a-f]{64}")
_MEDIA = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


class ArtifactRefError(ValueError):
    """A ref that is malformed, unknown in this chat, or ambiguous."""

    kind = "artifact_ref_invalid"


class ArtifactCorrupt(RuntimeError):
    """The stored file is missing or does not match its hash."""

    kind = "artifact_corrupt"


@dataclass(frozen=True)
class ArtifactInfo:
    """An artifact as one chat sees it. `created`: the content was new to the store;
    `linked`: the link was new to this chat (both False when read back)."""

    sha256: str
    media_type: str
    size_bytes: int
    tokens: int | None
    label: str
    summary: str
    kind: str
    created_at: str
    created: bool = False
    linked: bool = False
    ref: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ref", REF_PREFIX + self.sha256[:REF_HEX_DIGITS])


@dataclass(frozen=True)
class TextSlice:
    text: str
    offset: int
    next_offset: int | None
    total_tokens: int


def parse_ref(ref: str) -> str:
    """The lowercase hex of `artifact://<hex>` or bare `<hex>` (12..64 digits)."""
    text = ref.strip() if isinstance(ref, str) else ""
    if text.lower().startswith(REF_PREFIX):
        text = text[len(REF_PREFIX):]
    text = text.lower()
    if not _HEX.fullmatch(text):
        shown = ref[:80] if isinstance(ref, str) else type(ref).__name__
        raise ArtifactRefError(f"invalid artifact reference {shown!r}: expected {REF_PREFIX} followed by"
                               f" {MIN_REF_HEX_DIGITS} to 64 hex digits")
    return text


_SELECT = ("SELECT a.sha256, a.media_type, a.size_bytes, a.tokens, l.label, l.summary, l.kind, l.created_at"
           " FROM artifact_links l JOIN artifacts a ON a.sha256 = l.sha256")


class ArtifactStore:
    """Files under `root`, rows in `artifacts` / `artifact_links`; parameterised SQL only."""

    def __init__(self, db: ContextDatabase, root: Path, *, counter: TokenCounter) -> None:
        self.db, self.root, self.counter = db, Path(root), counter
        self._files = db.dialect == "sqlite"  # PostgreSQL: the bytes live in artifact_blobs

    def path_for(self, sha256: str) -> Path:
        if not _SHA.fullmatch(sha256):
            raise ValueError(f"not a sha256: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256

    async def put(self, *, content: bytes, media_type: str, chat_id: int, user_id: int | None, label: str,
            summary: str, kind: str, trace_id: str | None, now: str) -> ArtifactInfo:
        """Store `content` once and link it to `chat_id` (the first link's label/summary win)."""
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}: use one of {sorted(KINDS)}")
        if len(content) > MAX_ARTIFACT_BYTES:
            raise ValueError(f"artifact of {len(content)} bytes exceeds {MAX_ARTIFACT_BYTES}")
        media_type = media_type.strip().lower()
        if not _MEDIA.fullmatch(media_type):
            raise ValueError(f"invalid media type {media_type[:80]!r}")
        sha256 = hashlib.sha256(content).hexdigest()
        if self._files:
            self._write_file(sha256, content)
        known = await self.db.fetchone("SELECT 1 FROM artifacts WHERE sha256 = ?", [sha256])
        label = " ".join(label.split())[:MAX_LABEL_CHARS] or kind
        summary = summarize(summary, max_chars=MAX_SUMMARY_CHARS)
        created = False
        if known is None:
            try:
                tokens: int | None = self.counter.count(self._text_of(content, media_type))
            except UnsupportedDocument:
                tokens = None  # binary content: stored, but has no text to page through
            async with self.db.transaction():
                created = await self._insert_content(sha256, content, media_type, tokens, now)
                linked = await self._link(sha256, chat_id, user_id, label, summary, kind, trace_id, now)
        else:
            linked = await self._link(sha256, chat_id, user_id, label, summary, kind, trace_id, now)
        row = await self.db.fetchone(_SELECT + " WHERE l.chat_id = ? AND l.sha256 = ?", [chat_id, sha256])
        assert row is not None  # linked just now, or before
        return replace(ArtifactInfo(*row), created=created, linked=linked)

    async def _insert_content(self, sha256: str, content: bytes, media_type: str, tokens: int | None,
                              now: str) -> bool:
        created = await self.db.execute(
            "INSERT INTO artifacts(sha256, media_type, size_bytes, tokens, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", [sha256, media_type, len(content), tokens, now]) == 1
        if not self._files:
            await self.db.execute("INSERT INTO artifact_blobs(sha256, data) VALUES (?, ?) ON CONFLICT DO NOTHING",
                                  [sha256, content])
        return created

    async def _link(self, sha256: str, chat_id: int, user_id: int | None, label: str, summary: str, kind: str,
                    trace_id: str | None, now: str) -> bool:
        return await self.db.execute(
            "INSERT INTO artifact_links(sha256, chat_id, user_id, label, summary, kind, trace_id,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [sha256, chat_id, user_id, label, summary, kind, trace_id, now]) == 1

    def _write_file(self, sha256: str, content: bytes) -> None:
        path = self.path_for(sha256)
        if path.is_file() and path.stat().st_size == len(content):
            return  # same name = same content: nothing to write
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    @staticmethod
    def _text_of(content: bytes, media_type: str) -> str:
        """Stored text, without the upload checks of `extract_text` (size, emptiness)."""
        if media_type == "application/pdf":
            return pdf_text(content)
        if is_text_type("", media_type):
            return decode_text(content)
        raise UnsupportedDocument(f"a {media_type} artifact has no text to read")

    async def resolve(self, chat_id: int, ref: str) -> ArtifactInfo:
        """This chat's artifact for a ref; ArtifactRefError if invalid, unknown or ambiguous."""
        prefix = parse_ref(ref)
        # Hex digits sort below "g": this range is exactly "starts with prefix" and uses the key.
        rows = await self.db.fetchall(
            _SELECT + " WHERE l.chat_id = ? AND l.sha256 >= ? AND l.sha256 < ? ORDER BY l.sha256 LIMIT 2",
            [chat_id, prefix, prefix + "g"])
        if not rows:
            raise ArtifactRefError(f"no artifact {REF_PREFIX}{prefix} in this chat")
        if len(rows) > 1:
            raise ArtifactRefError(f"{REF_PREFIX}{prefix} matches several artifacts in this chat:"
                                   " give more hex digits")
        return ArtifactInfo(*rows[0])

    async def read_bytes(self, info: ArtifactInfo) -> bytes:
        if self._files:
            try:
                data = self.path_for(info.sha256).read_bytes()
            except FileNotFoundError:
                raise ArtifactCorrupt(f"the file of {info.ref} is missing") from None
        else:
            row = await self.db.fetchone("SELECT data FROM artifact_blobs WHERE sha256 = ?", [info.sha256])
            if row is None:
                raise ArtifactCorrupt(f"the bytes of {info.ref} are missing")
            data = bytes(row[0])
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise ArtifactCorrupt(f"the file of {info.ref} does not match its hash")
        return data

    async def read_text(self, info: ArtifactInfo) -> str:
        return self._text_of(await self.read_bytes(info), info.media_type)

    async def read_text_slice(self, info: ArtifactInfo, *, offset_tokens: int, max_tokens: int,
                        limit_tokens: int = MAX_SLICE_TOKENS) -> TextSlice:
        """At most `min(max_tokens, limit_tokens)` tokens of the text from `offset_tokens`;
        `next_offset` is where the next slice starts, None at the end."""
        if offset_tokens < 0 or max_tokens < 1:
            raise ValueError("offset_tokens must be >= 0 and max_tokens >= 1")
        max_tokens = min(max_tokens, limit_tokens)
        encoding = self.counter.encoding
        tokens = encoding.encode(await self.read_text(info), disallowed_special=())
        total = len(tokens)
        start = min(offset_tokens, total)
        end = min(start + max_tokens, total)
        # Do not end inside a multi-byte character: the next slice would start with half of it.
        for cut in range(end, max(start, end - 3), -1):
            try:
                encoding.decode_bytes(tokens[start:cut]).decode("utf-8")
            except UnicodeDecodeError:
                continue
            end = cut
            break
        text = encoding.decode(tokens[start:end])
        # Re-tokenizing decoded text can rarely cost more than the slice: shrink until it fits.
        while end - start > 1 and self.counter.count(text) > max_tokens:
            end -= 1
            text = encoding.decode(tokens[start:end])
        return TextSlice(text=text, offset=start, next_offset=end if end < total else None, total_tokens=total)

    async def latest(self, chat_id: int, kind: str) -> ArtifactInfo | None:
        """This chat's most recently linked artifact of `kind`, if any."""
        # SQLite's rowid is the link order; PostgreSQL has none: the link's time (milliseconds).
        order = "l.rowid DESC" if self.db.dialect == "sqlite" else "l.created_at DESC, l.sha256 DESC"
        row = await self.db.fetchone(_SELECT + f" WHERE l.chat_id = ? AND l.kind = ? ORDER BY {order} LIMIT 1",
                                     [chat_id, kind])
        return ArtifactInfo(*row) if row else None

    async def find_linked(self, chat_id: int, kind: str, label: str) -> ArtifactInfo | None:
        """This chat's artifact of `kind` linked under exactly `label` (e.g. a voice note's
        Telegram file, so a DLQ replay transcribes the stored sound instead of downloading it)."""
        row = await self.db.fetchone(_SELECT + " WHERE l.chat_id = ? AND l.kind = ? AND l.label = ? LIMIT 1",
                                     [chat_id, kind, label[:MAX_LABEL_CHARS]])
        return ArtifactInfo(*row) if row else None

    async def list(self, chat_id: int, limit: int = 50) -> builtins.list[ArtifactInfo]:
        """This chat's artifacts, newest first."""
        rows = await self.db.fetchall(_SELECT + " WHERE l.chat_id = ? ORDER BY l.created_at DESC, l.sha256 LIMIT ?",
                               [chat_id, max(0, limit)])
        return [ArtifactInfo(*row) for row in rows]
