"""Images for /v1/detect read within limits: sizes from the files' own headers (baseline and
progressive JPEG, PNG) before any decoding, EXIF orientation, and the errors' statuses; tokens
read from Bearer and Basic headers; loopback addresses."""
import base64
import io

import numpy as np
import pytest
from PIL import Image

from pipeline.api.errors import ApiError
from pipeline.api.images import header_size, read_image, sniff
from pipeline.api.server import _offered_token, is_loopback, load_tokens
from pipeline.config import ApiConfig, ConfigError


def encoded(fmt: str, w: int = 70, h: int = 50, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (h, w, 3), np.uint8)).save(out, format=fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize("fmt, options", [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {})])
def test_the_size_comes_from_the_header(fmt, options):
    data = encoded(fmt, **options)
    assert header_size(data, sniff(data)) == (70, 50)
    assert read_image(data, 70 * 50).shape == (50, 70, 3)
    with pytest.raises(ApiError) as err:
        read_image(data, 70 * 50 - 1)
    assert err.value.status == 413 and "70x50" in err.value.message


def test_exif_orientation_is_applied_as_the_picture_is_shown():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    out = io.BytesIO()
    Image.fromarray(np.zeros((50, 70, 3), np.uint8)).save(out, format="JPEG", exif=exif)
    assert read_image(out.getvalue(), 10_000).shape == (70, 50, 3)


@pytest.mark.parametrize("data, status", [
    (b"", 400), (b"BM" + b"\0" * 60, 415), (b"\xff\xd8\xff\xdb" + b"\0" * 10, 400), (b"\x89PNG\r\n\x1a\n", 400),
])
def test_damaged_or_foreign_bytes_get_a_status_that_says_why(data, status):
    with pytest.raises(ApiError) as err:
        read_image(data, 10**7)
    assert err.value.status == status and err.value.message


def test_tokens_come_from_bearer_or_basic_and_nothing_else():
    assert _offered_token("Bearer abc") == b"abc" and _offered_token("bearer  abc ") == b"abc"
    assert _offered_token("Basic " + base64.b64encode(b"anyone:tok").decode()) == b"tok"
    for header in ("", "abc", "Basic !!", "Basic " + base64.b64encode(b"user-only").decode(), "Digest x"):
        assert _offered_token(header) is None, header


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com"))


def test_short_tokens_are_refused_saying_how_to_make_one(tmp_path):
    assert load_tokens(ApiConfig(), {"RTSP_PIPELINE_API_TOKENS": "x" * 16 + ", " + "y" * 20}) == ["x" * 16, "y" * 20]
    with pytest.raises(ConfigError, match="openssl rand"):
        load_tokens(ApiConfig(), {"RTSP_PIPELINE_API_TOKENS": "change-me"})
    tokens = tmp_path / "tokens"
    tokens.write_text("z" * 32 + "\n\n")
    assert load_tokens(ApiConfig(tokens_file=tokens), {}) == ["z" * 32]
