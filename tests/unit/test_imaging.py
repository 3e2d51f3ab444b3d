"""Tests for shared.imaging: every bad file gives one ImageError in plain words; every accepted mode ends up RGB."""
from __future__ import annotations

import hashlib
import io
import random
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageFile

from shared.errors import ImageError, InvalidInput, PermanentError
from shared.imaging import decode_image, encode_jpeg, image_sha256, open_rgb, to_rgb

MAX_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000


def decode(data: object, **kw: int) -> Image.Image:
    kw.setdefault("max_bytes", MAX_BYTES)
    kw.setdefault("max_pixels", MAX_PIXELS)
    return decode_image(data, **kw)  # type: ignore[arg-type]


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    """Incompressible pixels, so the compressed stream is long enough to cut and corrupt."""
    rnd = random.Random(seed)
    return Image.frombytes("RGB", size, bytes(rnd.randrange(256) for _ in range(size[0] * size[1] * 3)))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def raw_png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2, idat: bytes | None = None) -> bytes:
    """A hand-built PNG whose header says whatever we want (Pillow refuses to write absurd sizes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = idat if idat is not None else zlib.compress(b"\x00" * 8)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def gif_header(width: int, height: int) -> bytes:
    """GIF89a with the given logical screen, a 2-colour table and a 1x1 frame."""
    return (
        b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
        + b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00\x3b"
    )


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is edited to claim another size."""
    data = bytearray(encode(Image.new("RGB", (8, 8), (10, 20, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def corrupt_middle(data: bytes, replacement: bytes) -> bytes:
    mid = len(data) // 2
    return data[:mid] + replacement + data[mid + len(replacement):]


def zip_with_image() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("photo.jpg", encode(Image.new("RGB", (4, 4)), "JPEG"))
    return buf.getvalue()


def jpeg_bogus_huffman() -> bytes:
    data = bytearray(encode(noise(), "JPEG"))
    dht = data.index(b"\xff\xc4")
    data[dht + 4:dht + 21] = b"\xff" * 17  # code-length counts that add up to far more than 256 codes
    return bytes(data)


def gif_bytes() -> bytes:
    return encode(noise().convert("P"), "GIF")


# (id, bytes factory, expected message fragment, extra decode kwargs)
BAD_FILES: list[tuple[str, Callable[[], bytes], str, dict[str, int]]] = [
    ("empty", lambda: b"", "empty", {}),
    ("plain-text", lambda: b"this is not a picture, just a note\n", "is text", {}),
    ("html-page", lambda: b"<!DOCTYPE html><html><body><img src=a.jpg></body></html>", "HTML page", {}),
    ("pdf", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF", {}),
    ("svg", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG", {}),
    ("zip", zip_with_image, "ZIP", {}),
    ("bmp", lambda: encode(Image.new("RGB", (4, 4)), "BMP"),
     "format BMP is not accepted; use JPEG, PNG, WebP or GIF", {}),
    ("tiff", lambda: encode(Image.new("RGB", (4, 4)), "TIFF"), "format TIFF is not accepted", {}),
    ("ico", lambda: encode(Image.new("RGB", (16, 16)), "ICO"), "format ICO is not accepted", {}),
    ("psd", lambda: b"8BPS\x00\x01" + b"\x00" * 40, "format PSD is not accepted", {}),
    ("heic", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40, "format HEIC", {}),
    ("mp4", lambda: b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 40, "video", {}),
    ("wav-riff", lambda: b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40, "RIFF", {}),
    ("random-bytes", lambda: noise((32, 32), seed=1).tobytes(), "not a recognised image", {}),
    ("jpeg-truncated", lambda: encode(noise(), "JPEG")[:1500], "truncated", {}),
    ("jpeg-missing-end", lambda: encode(noise(), "JPEG")[:-2], "truncated", {}),
    ("png-truncated", lambda: (lambda d: d[: len(d) // 2])(encode(noise(), "PNG")), "truncated", {}),
    ("png-signature-only", lambda: b"\x89PNG\r\n\x1a\n", "truncated", {}),
    ("gif-truncated", lambda: (lambda d: d[: len(d) // 2])(gif_bytes()), "truncated", {}),
    ("webp-truncated", lambda: (lambda d: d[: len(d) // 2])(encode(noise(), "WEBP")), "truncated", {}),
    ("png-corrupt-middle", lambda: corrupt_middle(encode(noise(), "PNG"), b"\x00" * 16), "corrupt", {}),
    ("gif-corrupt-middle", lambda: corrupt_middle(gif_bytes(), bytes(range(64))), "corrupt", {}),
    ("jpeg-marker-in-scan", lambda: corrupt_middle(encode(noise(), "JPEG"), b"\xff\xc0"), "corrupt", {}),
    ("jpeg-bogus-huffman", jpeg_bogus_huffman, "corrupt", {}),
    ("jpeg-no-frame-header", lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01" + b"\x00" * 200, "header", {}),
    ("png-zero-width", lambda: raw_png(0, 10), "invalid dimensions 0x10", {}),
    ("jpeg-zero-height", lambda: jpeg_with_size(8, 0), "invalid dimensions 8x0", {}),
    ("png-bomb-400mpx", lambda: raw_png(20000, 20000),
     "image is 20000x20000 = 400 Mpx, more than the 40 Mpx limit", {}),
    ("png-48mpx", lambda: raw_png(8000, 6000), "image is 8000x6000 = 48 Mpx, more than the 40 Mpx limit", {}),
    ("gif-bomb", lambda: gif_header(60000, 60000), "image is 60000x60000 = 3600 Mpx", {}),
    ("jpeg-bomb", lambda: jpeg_with_size(65000, 65000), "image is 65000x65000 = 4225 Mpx, more than the 40 Mpx", {}),
    ("absurd-strip", lambda: raw_png(35000, 1), "sides longer than 30,000 pixels", {}),
    ("pixel-limit-setting", lambda: encode(Image.new("RGB", (100, 100)), "PNG"),
     "image is 100x100 = 10,000 px, more than the 5,000 px limit", {"max_pixels": 5000}),
    ("too-many-bytes", lambda: encode(noise((256, 256)), "PNG"), "more than the 100 KB limit",
     {"max_bytes": 100 * 1024}),
]


@pytest.mark.parametrize(("make", "fragment", "kw"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_file_raises_image_error_with_plain_message(
    make: Callable[[], bytes], fragment: str, kw: dict[str, int]
) -> None:
    with pytest.raises(ImageError) as info:
        decode(make(), **kw)
    assert fragment in str(info.value)
    assert type(info.value) is ImageError


def test_image_error_is_permanent_and_invalid_input() -> None:
    with pytest.raises(PermanentError):
        decode(b"")
    with pytest.raises(InvalidInput):
        decode(b"")


def test_pillow_failures_are_chained_not_swallowed() -> None:
    with pytest.raises(ImageError) as info:
        decode(encode(noise(), "JPEG")[:1500])
    assert info.value.__cause__ is not None


def test_random_mutations_never_leak_another_exception_type() -> None:
    """Bit flips and cuts of every accepted format: either a valid RGB image or ImageError, nothing else."""
    rnd = random.Random(1234)
    seeds = [
        encode(noise((24, 24)), "JPEG"),
        encode(noise((24, 24)), "PNG"),
        encode(noise((24, 24)).convert("P"), "GIF"),
        encode(noise((24, 24)), "WEBP"),
        encode(noise((24, 24)).convert("RGBA"), "WEBP", lossless=True),
    ]
    for seed in seeds:
        for _ in range(40):
            data = bytearray(seed)
            for _ in range(rnd.randint(1, 8)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            if rnd.random() < 0.3:
                data = data[: rnd.randrange(1, len(data))]
            try:
                img = decode(bytes(data))
            except ImageError:
                continue
            assert img.mode == "RGB"


def test_pillow_global_limits_are_left_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError):
        decode(raw_png(20000, 20000))
    decode(encode(Image.new("RGB", (8, 8)), "PNG"))
    assert Image.MAX_IMAGE_PIXELS == before


def test_truncated_still_fails_when_someone_enabled_load_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="truncated"):
        decode(encode(noise(), "JPEG")[:1500])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_path_input_good_oversized_and_missing(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(encode(Image.new("RGB", (5, 3), (1, 2, 3)), "PNG"))
    for source in (good, str(good)):
        img = decode(source)
        assert (img.mode, img.size, img.getpixel((0, 0))) == ("RGB", (5, 3), (1, 2, 3))
    big = tmp_path / "big.png"
    big.write_bytes(encode(noise((128, 128)), "PNG"))
    with pytest.raises(ImageError, match="more than the 2 KB limit"):
        decode(big, max_bytes=2048)
    with pytest.raises(ImageError, match="could not be read"):
        decode(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="expected image bytes"):
        decode(12345)


# ------------------------------------------------------------------------------------------------
# good path: every accepted format and every mode ends up as a loaded 8-bit RGB image


def assert_rgb(img: Image.Image, size: tuple[int, int]) -> None:
    assert img.mode == "RGB"
    assert img.size == size
    img.getpixel((0, 0))  # pixels are loaded and the image is usable after decode_image returned


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tol: int) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


@pytest.mark.parametrize(
    ("fmt", "kw", "tol"),
    [("JPEG", {"quality": 95}, 6), ("PNG", {}, 0), ("WEBP", {"lossless": True}, 0), ("WEBP", {"quality": 90}, 8),
     ("GIF", {}, 0)],
    ids=["jpeg", "png", "webp-lossless", "webp-lossy", "gif"],
)
def test_accepted_formats_decode_to_rgb(fmt: str, kw: dict[str, object], tol: int) -> None:
    colour = (200, 40, 60)
    img = decode(encode(Image.new("RGB", (16, 8), colour), fmt, **kw))
    assert_rgb(img, (16, 8))
    assert close_to(img.getpixel((5, 5)), colour, tol)


def test_cmyk_jpeg() -> None:
    img = decode(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    assert_rgb(img, (8, 8))
    assert close_to(img.getpixel((4, 4)), (255, 0, 0), 8)


def test_palette_png_with_transparency_composites_on_white() -> None:
    pal = Image.new("P", (4, 2), 0)
    pal.putpalette([0, 0, 0, 0, 160, 0] + [0] * 762)
    for x in (2, 3):
        for y in (0, 1):
            pal.putpixel((x, y), 1)
    img = decode(encode(pal, "PNG", transparency=0))
    assert_rgb(img, (4, 2))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((3, 1)) == (0, 160, 0)


def test_rgb_png_with_colour_key_transparency() -> None:
    src = Image.new("RGB", (2, 1), (0, 0, 0))
    src.putpixel((1, 0), (9, 9, 9))
    img = decode(encode(src, "PNG", transparency=(0, 0, 0)))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (9, 9, 9)


def test_16bit_grey_png_scales_instead_of_clipping() -> None:
    arr = np.array([[0, 128 * 257, 65535]], dtype=np.uint16)
    img = decode(encode(Image.fromarray(arr), "PNG"))
    assert_rgb(img, (3, 1))
    assert [img.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_16bit_rgb_png() -> None:
    rows = b"\x00" + struct.pack(">6H", 65535, 0, 0, 0, 0, 65535)
    img = decode(raw_png(2, 1, bit_depth=16, color_type=2, idat=zlib.compress(rows)))
    assert_rgb(img, (2, 1))
    assert [img.getpixel((0, 0)), img.getpixel((1, 0))] == [(255, 0, 0), (0, 0, 255)]


def test_la_png() -> None:
    src = Image.new("LA", (3, 1))
    src.putpixel((0, 0), (0, 0))  # fully transparent black -> white
    src.putpixel((1, 0), (0, 255))  # opaque black
    src.putpixel((2, 0), (0, 128))  # half black over white
    img = decode(encode(src, "PNG"))
    assert_rgb(img, (3, 1))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (0, 0, 0)
    assert close_to(img.getpixel((2, 0)), (127, 127, 127), 1)


@pytest.mark.parametrize(("fmt", "kw"), [("PNG", {}), ("WEBP", {"lossless": True})], ids=["png", "webp"])
def test_rgba_composites_on_white(fmt: str, kw: dict[str, object]) -> None:
    src = Image.new("RGBA", (2, 1), (255, 0, 0, 128))
    src.putpixel((1, 0), (0, 0, 255, 0))
    img = decode(encode(src, fmt, **kw))
    assert_rgb(img, (2, 1))
    assert close_to(img.getpixel((0, 0)), (255, 127, 127), 1)
    assert img.getpixel((1, 0)) == (255, 255, 255)


@pytest.mark.parametrize(("mode", "fmt"), [("L", "PNG"), ("L", "JPEG"), ("1", "PNG")])
def test_grey_and_bilevel(mode: str, fmt: str) -> None:
    value = 77 if mode == "L" else 1
    expected = (77, 77, 77) if mode == "L" else (255, 255, 255)
    img = decode(encode(Image.new(mode, (6, 4), value), fmt))
    assert_rgb(img, (6, 4))
    assert close_to(img.getpixel((3, 2)), expected, 2 if fmt == "JPEG" else 0)


def test_exif_rotated_jpeg_is_turned_upright() -> None:
    src = Image.new("RGB", (40, 20), (255, 0, 0))
    src.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img = decode(encode(src, "JPEG", quality=95, exif=exif.tobytes()))
    assert_rgb(img, (20, 40))
    assert close_to(img.getpixel((10, 5)), (255, 0, 0), 10)  # left half ends up on top
    assert close_to(img.getpixel((10, 35)), (0, 0, 255), 10)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (10, 6), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    kw: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    img = decode(data)
    assert_rgb(img, (10, 6))
    assert img.getpixel((5, 3)) == (255, 0, 0)


def test_gif_with_transparent_index() -> None:
    src = Image.new("P", (2, 1), 0)
    src.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    src.putpixel((1, 0), 1)
    img = decode(encode(src, "GIF", transparency=0))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 0)) == (200, 100, 0)


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        (Image.new("YCbCr", (2, 2), (128, 128, 128)), (128, 128, 128)),
        (Image.new("I", (2, 2), 65535), (255, 255, 255)),
        (Image.new("F", (2, 2), 300.0), (255, 255, 255)),
        (Image.new("PA", (2, 2), (0, 0)), (255, 255, 255)),
        (Image.new("RGBX", (2, 2), (1, 2, 3, 0)), (1, 2, 3)),
    ],
    ids=["YCbCr", "I", "F", "PA", "RGBX"],
)
def test_to_rgb_other_modes(src: Image.Image, expected: tuple[int, int, int]) -> None:
    img = to_rgb(src)
    assert img.mode == "RGB"
    assert close_to(img.getpixel((1, 1)), expected, 1)


def test_encode_jpeg_and_sha256() -> None:
    data = encode_jpeg(Image.new("RGBA", (12, 10), (0, 128, 0, 255)), quality=85)
    img = decode(data)
    assert_rgb(img, (12, 10))
    assert close_to(img.getpixel((6, 5)), (0, 128, 0), 6)
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(img, quality=0)
    assert image_sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert image_sha256(b"abc").startswith("ba7816bf")


def test_pillow_bomb_warning_as_error_keeps_our_message() -> None:
    """Under -W error Pillow's warning (above its 89 Mpx default) is raised inside open(); still our wording."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match=r"image is 10000x10000 = 100 Mpx, more than the 40 Mpx limit"):
            decode(raw_png(10000, 10000))


# -- decode cost, work size, aspect ratio (issue 14) ------------------------------------------------------------

def black_png(width: int, height: int) -> bytes:
    """All-black RGB PNG built row by row (tiny on the wire, width*height*3 bytes once decoded)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + width * 3)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return raw_png(width, height, idat=body)


@pytest.mark.parametrize("size", [(10000, 1), (1, 10000), (2100, 100), (30, 700)])
def test_extreme_aspect_ratio_is_refused_with_the_limit(size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size), "PNG")
    with pytest.raises(ImageError, match=rf"image is {size[0]}x{size[1]}; its longer side may be at most 20 times"):
        decode(data)
    assert decode(data, max_aspect=20_000).size == size  # the limit is a parameter (a setting in the API)


def test_wide_modes_get_a_proportionally_smaller_pixel_cap() -> None:
    rgba = encode(Image.new("RGBA", (100, 100), (1, 2, 3, 4)), "PNG")
    with pytest.raises(ImageError, match=r"100x100 = 10,000 px, more than the 9,000 px limit \(4 bytes per pixel"):
        decode(rgba, max_pixels=12_000)
    assert decode(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=12_000).size == (100, 100)


def test_big_png_decodes_to_the_work_size_quickly() -> None:
    import time

    data = black_png(6000, 6600)  # the 115 KB cost-amplification image
    assert len(data) < 200_000
    t0 = time.perf_counter()
    img = decode(data, max_side=768)
    elapsed = time.perf_counter() - t0
    assert img.mode == "RGB" and max(img.size) == 768 and img.info["source_size"] == (6000, 6600)
    assert img.getpixel((10, 10)) == (0, 0, 0)
    assert elapsed < 3.0, elapsed  # ~0.6 s on a busy 2-core machine; the full-size pipeline took 7 s


def test_jpeg_uses_draft_mode_and_keeps_colours() -> None:
    from shared.imaging import decode_cost, source_size

    data = encode(Image.new("RGB", (4000, 3000), (200, 10, 10)), "JPEG")
    img = decode(data, max_side=512)
    assert img.size == (512, 384) and source_size(img) == (4000, 3000)
    assert all(abs(a - b) < 8 for a, b in zip(img.getpixel((100, 100)), (200, 10, 10)))
    assert decode_cost(data) == 4000 * 3000 // 4  # JPEG decodes at reduced scale
    assert decode_cost(encode(Image.new("RGB", (40, 30)), "PNG")) == 1200
    assert decode_cost(b"not an image") == 0


def test_exif_rotation_and_box_frames_with_a_reduced_image() -> None:
    from shared.imaging import in_source_pixels, source_size, to_source_box, to_work_box

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: a 400x300 file shows as 300x400
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (0, 200, 0)).save(buf, "JPEG", exif=exif.tobytes())
    img = decode(buf.getvalue(), max_side=100)
    assert img.size == (75, 100) and source_size(img) == (300, 400)
    assert to_work_box(img, (0, 0, 300, 400)) == (0, 0, 75, 100)
    assert to_source_box(img, (0, 0, 75, 100)) == (0, 0, 300, 400)
    assert to_work_box(img, None) is None

    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Box:
        xyxy: tuple[float, float, float, float]

    @dataclass(frozen=True)
    class Result:
        roi: tuple[float, float, float, float]
        boxes: list[Box]

    moved = in_source_pixels(Result((1, 2, 3, 4), [Box((10, 10, 20, 20))]), img)
    assert moved.roi == (4, 8, 12, 16) and moved.boxes[0].xyxy == (40, 40, 80, 80)
    small = decode(encode(Image.new("RGB", (50, 40)), "PNG"), max_side=100)
    same = Result((1, 2, 3, 4), [])
    assert in_source_pixels(same, small) is same  # not reduced: nothing moves


def test_fuzz_shapes_modes_and_formats_give_rgb_within_the_work_size_or_image_error() -> None:
    """Property-style: random sizes (including extreme strips), modes and formats; the only outcomes are an RGB
    image no larger than max_side in the same aspect, or an ImageError."""
    rnd = random.Random(14)
    formats = {"PNG": ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"), "GIF": ("P", "L"), "WEBP": ("RGB", "RGBA"),
               "JPEG": ("RGB", "L", "CMYK")}
    for _ in range(80):
        fmt = rnd.choice(sorted(formats))
        mode = rnd.choice(formats[fmt])
        w = rnd.choice([1, 2, 3, rnd.randrange(1, 3000)])
        h = rnd.choice([1, 2, rnd.randrange(1, 3000), max(1, w // rnd.choice([1, 19, 21, 500]))])
        if fmt == "WEBP" and max(w, h) > 16383:
            continue
        img = Image.new(mode, (w, h))
        try:
            data = encode(img, fmt)
        except (OSError, ValueError):
            continue  # Pillow cannot write this mode in this format
        max_side = rnd.choice([64, 256, 768])
        try:
            out = decode(data, max_side=max_side)
        except ImageError as exc:
            assert str(exc)
            assert max(w, h) > 20 * min(w, h), (fmt, mode, w, h, exc)  # only the aspect cap refuses these
            continue
        assert out.mode == "RGB" and max(out.size) <= max_side and min(out.size) >= 1
        assert out.info["source_size"] == (w, h)
        if max(w, h) > max_side:
            scale = max_side / max(w, h)  # the same aspect, up to rounding of each side
            assert abs(out.width - w * scale) <= 2 and abs(out.height - h * scale) <= 2, (w, h, out.size)


@pytest.mark.parametrize("make", ["exif_rotated_jpeg", "transparent_png"])
def test_open_rgb_gives_training_the_pixels_serving_decodes(make: str, tmp_path: Path) -> None:
    """Training and evaluation open files with open_rgb; serving decodes uploads with decode_image. On a file
    where a bare Image.open().convert("RGB") differs (EXIF rotation, transparency), both give the same pixels."""
    rng = np.random.default_rng(0)
    if make == "exif_rotated_jpeg":
        img = Image.fromarray(rng.integers(0, 255, (40, 64, 3), dtype=np.uint8))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise on display
        path = tmp_path / "photo.jpg"
        img.save(path, "JPEG", quality=95, exif=exif)
    else:
        rgba = rng.integers(0, 255, (40, 64, 4), dtype=np.uint8)
        rgba[:20, :, 3] = 0  # the top half fully transparent
        path = tmp_path / "cutout.png"
        Image.fromarray(rgba, "RGBA").save(path)
    opened = open_rgb(path)
    served = decode(path.read_bytes())
    naive = Image.open(path).convert("RGB")
    assert opened.mode == "RGB"
    assert opened.size == served.size
    assert np.array_equal(np.asarray(opened), np.asarray(served))
    assert opened.size != naive.size or not np.array_equal(np.asarray(opened), np.asarray(naive))
