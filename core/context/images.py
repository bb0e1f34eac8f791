"""Pictures for the model: scaled down, priced by OpenAI's tile rule, and kept out of long prompts.

A photo is scaled to what the model uses (longest side at most MAX_SIDE px) and re-encoded as
JPEG when that is smaller, then stored as an `image` artifact. The user's turn carries a marker
line naming its ref (`[Image artifact://… …]`); while the message is one of the last
IMAGE_HISTORY_TURNS user turns, the image itself rides along as a `data:` URL content part
(never a Telegram file URL: it carries the bot token). Older turns keep only the marker and the
caption, and the model can bring an image back for one turn with `view_image(ref)`.

Image tokens follow OpenAI's published rule: fit in 2048x2048, then shortest side at most
768 px, then 85 tokens plus 170 per 512 px tile. They are counted as prompt (input) tokens.
"""

from __future__ import annotations

import base64
import io
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.context.artifacts import ArtifactCorrupt, ArtifactRefError

# Pillow is imported inside the functions that use it: with the first picture, not at start
# (about 2 MB resident that a bot nobody sends pictures to never needs).
if TYPE_CHECKING:
    from PIL import Image

    from core.context.artifacts import ArtifactInfo, ArtifactStore
    from core.context.turn_view import StoredMessage

IMAGE_KIND = "image"
MAX_SIDE = 2048  # what we send: longest side at most this
PROVIDER_FIT = 2048  # the provider first fits the image in a square of this side
PROVIDER_SHORT_SIDE = 768  # ...then scales the shortest side down to this
TILE_PX = 512
BASE_TOKENS = 85
TILE_TOKENS = 170
JPEG_QUALITY = 85
MAX_PIXELS = 50_000_000  # a bigger picture is refused (decompression bomb guard)
MARKER = re.compile(r"\[Image (artifact://[0-9a-f]{12,64})")


class UnsupportedImage(ValueError):
    """Bytes Pillow cannot read as a picture, or a picture too large to open safely."""


@dataclass(frozen=True)
class PreparedImage:
    data: bytes
    media_type: str
    width: int
    height: int
    scaled: bool

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)


def image_tokens(width: int, height: int) -> int:
    """Prompt tokens of a width x height image under OpenAI's rule (85 + 170 per 512 px tile)."""
    if width < 1 or height < 1:
        raise ValueError(f"an image needs positive sides, got {width}x{height}")
    w, h = float(width), float(height)
    fit = min(1.0, PROVIDER_FIT / max(w, h))
    w, h = w * fit, h * fit
    short = min(1.0, PROVIDER_SHORT_SIDE / min(w, h))
    w, h = w * short, h * short
    return BASE_TOKENS + TILE_TOKENS * math.ceil(w / TILE_PX) * math.ceil(h / TILE_PX)


def prepare_image(data: bytes) -> PreparedImage:
    """The picture as the model gets it: longest side <= MAX_SIDE, JPEG when that is smaller."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            original_format = image.format
            if image.width * image.height > MAX_PIXELS:
                raise UnsupportedImage(f"the picture is {image.width}x{image.height}: too large to open")
            image.load()
    except UnsupportedImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise UnsupportedImage(f"not a picture I can read ({type(error).__name__})") from None
    image = ImageOps.exif_transpose(image)
    scaled = max(image.size) > MAX_SIDE
    if scaled:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    if not scaled and original_format in ("JPEG", "PNG", "WEBP", "GIF"):
        best, media_type = data, f"image/{original_format.lower()}"
    else:
        best, media_type = _encode(image, "PNG"), "image/png"
    jpeg = _encode(image, "JPEG")
    if len(jpeg) < len(best):
        best, media_type = jpeg, "image/jpeg"
    return PreparedImage(best, media_type, image.width, image.height, scaled)


def _encode(image: Image.Image, fmt: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    if fmt == "JPEG":
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        elif image.mode != "RGB":
            image = image.convert("RGB")
        image.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        image.save(out, fmt, optimize=True)
    return out.getvalue()


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def url_tokens(url: str) -> int:
    """Prompt tokens of an image sent as a data: URL (0 when it cannot be read as one)."""
    from PIL import Image, UnidentifiedImageError

    try:
        payload = base64.b64decode(url.partition(",")[2], validate=False)
        with Image.open(io.BytesIO(payload)) as image:
            return image_tokens(*image.size)
    except (UnidentifiedImageError, OSError, ValueError):
        return 0


def marker_line(info: ArtifactInfo, prepared: PreparedImage, *, vision: bool) -> str:
    """The line the user's turn carries for an image (what history keeps once it leaves)."""
    size = f"{prepared.width}x{prepared.height}"
    if vision:
        return (f"[Image {info.ref} ({size}) attached to this message. Once it is no longer attached, "
                f"look at it again with view_image.]")
    return f"[Image {info.ref} ({size}) stored; the model cannot see images.]"


@dataclass(frozen=True)
class LoadedImage:
    ref: str
    url: str
    tokens: int


async def load_image(artifacts: ArtifactStore, chat_id: int, ref: str) -> LoadedImage:
    """An image artifact of this chat as a data: URL with its tokens; ArtifactRefError when the
    ref is not an image of this chat, ArtifactCorrupt when its file is damaged."""
    from PIL import Image, UnidentifiedImageError

    info = await artifacts.resolve(chat_id, ref)
    if not info.media_type.startswith("image/"):
        raise ArtifactRefError(f"{info.ref} is a {info.media_type}, not an image")
    data = await artifacts.read_bytes(info)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        raise ArtifactCorrupt(f"{info.ref} is not a readable picture ({type(error).__name__})") from None
    return LoadedImage(info.ref, data_url(data, info.media_type), image_tokens(width, height))


async def images_in(artifacts: ArtifactStore, chat_id: int, text: str) -> list[LoadedImage]:
    """The images a turn's text names by marker (ones that cannot be loaded are left out)."""
    loaded = []
    for ref in MARKER.findall(text):
        try:
            loaded.append(await load_image(artifacts, chat_id, ref))
        except (ArtifactRefError, ArtifactCorrupt):
            continue  # the marker stays: the model reads the ref and can ask with view_image
    return loaded


def riding_messages(candidates: Sequence[StoredMessage], turns: int) -> set[int]:
    """Ids of the history messages whose images still ride along: images in the last `turns`
    user messages (the current message is not in history and always carries its own)."""
    if turns <= 0:
        return set()
    users = [m for m in candidates if m.role == "user"][-turns:]
    return {m.id for m in users if MARKER.search(m.content)}


@dataclass(frozen=True)
class RidingImages:
    """The images this turn's prompt carries: the current message's, and those of recent history."""

    current: tuple[str, ...] = ()
    history: dict[int, tuple[str, ...]] | None = None
    tokens: int = 0

    def for_message(self, message_id: int) -> tuple[str, ...]:
        return (self.history or {}).get(message_id, ())


async def ride_along(artifacts: ArtifactStore, chat_id: int, user_text: str, candidates: Sequence[StoredMessage],
               *, turns: int, vision: bool) -> RidingImages:
    """Load the images of the current message and of the last `turns` user messages of history."""
    if not vision:
        return RidingImages()
    current = await images_in(artifacts, chat_id, user_text)
    history: dict[int, tuple[str, ...]] = {}
    tokens = sum(image.tokens for image in current)
    riding = riding_messages(candidates, turns)
    for message in candidates:
        if message.id in riding:
            loaded = await images_in(artifacts, chat_id, message.content)
            if loaded:
                history[message.id] = tuple(image.url for image in loaded)
                tokens += sum(image.tokens for image in loaded)
    return RidingImages(tuple(image.url for image in current), history, tokens)
