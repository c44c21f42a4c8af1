"""Page sources: OmniDocBench, plain image files or folders, and the embedded synthetic set.

Every loader returns `PageSpec`s; bad sources raise `PageSourceError` (one line,
naming the fix; the CLI maps it to exit code 2).  Per-image problems are not
raised here but by `verify.images` when a page is used, so one bad image never
stops the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from core.workload import MAX_PAGE_PIXELS
from reports.model import PageSpec
from verify.images import PageImageError, page_size
from verify.selection import select_pages

# datasets/ is data only (never a package): locate it from the repo root.
REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MANIFEST = REPO_ROOT / "datasets" / "embedded_pages.json"
OMNIDOCBENCH_JSON = "OmniDocBench.json"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})


class PageSourceError(ValueError):
    """A page source that cannot be loaded at all (exit code 2)."""


# --- OmniDocBench -----------------------------------------------------------------

MAX_ANNOTATION_BYTES = 1 << 30  # the released OmniDocBench.json is ~100 MB; anything past this is not it
MAX_PAGE_INFO_DEPTH = 16  # page_info is 3 levels deep in the released file
MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4096  # Linux NAME_MAX and PATH_MAX
MAX_SHOWN = 120  # characters of an annotation value quoted in a message
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DRIVE = re.compile(r"^[A-Za-z]:")


def load_omnidocbench(
    root: Path,
    data_sources: list[str] | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    images_dir: Path | None = None,
) -> list[PageSpec]:
    """Pages of an OmniDocBench annotation file, filtered by data source, then sampled (seeded), then limited.

    `root` is the dataset folder (holding OmniDocBench.json) or the annotation JSON itself
    (any name, as OmniDocBench's own tools take it); images default to `images/` beside it.
    Width and height come from the annotation (`page_info`); the image itself is
    opened (and its real size checked) only when the page is verified.
    """
    json_path, root = _annotation_path(Path(root))
    entries = _read_omnidocbench_json(json_path)
    if not any(isinstance(e, dict) and isinstance(e.get("page_info"), dict) for e in entries):
        raise PageSourceError(
            f"{json_path}: no entry has a page_info object (no page_info anywhere); the file is not "
            "OmniDocBench's format"
        )
    images = Path(images_dir) if images_dir is not None else root / "images"
    pages = unique_ids([_omnidocbench_page(i, e, json_path, root, images) for i, e in enumerate(entries)])
    if data_sources:
        pages = _filter_sources(pages, data_sources)
    return select_pages(pages, limit=limit, sample=sample, seed=seed)


def _filter_sources(pages: list[PageSpec], wanted: list[str]) -> list[PageSpec]:
    """The pages of any of the `wanted` data sources; one nobody is annotated with is a PageSourceError."""
    known = sorted({src for p in pages for src in page_sources(p)})
    unknown = sorted(set(wanted) - set(known))
    if unknown and not known:
        raise PageSourceError(
            f"--data-source {', '.join(unknown)}: no page of this annotation names a data_source (a string in "
            "page_info.page_attribute): drop --data-source"
        )
    if unknown:
        raise PageSourceError(
            f"unknown OmniDocBench data source(s) {', '.join(map(_shown, unknown))}: use one of "
            f"{', '.join(map(_shown, known))}"
        )
    return [p for p in pages if set(page_sources(p)) & set(wanted)]


def page_sources(page: PageSpec) -> tuple[str, ...]:
    """The data sources a page's annotation names: a string, or a list of strings; anything else names none."""
    value = page.attributes.get("data_source")
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _annotation_path(source: Path) -> tuple[Path, Path]:
    """(annotation JSON, dataset root) from a root folder or the JSON file itself."""
    try:
        if source.is_dir():
            return source / OMNIDOCBENCH_JSON, source
        if source.is_file():
            return source, source.parent
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise PageSourceError(f"OmniDocBench source {source} cannot be read ({exc.strerror}): fix the path") from None
    raise PageSourceError(
        f"OmniDocBench root {source} is not a directory or a JSON file: pass the folder with {OMNIDOCBENCH_JSON} "
        "or the annotation JSON itself"
    )


def _read_omnidocbench_json(path: Path) -> list[Any]:
    try:
        if path.stat().st_size > MAX_ANNOTATION_BYTES:
            raise PageSourceError(
                f"{path} is larger than {MAX_ANNOTATION_BYTES >> 20} MiB: this is not an OmniDocBench annotation file"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PageSourceError(f"{path} not found: pass the OmniDocBench root that holds {OMNIDOCBENCH_JSON}") from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, an int past 4300 digits
        reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise PageSourceError(f"{path} is unreadable ({reason}); re-download OmniDocBench") from None
    if not isinstance(data, list) or not data:
        raise PageSourceError(f"{path} must hold a non-empty JSON list of pages; re-download OmniDocBench")
    return data


def _omnidocbench_page(index: int, entry: Any, json_path: Path, root: Path, images: Path) -> PageSpec:
    """One annotation entry as a page; a bad field makes this page bad (or, for the size, is read from the image
    with a note), never the run."""
    info = entry.get("page_info") if isinstance(entry, dict) else None
    where = f"{json_path} entry {index}"
    if not isinstance(info, dict):
        return _bad_entry(index, f"{where} has no page_info object: fix the annotation")
    if _depth(info) > MAX_PAGE_INFO_DEPTH:
        return _bad_entry(
            index, f"{where}: page_info nests deeper than {MAX_PAGE_INFO_DEPTH} levels; fix the annotation"
        )
    image_path = info.get("image_path")
    if not isinstance(image_path, str) or not image_path:
        return _bad_entry(index, f"{where} has no page_info.image_path: fix the annotation")
    attrs = info.get("page_attribute") if isinstance(info.get("page_attribute"), dict) else {}
    attrs = {**attrs, "page_no": info.get("page_no")}
    width, height = info.get("width"), info.get("height")
    if not _positive_int(width) or not _positive_int(height) or width * height > MAX_PAGE_PIXELS:
        attrs["annotation_note"] = (
            f"page_info size {_shown(width)}x{_shown(height)} is not positive integers with width x height <= "
            f"{MAX_PAGE_PIXELS:,} pixels: the size is read from the image"
        )
        width = height = 0  # checked_page reads the real size from the image, as it does for every page
    resolved, error = confined_image(image_path, root, images)
    return PageSpec(
        page_id=_stem(image_path),
        width=int(width),
        height=int(height),
        source="omnidocbench",
        image_path=resolved,
        attributes=attrs,
        error=error,
        reference_text=reference_text(entry),
    )


# The reference of each annotated layout element, first field present wins: a table's `html` (what DeepSeek-OCR
# writes for tables; the annotation also holds its `latex`), a formula's `latex`, a text block's `text`.
REFERENCE_FIELDS = ("html", "latex", "text")


def reference_text(entry: dict[str, Any]) -> str | None:
    """The page's reference transcription: the reference of every layout element in `layout_dets` that has one,
    one per line (figures have none).  None when the entry has no `layout_dets` list: no reference at all, unlike
    a page whose elements hold no text ('': nothing to decode)."""
    elements = entry.get("layout_dets")
    if not isinstance(elements, list):
        return None
    texts = []
    for element in elements:
        if not isinstance(element, dict):
            continue
        value = next((element[k] for k in REFERENCE_FIELDS if isinstance(element.get(k), str) and element[k]), None)
        if value is not None:
            texts.append(value)
    return "\n".join(texts)


def _bad_entry(index: int, message: str) -> PageSpec:
    """A page for an annotation entry that names no usable image: reported as failed, the run goes on."""
    return PageSpec(f"entry-{index}", 0, 0, source="omnidocbench", attributes={"entry": index}, error=message)


def _positive_int(value: Any) -> bool:
    """A JSON number that is a finite, positive integer (1e400 parses as inf; true is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value > 0 and int(value) == value


def _depth(obj: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            todo.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


def _stem(image_path: str) -> str:
    """The file stem of an annotation path, whichever separator it was written with (cut to a file name's length)."""
    stem = Path(re.split(r"[\\/]", image_path)[-1]).stem or image_path
    return stem if len(stem) <= MAX_NAME_BYTES else stem[:MAX_SHOWN] + "..."


def _shown(value: Any) -> str:
    """repr() for a message, cut short: an annotation value can be megabytes long."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def confined_image(image_path: str, root: Path, images: Path) -> tuple[str | None, str | None]:
    """(resolved path, None) for an image inside the image folder or the root, else (None, why not).

    Nothing outside is ever read: `..`, absolute paths and links leading out are refused
    after resolving, with one message whatever exists (or not) at the target.
    """
    name = _shown(image_path)
    outside = (
        f"image_path {name} points outside the OmniDocBench image folder: use a path relative to it "
        "(no '..', no absolute path, no link leading out)"
    )
    try:
        raw = os.fsencode(image_path)
    except UnicodeError:
        raw = b"\0"
    if b"\0" in raw:
        return None, f"image_path {name} is not a valid file name (NUL byte or unpaired surrogate): fix it"
    if _URL.match(image_path):
        return None, f"image_path {name} is a URL: pages are read from local files only; download it first"
    parts = re.split(rb"[\\/]", raw)
    if len(raw) > MAX_PATH_BYTES or any(len(p) > MAX_NAME_BYTES for p in parts):
        return None, f"image_path {name} is longer than the file system allows: fix the annotation"
    if image_path[:1] in "/\\" or _DRIVE.match(image_path) or b".." in parts:
        return None, outside
    names = [os.fsdecode(p) for p in parts if p and p != b"."]
    if not names:
        return None, f"image_path {name} names no file: fix the annotation"
    candidates = [images / names[-1], root.joinpath(*names)]
    try:
        bases = [images.resolve(), root.resolve()]
        real = [c.resolve() for c in candidates]
    except (OSError, RuntimeError):  # a link loop
        return None, outside
    if not all(any(r.is_relative_to(b) for b in bases) for r in real):
        return None, outside
    # The released JSON holds bare file names (images/ implied); some re-packagings keep "images/x.jpg".
    return str(real[0] if _exists(real[0]) or not _exists(real[1]) else real[1]), None


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. root + name past PATH_MAX: reported when the page is opened
        return False


def checked_page(spec: PageSpec) -> PageSpec:
    """The spec with the size the vendor will really see, read from its image (EXIF applied).

    Raises `PageImageError` for an unusable image (or a load-time `spec.error`), so the
    run loop can record it for this page.  A size that differs from the annotation
    (e.g. an EXIF-rotated scan) wins, and the annotated size is kept in attributes.
    """
    if spec.error:
        raise PageImageError(spec.error)
    if spec.image_path is None:
        return spec  # a synthetic geometry not rendered yet: the manifest is the truth
    width, height = page_size(spec.image_path, decode=True)
    if (width, height) == (spec.width, spec.height):
        return spec
    attrs = dict(spec.attributes)
    if spec.width > 0 and spec.height > 0:  # 0x0: the annotation gave no usable size (its note says so)
        attrs["annotated_size"] = [spec.width, spec.height]
    return dataclasses.replace(spec, width=width, height=height, attributes=attrs)


# --- image files and folders --------------------------------------------------------


def load_image_files(
    paths: list[Path], limit: int | None = None, sample: int | None = None, seed: int = 0
) -> list[PageSpec]:
    """One page per distinct image file; a folder contributes its image files (sorted, not recursive).

    A file named twice (directly, through its folder or a link) is one page.  Pages are chosen
    (`select_pages`: seeded sample, then limit) before any file is opened, so only the chosen ones are.
    Size is read from the header with EXIF orientation applied.  An unreadable image (a dangling or
    looping link in a folder included) becomes a page carrying `error` (and a 0x0 size) so the run
    records it for that page instead of stopping.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        kind = _path_kind(p)
        if kind == "dir":
            found = _folder_images(p)
            if not found:
                raise PageSourceError(f"folder {p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}): pass another")
            files.extend(found)
        elif kind == "missing":
            raise PageSourceError(f"{p} does not exist: pass image files or a folder of images")
        else:
            files.append(p)
    if not files:
        raise PageSourceError("no image files given: pass at least one image or a folder of images")
    files = _distinct(files)
    chosen = select_pages([(f, _unique_id(f, files)) for f in files], limit=limit, sample=sample, seed=seed)
    return unique_ids([_file_page(f, page_id) for f, page_id in chosen])


def _folder_images(folder: Path) -> list[Path]:
    """The entries of `folder` named like images, sorted; anything but a sub-folder counts (a dangling link, a
    FIFO: the page check names what is wrong with it), so nothing named like an image is dropped silently."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not _is_folder(f))


def _is_folder(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False


def _path_kind(path: Path) -> str:
    """'dir', 'missing' or 'other' (a file, or something the page check will name)."""
    try:
        return "dir" if path.is_dir() else ("other" if path.exists() else "missing")
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise PageSourceError(f"{path} cannot be read ({exc.strerror}): fix the path") from None


def _distinct(files: list[Path]) -> list[Path]:
    """Files in order, each real file once."""
    seen: set[str] = set()
    out = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _unique_id(path: Path, files: list[Path]) -> str:
    same_stem = [f for f in files if f.stem == path.stem]
    return path.stem if len(same_stem) == 1 else f"{path.parent.name}/{path.name}"


def unique_ids(pages: list[PageSpec]) -> list[PageSpec]:
    """Pages whose ids are unique: a repeated id gets -2, -3, ... (reports are keyed by page id)."""
    taken = {p.page_id for p in pages}
    seen: set[str] = set()
    for page in pages:
        if page.page_id in seen:
            n = 2
            while f"{page.page_id}-{n}" in taken:
                n += 1
            page.page_id = f"{page.page_id}-{n}"
            taken.add(page.page_id)
        seen.add(page.page_id)
    return pages


def _file_page(path: Path, page_id: str) -> PageSpec:
    try:
        width, height = page_size(path)
    except PageImageError as exc:
        return PageSpec(page_id, 0, 0, source="files", image_path=str(path), error=str(exc))
    return PageSpec(page_id, width, height, source="files", image_path=str(path))


# --- embedded synthetic set ---------------------------------------------------------


def load_embedded(limit: int | None = None) -> list[PageSpec]:
    """The embedded synthetic page geometries: all the verifier needs (vendor inputs are tensors of the view sizes,
    so no image is ever rendered)."""
    manifest = _read_manifest(EMBEDDED_MANIFEST)
    pages = [
        PageSpec(
            page_id=e["id"],
            width=e["width"],
            height=e["height"],
            source="embedded",
            synthetic=True,
            attributes={k: v for k, v in e.items() if k not in ("id", "width", "height")},
        )
        for e in manifest["pages"]
    ]
    return select_pages(pages, limit=limit)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        for e in manifest["pages"]:
            if not (isinstance(e["id"], str) and _positive_int(e["width"]) and _positive_int(e["height"])):
                raise ValueError(f"bad entry {e!r}")
            if e.get("synthetic") is not True:
                raise ValueError(f"entry {e['id']} is not labelled synthetic")
        ids = [e["id"] for e in manifest["pages"]]
        if len(set(ids)) != len(ids):
            raise ValueError("page ids repeat")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PageSourceError(f"embedded manifest {path} is broken ({exc}); restore it from git") from None
    return manifest
