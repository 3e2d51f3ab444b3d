"""Safe image intake: bytes or a file in, a loaded 8-bit RGB image out, or an ImageError a seller can read."""
from __future__ import annotations

import codecs
import dataclasses
import hashlib
import io
import logging
import math
import os
import re
import struct
import warnings
from typing import Sequence, TypeVar, Union

import numpy as np
from PIL import Image, ImageFile

from shared.errors import ImageError

logger = logging.getLogger(__name__)

# What decode_image reads: the file's bytes, or a path to it.
ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike]

_ACCEPTED_WORDS = "use JPEG, PNG, WebP or GIF"
_T = TypeVar("_T")

# Longer side / shorter side. A 10000x1 strip is not a product photo, and letterboxing it for the networks
# leaves a zero-pixel side; refusing it up front gives the seller a reason instead of a failed job.
MAX_ASPECT = 20.0

# Longest side we accept, whatever the pixel count: a 1 x 30M strip fits the pixel cap but is
# not a product photo and makes resizers allocate huge rows. JPEG tops out at 65535, WebP at 16383.
MAX_SIDE_PX = 30_000

# Non-image files sellers send by mistake, recognised by their first bytes, so the message can say
# what the file is. (kind, label, prefixes); kind "format" = an image format we don't accept.
_DISALLOWED_SIGNATURES: tuple[tuple[str, str, tuple[bytes, ...]], ...] = (
    ("format", "TIFF", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),
    ("format", "ICO", (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")),
    ("format", "PSD", (b"8BPS",)),
    ("format", "JPEG 2000", (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")),
    ("format", "JPEG XL", (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")),
    ("format", "QOI", (b"qoif",)),
    ("format", "DDS", (b"DDS ",)),
    ("format", "ICNS", (b"icns",)),
    ("format", "EPS", (b"%!PS", b"\xc5\xd0\xd3\xc6")),
    ("file", "a PDF document", (b"%PDF",)),
    ("file", "a ZIP archive (or an Office document)", (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")),
    ("file", "a gzip archive", (b"\x1f\x8b",)),
    ("file", "a RAR archive", (b"Rar!\x1a\x07",)),
    ("file", "a 7-Zip archive", (b"7z\xbc\xaf\x27\x1c",)),
    ("file", "a program", (b"\x7fELF", b"MZ")),
)
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}


def decode_image(data: ImageSource, *, max_bytes: int, max_pixels: int, max_side: int | None = None,
                 max_aspect: float = MAX_ASPECT) -> Image.Image:
    """Decode JPEG/PNG/WebP/GIF (frame 0) bytes or a file into a loaded 8-bit RGB image, else raise ImageError.

    With `max_side`, the result's longer side is at most `max_side` (the networks never need more): JPEG is
    decoded at 1/2, 1/4 or 1/8 scale (draft mode) and every format is reduced before the RGB conversion, so
    cost and memory follow the work size. `info["source_size"]` keeps the upright full size either way, the
    frame shopper rectangles and reported boxes use (see to_work_box / in_source_pixels).
    """
    raw = _read_source(data, max_bytes=max_bytes)
    fmt = _sniff_format(raw)
    _check_container_length(fmt, raw)
    _refuse_truncated_loading()
    try:
        # formats=[fmt]: only the plugin that owns these magic bytes may parse them.
        img = Image.open(io.BytesIO(raw), formats=[fmt])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own process-wide cap fired inside open(), before our check could run (the
        # warning arrives as an exception only under -W error; we never touch the filters).
        raise ImageError(_too_many_pixels_message(fmt, raw, max_pixels, exc)) from exc
    except Exception as exc:  # every Pillow parser failure mode: SyntaxError, OSError, struct.error, ...
        raise ImageError(_header_failure_message(fmt, raw)) from exc
    try:
        _check_dimensions(img.size, max_pixels=_pixel_cap(img.mode, max_pixels), max_aspect=max_aspect,
                          mode=img.mode)
        header_size = img.size
        if max_side is not None and fmt == "JPEG":
            _draft(img, max_side)
        # open() read only the header; this decodes frame 0 (later GIF/WebP frames are never read).
        img.load()
        source_size = _upright_size(img, header_size)
        work = _reduce(img, max_side) if max_side is not None else img
        rgb = _apply_exif_orientation(to_rgb(work), exif_source=img)
        if max_side is not None and max(rgb.size) > max_side:
            rgb = _shrink(rgb, max_side)
        # The caller owns the result; `img` is closed below, which would release shared pixels.
        rgb = rgb.copy() if rgb is img else rgb
        rgb.info["source_size"] = source_size
        return rgb
    except ImageError:
        raise
    except Exception as exc:  # MemoryError included: with the pixel cap in place, it means this image.
        raise ImageError(_load_failure_message(exc)) from exc
    finally:
        img.close()


def decode_cost(raw: bytes) -> int:
    """Pixels a decode_image call will decode, from the header alone (0 when the header is unreadable: then
    decoding fails fast anyway). JPEG counts a quarter: it decodes at reduced scale and only its entropy
    decoding stays full size; PNG, GIF and WebP decode every pixel whatever the work size."""
    try:
        fmt = _sniff_format(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=[fmt]) as img:
                w, h = img.size
    except Exception:  # noqa: BLE001 - any unreadable header: decode_image gives the real message
        return 0
    return w * h // 4 if fmt == "JPEG" else w * h


def source_size(img: Image.Image) -> tuple[int, int]:
    """The upright size of the file an image was decoded from (its own size when it was not reduced)."""
    return tuple(img.info.get("source_size", img.size))  # type: ignore[return-value]


def to_work_box(img: Image.Image, box: Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """A box in source pixels (what clients send) -> pixels of the decoded, possibly reduced, image."""
    if box is None:
        return None
    sx, sy = _scales(img)
    x0, y0, x1, y1 = box
    return x0 / sx, y0 / sy, x1 / sx, y1 / sy


def to_source_box(img: Image.Image, box: Sequence[float]) -> tuple[float, float, float, float]:
    """A box in pixels of the decoded image -> pixels of the source file (what clients and the DB see)."""
    sx, sy = _scales(img)
    x0, y0, x1, y1 = box
    return float(x0) * sx, float(y0) * sy, float(x1) * sx, float(y1) * sy


def in_source_pixels(analysis: _T, img: Image.Image) -> _T:
    """A pipeline result (anything with `roi` and `boxes` of objects with `xyxy`) with every box moved
    from work pixels to source pixels; the same object when the image was not reduced."""
    if _scales(img) == (1.0, 1.0):
        return analysis
    boxes = [dataclasses.replace(b, xyxy=to_source_box(img, b.xyxy)) for b in analysis.boxes]
    return dataclasses.replace(analysis, roi=to_source_box(img, analysis.roi), boxes=boxes)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; alpha (or palette transparency) is composited on white."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _wide_grey_to_rgb(img)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    # 1, L, P, CMYK, YCbCr, LAB, HSV, RGBX: Pillow's converters are correct for these.
    return img.convert("RGB")


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """A trusted local image file (a data folder, the sample catalogue) as loaded 8-bit RGB, upright per EXIF and
    transparency on white: the same pixels serving gets from `decode_image`, without the intake limits. Training,
    evaluation and benchmarks open files through this, so what a model learns from is what it is served."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(_apply_exif_orientation(img))


def image_sha256(data: bytes) -> str:
    """Hex SHA-256 of the raw file bytes (dedup key for listing and query images)."""
    return hashlib.sha256(data).hexdigest()


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as a baseline JPEG (RGB, no metadata); quality 1..95."""
    if not 1 <= quality <= 95:
        # Pillow's docs: above 95 only grows the file.
        raise ValueError(f"quality must be within 1..95, got {quality}")
    rgb = img if img.mode == "RGB" else to_rgb(img)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# steps of decode_image


def _read_source(data: ImageSource, *, max_bytes: int) -> bytes:
    """The file's bytes, refusing empty and oversized input before anything is parsed."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    elif isinstance(data, (str, os.PathLike)):
        try:
            with open(data, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size > max_bytes:
                    raise ImageError(_too_many_bytes_message(size, max_bytes))
                # +1 so a file that grew after fstat is still caught below.
                raw = fh.read(max_bytes + 1)
        except OSError as exc:
            raise ImageError(f"image file could not be read ({exc.strerror or exc})") from exc
    else:
        raise ImageError(f"expected image bytes or a file path, got {type(data).__name__}")
    if not raw:
        raise ImageError("image file is empty (0 bytes)")
    if len(raw) > max_bytes:
        raise ImageError(_too_many_bytes_message(len(raw), max_bytes))
    return raw


def sniff_content_type(raw: bytes) -> str:
    """The MIME type of accepted image bytes (what we serve the stored photo as); ImageError otherwise."""
    return {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}[_sniff_format(raw)]


def _sniff_format(raw: bytes) -> str:
    """JPEG, PNG, GIF or WEBP from the magic bytes (the only Pillow plugins we let parse); else say what it is."""
    if raw.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    raise ImageError(_describe_unaccepted(raw))


def _describe_unaccepted(raw: bytes) -> str:
    """A seller-facing sentence naming what a non-accepted file is."""
    # BMP's magic is only "BM"; the reserved zero bytes keep text like "BMX bikes" from matching.
    if raw[:2] == b"BM" and len(raw) >= 14 and raw[6:10] == b"\x00\x00\x00\x00":
        return f"format BMP is not accepted; {_ACCEPTED_WORDS}"
    if raw[4:8] == b"ftyp":
        brand = raw[8:12]
        if brand in _HEIF_BRANDS:
            return f"format HEIC is not accepted; {_ACCEPTED_WORDS} (phones can export as JPEG)"
        if brand in _AVIF_BRANDS:
            return f"format AVIF is not accepted; {_ACCEPTED_WORDS}"
        return f"file is a video, not an image; {_ACCEPTED_WORDS}"
    if raw[:4] == b"RIFF":
        return f"file is audio or video (RIFF), not an image; {_ACCEPTED_WORDS}"
    if len(raw) >= 3 and raw[:1] == b"P" and raw[1:2] in b"1234567" and raw[2:3] in b" \t\r\n":
        return f"format PPM/PGM is not accepted; {_ACCEPTED_WORDS}"
    for kind, label, prefixes in _DISALLOWED_SIGNATURES:
        if raw.startswith(prefixes):
            if kind == "format":
                return f"format {label} is not accepted; {_ACCEPTED_WORDS}"
            return f"file is {label}, not an image; {_ACCEPTED_WORDS}"
    text_kind = _text_kind(raw[:4096])
    if text_kind is not None:
        return f"file is {text_kind}, not an image; {_ACCEPTED_WORDS}"
    return f"file is not a recognised image; {_ACCEPTED_WORDS}"


def _check_container_length(fmt: str, raw: bytes) -> None:
    """WebP states its own length up front; libwebp reports a short file only as 'could not create decoder'."""
    if fmt == "WEBP" and len(raw) >= 12:
        (riff_size,) = struct.unpack("<I", raw[4:8])
        if 8 + riff_size > len(raw):
            raise ImageError("image is truncated (the file ends before the picture does); upload it again")


def _text_kind(head: bytes) -> str | None:
    """'an SVG drawing' / 'an HTML page' / 'text' when the head looks like text, else None."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n\x0c").lower()
    if stripped.startswith(b"<"):
        if b"<svg" in stripped:
            return "an SVG drawing (vector images are not accepted)"
        if b"<html" in stripped or stripped.startswith(b"<!doctype html") or b"<body" in stripped:
            return "an HTML page (a web page, not its picture)"
        return "an XML or HTML document"
    try:
        # final=False: the 4 KB cut may split a multi-byte character.
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    # Control characters other than whitespace appear early in every binary format.
    if all(ch >= " " or ch in "\t\n\r\x0c" for ch in text) and "\x7f" not in text:
        return "text"
    return None


def _refuse_truncated_loading() -> None:
    """Truncated files must fail; if some other code turned Pillow's process-wide override on, turn it off."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; resetting it so truncated images fail")
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _check_dimensions(size: tuple[int, int], *, max_pixels: int, max_aspect: float = MAX_ASPECT,
                      mode: str = "RGB") -> None:
    """Refuse zero, overlong, too-many-pixel or too-elongated sizes read from the header, before decoding."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has invalid dimensions {width}x{height}")
    if width * height > max_pixels:
        wide = f" ({_MODE_BYTES[mode]} bytes per pixel in mode {mode})" if _MODE_BYTES.get(mode, 3) > 3 else ""
        raise ImageError(
            f"image is {width}x{height} = {_fmt_pixels(width * height)}, more than the {_fmt_pixels(max_pixels)} "
            f"limit{wide}"
        )
    if max(width, height) > MAX_SIDE_PX:
        raise ImageError(
            f"image is {width}x{height}; sides longer than {MAX_SIDE_PX:,} pixels are not accepted"
        )
    if max(width, height) > max_aspect * min(width, height):
        raise ImageError(
            f"image is {width}x{height}; its longer side may be at most {max_aspect:g} times its shorter side"
        )


# Bytes per decoded pixel by Pillow mode. The pixel cap is set for 3-byte RGB; wider rasters (alpha,
# 16/32-bit grey, CMYK) cost more memory per pixel, so their cap shrinks in proportion.
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2,
               "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4}


def _pixel_cap(mode: str, max_pixels: int) -> int:
    """The pixel cap for a mode: the same decode memory as max_pixels of RGB, never more pixels."""
    return min(max_pixels, max_pixels * 3 // _MODE_BYTES.get(mode, 3))


def _upright_size(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """The header size as a browser shows it: EXIF orientations 5-8 swap width and height (read after load:
    PNG may keep its EXIF after the pixels)."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # damaged EXIF is ignored, as in _apply_exif_orientation
        orientation = 1
    w, h = size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _draft(img: Image.Image, max_side: int) -> None:
    """Ask libjpeg to decode at the smallest 1/2, 1/4 or 1/8 scale that still covers max_side."""
    w, h = img.size
    scale = max_side / max(w, h)
    if scale < 1:
        try:
            img.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        except Exception:  # drafting is an optimisation; the full decode below still works
            logger.info("JPEG draft mode refused; decoding at full size")


def _reduce(img: Image.Image, max_side: int) -> Image.Image:
    """Integer box-reduce (cheap, in the file's own mode, before any RGB conversion) to under 2 x max_side."""
    factor = max(img.size) // max_side
    if factor < 2:
        return img
    if img.mode in ("1", "P", "PA", "CMYK", "I;16", "I;16L", "I;16B", "I;16N"):
        # reduce() does not take these; convert at full size (within the pixel cap, which counts these modes).
        img = to_rgb(img)
    return img.reduce(factor)


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Resize the (already reduced) RGB image so its longer side is exactly max_side."""
    w, h = img.size
    scale = max_side / max(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)


def _apply_exif_orientation(img: Image.Image, *, exif_source: Image.Image | None = None) -> Image.Image:
    """Rotate/flip per EXIF Orientation (read from `exif_source`, the opened file, when `img` is derived from
    it); a damaged EXIF block is ignored rather than failing a good picture."""
    src = exif_source if exif_source is not None else img
    try:
        orientation = src.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF (struct.error, KeyError, ...): pixels are still fine.
        logger.info("ignoring unreadable EXIF orientation")
        return img
    method = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}.get(orientation)
    return img.transpose(method) if method is not None else img


def _scales(img: Image.Image) -> tuple[float, float]:
    """(source width / work width, source height / work height)."""
    sw, sh = source_size(img)
    return sw / img.width, sh / img.height


def _wide_grey_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit grey (PNG bit depth 16 opens as I;16 or I) -> 8-bit by keeping the high byte, not by clipping."""
    arr = np.asarray(img)
    if img.mode == "F":
        grey8 = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        # Pillow's own I -> L conversion clips at 255, which would turn most 16-bit images white.
        grey8 = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(grey8)).convert("RGB")


# --------------------------------------------------------------------------------------------
# messages


def _header_failure_message(fmt: str, raw: bytes) -> str:
    """Pillow could not read the header of a file whose magic bytes looked right."""
    size = _peek_size(fmt, raw)
    if size is not None and (size[0] <= 0 or size[1] <= 0):
        return f"image has invalid dimensions {size[0]}x{size[1]}"
    if len(raw) < 64:
        return "image is truncated (the file ends right after its first bytes); upload it again"
    return f"image is damaged: its {_format_word(fmt)} header could not be read"


def _load_failure_message(exc: BaseException) -> str:
    """Turn a pixel-decoding failure into words; Pillow says 'truncated' for early end of data."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError):
        return "image is too large to decode"
    if "truncated" in text or isinstance(exc, EOFError) or "end of file" in text or "premature" in text:
        return "image is truncated (the file ends before the picture does); upload it again"
    return "image is damaged: its pixel data is corrupt and could not be decoded"


def _too_many_pixels_message(fmt: str, raw: bytes, max_pixels: int, exc: BaseException) -> str:
    """Same wording as _check_dimensions, even though Pillow's cap fired first."""
    size = _peek_size(fmt, raw)
    if size is not None:
        w, h = size
        return f"image is {w}x{h} = {_fmt_pixels(w * h)}, more than the {_fmt_pixels(max_pixels)} limit"
    match = re.search(r"\((\d+) pixels\)", str(exc))
    if match:
        return f"image is {_fmt_pixels(int(match.group(1)))}, more than the {_fmt_pixels(max_pixels)} limit"
    return f"image has too many pixels (more than the {_fmt_pixels(max_pixels)} limit)"


def _too_many_bytes_message(n_bytes: int, max_bytes: int) -> str:
    return f"image file is {_fmt_bytes(n_bytes)}, more than the {_fmt_bytes(max_bytes)} limit"


def _peek_size(fmt: str, raw: bytes) -> tuple[int, int] | None:
    """Width and height straight from a PNG, GIF or JPEG header, for messages only (None if not found)."""
    try:
        if fmt == "PNG" and raw[12:16] == b"IHDR":
            return struct.unpack(">II", raw[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", raw[6:10])
        if fmt == "JPEG":
            return _peek_jpeg_size(raw)
    except struct.error:
        return None
    return None


def _peek_jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """Walk JPEG marker segments up to the first SOFn and return its (width, height)."""
    pos = 2
    while pos + 4 <= len(raw):
        if raw[pos] != 0xFF:
            return None
        marker = raw[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", raw[pos + 5:pos + 9])
            return width, height
        (length,) = struct.unpack(">H", raw[pos + 2:pos + 4])
        pos += 2 + length
    return None


def _format_word(fmt: str) -> str:
    return "WebP" if fmt == "WEBP" else fmt


def _fmt_pixels(n: int) -> str:
    """400000000 -> '400 Mpx', 41943040 -> '41.9 Mpx', small counts in plain pixels."""
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}".rstrip("0").rstrip(".") + " Mpx"
    return f"{n:,} px"


def _fmt_bytes(n: int) -> str:
    """Sizes the way a file browser shows them (MB = 1024*1024 bytes)."""
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f}".rstrip("0").rstrip(".") + " MB"
    if n >= 1024:
        return f"{n / 1024:.1f}".rstrip("0").rstrip(".") + " KB"
    return f"{n} bytes"
