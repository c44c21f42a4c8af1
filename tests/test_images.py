"""Page images: opened like the vendor does, every bad file a one-line PageImageError."""

import struct
import zlib

import pytest
from PIL import Image

from core.workload import MAX_PAGE_PIXELS
from verify.images import PageImageError, page_size


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with a token IDAT: enough for Pillow's header parse."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_plain_png_size(tmp_path):
    path = tmp_path / "page.png"
    Image.new("L", (30, 20), 128).save(path)
    assert page_size(path) == page_size(path, decode=True) == (30, 20)


def test_exif_rotated_jpeg_swaps_size(tmp_path):
    # Stored 300 wide x 200 high; EXIF orientation 6 = rotate 90 degrees, so the vendor sees 200 x 300.
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (300, 200), "white").save(path, exif=exif)
    assert page_size(path) == page_size(path, decode=True) == (200, 300)


def test_missing_and_directory(tmp_path):
    with pytest.raises(PageImageError, match="no such image") as exc:
        page_size(tmp_path / "nope.png")
    _one_line(exc)
    with pytest.raises(PageImageError, match="not a regular file"):
        page_size(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(PageImageError, match="empty") as exc:
        page_size(path)
    _one_line(exc)


def test_corrupt_bytes(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(PageImageError, match="not a readable image") as exc:
        page_size(path)
    _one_line(exc)


def test_truncated_image_fails_on_decode(tmp_path):
    path = tmp_path / "cut.png"
    noisy = Image.effect_noise((200, 200), 50).convert("RGB")
    noisy.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert page_size(path) == (200, 200)  # the header is intact
    with pytest.raises(PageImageError, match="corrupt or truncated") as exc:
        page_size(path, decode=True)
    _one_line(exc)


def test_zero_sized(tmp_path):
    path = tmp_path / "zero.png"
    path.write_bytes(_png_header(0, 10))
    with pytest.raises(PageImageError) as exc:
        page_size(path)
    _one_line(exc)


def test_huge_header_is_refused_before_decoding(tmp_path):
    # 100000 x 100000 = 1e10 pixels: far over Pillow's bomb limit and our MAX_PAGE_PIXELS.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(100_000, 100_000))
    for decode in (False, True):
        with pytest.raises(PageImageError, match="decompression bomb") as exc:
            page_size(path, decode=decode)
        _one_line(exc)


def test_pillow_bomb_warning_becomes_an_error(tmp_path):
    # 10000 x 10000 = 1e8 pixels: above Pillow's warning threshold (~8.9e7), below its hard error.
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(10_000, 10_000))
    with pytest.raises(PageImageError, match="decompression bomb"):
        page_size(path)


def test_own_guard_holds_without_pillows(tmp_path, monkeypatch):
    # With Pillow's guard switched off, our MAX_PAGE_PIXELS check still refuses 15000 x 15000 = 2.25e8 > 2e8.
    assert MAX_PAGE_PIXELS < 15_000 * 15_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "big.png"
    path.write_bytes(_png_header(15_000, 15_000))
    with pytest.raises(PageImageError, match="200,000,000 limit"):
        page_size(path)
