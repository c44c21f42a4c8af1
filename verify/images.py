"""Page images, opened exactly the way the vendor opens them.

The official `load_image` does `Image.open` + `ImageOps.exif_transpose` and the
caller converts to RGB, so a page's geometry is its size *after* EXIF rotation.
Every failure (missing, empty, corrupt, zero-sized, absurdly large) becomes a
one-line `PageImageError`; the run loop records it for that page and goes on.
"""

from __future__ import annotations

import stat
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.workload import MAX_PAGE_PIXELS

# EXIF orientations 5..8 rotate by 90 or 270 degrees: width and height swap.
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


class PageImageError(ValueError):
    """A page image that cannot be used; the message names the file and the fix."""


def page_size(path: Path | str, decode: bool = False) -> tuple[int, int]:
    """(width, height) after EXIF orientation, from the header; `decode=True` also decodes every pixel.

    A header can be intact while the data is cut short, so the check a page must pass
    before it is verified decodes it (under the pixel bound checked first).
    """
    path = Path(path)
    with _open(path) as img:
        width, height = img.size
        _check_size(path, width, height)
        if decode:
            _decode(path, img)
        if _orientation(img) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
    return width, height


def _decode(path: Path, img: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PageImageError(f"{path}: image data is corrupt or truncated ({exc}); re-export the page") from None


def _open(path: Path) -> Image.Image:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PageImageError(f"{path}: no such image file; check the path or the OmniDocBench image folder") from None
    except (OSError, ValueError) as exc:  # name too long, NUL byte, unencodable name, permission denied
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise PageImageError(f"{path}: cannot be read ({reason}); check the file name and permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise PageImageError(f"{path}: not a regular file; pass an image file (PNG, JPEG, ...)")
    if st.st_size == 0:
        raise PageImageError(f"{path}: the image file is empty; re-export or remove the page")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PageImageError(f"{path}: refused as a decompression bomb ({exc}); downscale the image first") from None
    except PermissionError as exc:
        raise PageImageError(f"{path}: cannot be read ({exc.strerror}); check the file permissions") from None
    except UnidentifiedImageError:
        raise PageImageError(f"{path}: not a readable image (unknown or corrupt format); re-export it") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PageImageError(f"{path}: image header is corrupt ({exc}); re-export the page") from None


def _check_size(path: Path, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise PageImageError(f"{path}: image is {width}x{height} pixels (zero-sized); re-export the page")
    if width * height > MAX_PAGE_PIXELS:
        raise PageImageError(
            f"{path}: image is {width}x{height} = {width * height:,} pixels, above the {MAX_PAGE_PIXELS:,} "
            "limit (decompression-bomb guard); downscale the image first"
        )


def _orientation(img: Image.Image) -> int:
    # PNG keeps EXIF in an eXIf chunk; Pillow's getexif() would decode the whole image to
    # look for one after the pixels, so only trust what the header already gave us.
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1
