"""Pictures: the scaling before sending, and OpenAI's tile arithmetic for their tokens."""

from __future__ import annotations

import base64
import io
import random

import pytest
from PIL import Image

from core.context.images import (
    MAX_SIDE,
    UnsupportedImage,
    data_url,
    image_tokens,
    prepare_image,
)
from core.contracts import ChatMessage, ContractViolation, check_message_list


def picture(width: int, height: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    # Noise, like a photo's grain: lossless PNG is large, JPEG much smaller.
    channels = len(mode)
    image = Image.frombytes(mode, (width, height), random.Random(width * height).randbytes(width * height * channels))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@pytest.mark.parametrize(("width", "height", "tokens"), [
    (512, 512, 85 + 170),            # one tile
    (1024, 1024, 85 + 170 * 4),      # shortest side 768 -> 768x768 -> 2x2 tiles
    (2048, 4096, 85 + 170 * 6),      # fit 1024x2048, shortest 768 -> 768x1536 -> 2x3 tiles
    (4096, 8192, 85 + 170 * 6),      # same shape, bigger: the same after the provider's scaling
    (100, 100, 85 + 170),            # small images are not scaled up
    (513, 100, 85 + 170 * 2),        # just over a tile wide
    (1920, 1080, 85 + 170 * 6),      # 1365x768 -> 3x2 tiles
])
def test_image_tokens_follow_openais_tile_rule(width: int, height: int, tokens: int) -> None:
    assert image_tokens(width, height) == tokens


def test_image_tokens_refuse_an_empty_image() -> None:
    with pytest.raises(ValueError, match="positive"):
        image_tokens(0, 10)


def test_a_large_picture_is_scaled_to_the_longest_side_and_sent_as_jpeg() -> None:
    prepared = prepare_image(picture(3000, 1500))
    assert prepared.scaled and (prepared.width, prepared.height) == (MAX_SIDE, 1024)
    assert prepared.media_type == "image/jpeg"
    with Image.open(io.BytesIO(prepared.data)) as image:
        assert image.format == "JPEG" and image.size == (MAX_SIDE, 1024)
    assert prepared.tokens == image_tokens(MAX_SIDE, 1024)


def test_a_small_picture_keeps_its_bytes_unless_jpeg_is_smaller() -> None:
    tiny_png = picture(4, 4)  # a few bytes of PNG: JPEG's headers alone are bigger
    prepared = prepare_image(tiny_png)
    assert not prepared.scaled and prepared.data == tiny_png and prepared.media_type == "image/png"
    photo_png = picture(600, 400)  # a photo's grain: JPEG is smaller than lossless PNG
    prepared = prepare_image(photo_png)
    assert prepared.media_type == "image/jpeg" and len(prepared.data) < len(photo_png)
    assert (prepared.width, prepared.height) == (600, 400)


def test_transparency_is_flattened_when_jpeg_wins() -> None:
    prepared = prepare_image(picture(2200, 1200, mode="RGBA"))
    assert prepared.scaled and max(prepared.width, prepared.height) == MAX_SIDE
    with Image.open(io.BytesIO(prepared.data)) as image:
        assert image.mode in ("RGB", "RGBA", "P")


def test_bytes_that_are_not_a_picture_are_refused() -> None:
    with pytest.raises(UnsupportedImage, match="not a picture"):
        prepare_image(b"%PDF-1.4 not an image")


def test_a_message_with_an_image_becomes_openai_content_parts() -> None:
    url = data_url(b"\x89PNG", "image/png")
    assert url == "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()
    message = ChatMessage(role="user", content="what is this?", images=(url,))
    assert message.to_openai()["content"] == [{"type": "text", "text": "what is this?"},
                                              {"type": "image_url", "image_url": {"url": url}}]
    assert ChatMessage(role="user", content="plain").to_openai()["content"] == "plain"
    # A picture without a caption is not an empty user turn.
    check_message_list([ChatMessage(role="system", content="s"), ChatMessage(role="user", images=(url,))])


def test_only_data_urls_are_accepted_as_images() -> None:
    with pytest.raises(ContractViolation, match="image_is_data_url"):
        ChatMessage(role="user", content="x", images=("https://api.telegram.org/file/bot123:abc/photo.jpg",))
    with pytest.raises(ContractViolation, match="image_is_data_url"):
        ChatMessage(role="assistant", content="x", images=(data_url(b"x", "image/png"),))
