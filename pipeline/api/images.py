"""Images sent to POST /v1/detect: JPEG or PNG, read within limits, with errors that say what
was wrong. The size is read from the file's own header before Pillow parses anything, so a
decompression bomb (a small file that claims 30000 x 30000 pixels) costs nothing."""
from __future__ import annotations

import io
import struct
import warnings

import numpy as np

from pipeline.api.errors import ApiError

FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # JPEG frame headers


def sniff(data: bytes) -> str | None:
    """"jpeg", "png" or None, from the first bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(_PNG_MAGIC):
        return "png"
    return None


def header_size(data: bytes, kind: str) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header or a PNG's IHDR; ApiError 400 when there is none."""
    if kind == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ApiError(400, "bad_image", "the PNG has no IHDR header: the file is damaged or truncated")
        return struct.unpack(">II", data[16:24])
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in _SOF and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ApiError(400, "bad_image", "the JPEG has no frame header: the file is damaged or truncated")


def read_image(data: bytes, max_pixels: int) -> np.ndarray:
    """An RGB [H, W, 3] uint8 array (EXIF orientation applied, as the picture is shown) from a JPEG
    or PNG; ApiError 415 for another format, 413 above `max_pixels`, 400 for a damaged file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ApiError(400, "empty", "the request has no image: send a JPEG or PNG as the body or a form file")
    kind = sniff(data)
    if kind is None:
        raise ApiError(415, "unsupported_type", "not a JPEG or PNG image (checked from its first bytes)")
    width, height = header_size(data, kind)
    if width == 0 or height == 0:
        raise ApiError(400, "bad_image", f"the {kind.upper()} says it is {width}x{height} pixels")
    if width * height > max_pixels:
        raise ApiError(413, "too_many_pixels", f"the image is {width}x{height} = {width * height} pixels; at most "
                       f"{max_pixels} are taken (api.detect.max_pixels): send a smaller image")
    try:
        with warnings.catch_warnings():  # our own pixel limit is checked above
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[kind.upper()]) as image:
                image.load()
                rgb = ImageOps.exif_transpose(image).convert("RGB")
    except UnidentifiedImageError:
        raise ApiError(400, "bad_image", f"cannot decode the {kind.upper()}: its data is damaged") from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise ApiError(400, "bad_image", f"cannot decode the {kind.upper()}: {exc} (damaged or truncated?)") from None
    return np.asarray(rgb)
