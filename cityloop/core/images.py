"""Bounded image decoding: read an image's header, refuse it with a reason, only then decode pixels.

Every place an image enters cityloop (governance ingest, the center's inbox, the Bento service,
the edge node's selection, the analysis engine) calls `check_image` before any pixel is decoded:
a 24 KB PNG can declare 14000x14000 one-bit pixels, and a decoder asked for them allocates
gigabytes (OpenCV's `imdecode` has no guard below 2^30 pixels; Pillow raises its own
`DecompressionBombError`, which is no `OSError`, above about 179 Mpx). Pillow's `Image.open` is
lazy: it parses the header only, so size, format and mode are known for the price of a few bytes.

One limit, `limits.max_image_pixels` in params.yaml (width x height), is shared by every door.
Formats are PNG and JPEG, the two every stage decodes identically. A file cut short is refused
too where the header shows it without decoding: a PNG whose chunks (CRCs) stop before IEND, a
JPEG with no end-of-image marker after its first scan.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cityloop.core.settings import from_section, load_section

DEFAULT_MAX_PIXELS = 4096 * 4096  # a 16 Mpx camera frame; cityloop's own frames are 192x192
FORMATS = ("JPEG", "PNG")
LIMIT_KEY = "params.yaml limits.max_image_pixels"
_EOI = b"\xff\xd9"  # JPEG end-of-image marker (entropy-coded data never holds it: 0xFF is stuffed)


class ImageRefused(ValueError):
    """An image refused before (or instead of) decoding; `str()` is the reason, for a person."""


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares."""

    width: int
    height: int
    format: str  # "PNG" | "JPEG"
    mode: str  # Pillow's mode: "RGB", "L", "1", "P", ...

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass
class LimitsParams:
    """The `limits:` section of params.yaml: the bounds hostile input meets at every door."""

    max_image_pixels: int = DEFAULT_MAX_PIXELS  # width x height of any image entering (its header is read first)

    @classmethod
    def from_dict(cls, d: dict | None) -> LimitsParams:
        params = from_section(cls, d, "limits")
        if params.max_image_pixels < 1:
            raise ValueError(f"limits.max_image_pixels must be at least 1, not {params.max_image_pixels}")
        return params


def image_limit(root: Path) -> int:
    """The workspace's `limits.max_image_pixels` (the default when params.yaml has no `limits:`)."""
    return load_section(Path(root), "limits", LimitsParams).max_image_pixels


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                formats: tuple[str, ...] = FORMATS) -> ImageHeader:
    """The header of a PNG/JPEG, read without decoding a pixel; ImageRefused saying why when the
    bytes are no such image, are cut short, or declare more than `max_pixels` pixels."""
    if not data:
        raise ImageRefused("empty file: no image")
    fp = io.BytesIO(data)
    try:
        with Image.open(fp, formats=list(formats)) as im:
            header = ImageHeader(im.width, im.height, im.format or "", im.mode)
            after_header = fp.tell()
            if header.format == "PNG":
                im.verify()  # walks the chunks and their CRCs up to IEND; decompresses nothing
    except Image.DecompressionBombError as exc:  # Pillow's own guard (about 179 Mpx) fired first
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1))} px" if found else "too many pixels"
        raise ImageRefused(f"image of {size} is over the limit of {max_pixels} px ({LIMIT_KEY})") from None
    except UnidentifiedImageError:
        raise ImageRefused(f"not a decodable {'/'.join(formats)} image ({len(data)} bytes)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # a header or chunk cut short / corrupt
        raise ImageRefused(f"corrupt or truncated image: {exc}") from None
    if header.width < 1 or header.height < 1:
        raise ImageRefused(f"image declares {header.width}x{header.height} px")
    if header.pixels > max_pixels:
        raise ImageRefused(f"image is {header.width}x{header.height} = {header.pixels} px, over the limit of "
                           f"{max_pixels} px ({LIMIT_KEY})")
    if header.format in ("JPEG", "MPO") and data.find(_EOI, after_header) < 0:
        raise ImageRefused("truncated JPEG: no end-of-image marker after its scan data")
    return header


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """`check_image`, then OpenCV's decode (BGR, as `cv2.imdecode` gives it, with `flags`);
    ImageRefused when the header is refused or OpenCV cannot decode the pixels."""
    check_image(data, max_pixels)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise ImageRefused("corrupt image: its pixels could not be decoded")
    return img
