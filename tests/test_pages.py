"""Page sources: the embedded synthetic manifest, OmniDocBench roots and plain image files."""

import json
import os

import pytest
from PIL import Image

from core.workload import compute_view_layout
from verify.images import PageImageError
from verify.pages import (
    EMBEDDED_MANIFEST,
    REPO_ROOT,
    PageSourceError,
    checked_page,
    load_embedded,
    load_image_files,
    load_omnidocbench,
)

OMNIDOCBENCH_SOURCES = {
    "academic_literature",
    "book",
    "colorful_textbook",
    "exam_paper",
    "magazine",
    "newspaper",
    "note",
    "research_report",
    "PPT2PDF",
}

# Gundam grids derived by hand from the vendor policy (facts page): no crops when both sides <= 640;
# otherwise the (i, j) with 2 <= i*j <= 9 whose i/j is closest to w/h, and on an exact ratio tie the
# later (larger) candidate wins only if w*h > 0.5 * 640*640 * i*j.
# Tie thresholds: 3x3: 0.5*409600*9 = 1,843,200; 2x4 and 4x2: 0.5*409600*8 = 1,638,400.
EXPECTED_GRIDS = {
    "acad-a4-portrait": (2, 3),  # 1654/2339 = 0.707: 2/3 off by 0.040, 1/2 by 0.207 -> portrait 2x3
    "book-a5-portrait": (2, 3),  # 874/1240 = 0.705 -> 2x3
    "book-thumb-small": None,  # 320x240, both <= 640 -> no crops
    "textbook-spread": (3, 2),  # 2480/1754 = 1.414: 3/2 off by 0.086, 1 by 0.414 -> landscape 3x2
    "exam-a3-landscape": (3, 2),  # 2339/1654 = 1.414 -> 3x2
    "exam-card-640": None,  # 640x640 sits on the <= 640 boundary -> no crops
    "magazine-portrait": (2, 3),  # 1600/2100 = 0.762: 2/3 off by 0.095, 1 by 0.238 -> 2x3
    "magazine-square-cover": (3, 3),  # ratio 1 ties 2x2/3x3; 1500*1500 = 2,250,000 > 1,843,200 -> 3x3
    "newspaper-broadsheet": (2, 4),  # 0.5625 -> 1/2 (0.0625) ties 1x2/2x4; 5,760,000 > 1,638,400 -> 2x4
    "newspaper-strip-wide": (7, 1),  # 4000/600 = 6.67: 7 off by 0.33, 6 by 0.67 -> wide 7x1
    "note-phone-small": None,  # 480x640 -> no crops
    "note-square": (2, 2),  # ratio 1 tie; 1,000,000 <= 1,843,200 -> 2x2 kept
    "note-scroll-tall": (1, 9),  # 640/6000 = 0.107: 1/9 off by 0.004, 1/8 by 0.018 -> tall 1x9
    "report-column-tall": (1, 2),  # 700/1300 = 0.538 -> 1/2 tie; 910,000 <= 1,638,400 -> 1x2 kept
    "slide-1080p": (4, 2),  # 16:9 = 1.778: 2 off by 0.222, 3/2 by 0.278 -> 2x1/4x2 tie; 2,073,600 > 1,638,400 -> 4x2
    "slide-720p": (2, 1),  # 16:9 tie; 921,600 <= 1,638,400 -> 2x1 kept
}


def _grid(page):
    layout = compute_view_layout(page.width, page.height, base_size=1024, image_size=640, crop_mode=True)
    return (layout.w_crop, layout.h_crop) if layout.has_crops else None


def test_manifest_grids_match_hand_derivation():
    pages = load_embedded()
    assert {p.page_id: _grid(p) for p in pages} == EXPECTED_GRIDS


def test_manifest_hits_every_crop_grid_path():
    grids = {p.page_id: _grid(p) for p in load_embedded()}
    values = set(grids.values())
    assert None in values  # no crops
    assert (2, 3) in values and (3, 2) in values  # portrait, landscape
    assert any(g and g[0] == 1 and g[1] >= 3 for g in values)  # tall 1xN
    assert any(g and g[1] == 1 and g[0] >= 3 for g in values)  # wide Nx1
    # tie-break at every tied ratio (1/2, 1, 2), both outcomes: later candidate wins / earlier kept
    assert {(1, 2), (2, 4), (2, 2), (3, 3), (2, 1), (4, 2)} <= values


def test_manifest_is_synthetic_and_covers_nine_document_types():
    pages = load_embedded()
    assert 12 <= len(pages) <= 16
    assert all(p.synthetic and p.attributes["synthetic"] is True and p.source == "embedded" for p in pages)
    assert {p.attributes["data_source"] for p in pages} == OMNIDOCBENCH_SOURCES
    assert "synthetic" in json.loads(EMBEDDED_MANIFEST.read_text())["description"].lower()
    shapes = {(p.width > p.height, p.width < p.height, max(p.width, p.height) <= 640) for p in pages}
    assert (True, False, False) in shapes and (False, True, False) in shapes and any(s[2] for s in shapes)
    assert any(abs(p.width / p.height - 16 / 9) < 1e-3 for p in pages)  # a slide


def test_datasets_is_never_a_package():
    assert not (REPO_ROOT / "datasets" / "__init__.py").exists()


def test_embedded_limit_keeps_geometry_only():
    pages = load_embedded(limit=2)
    assert len(pages) == 2
    assert all(p.synthetic and p.image_path is None and p.width > 0 and p.height > 0 for p in pages)


# --- OmniDocBench ---------------------------------------------------------------------------


def _omni_root(tmp_path, n=20):
    sources = ["academic_literature", "book", "PPT2PDF", "newspaper"]
    entries = []
    for i in range(n):
        entries.append(
            {
                "layout_dets": [],
                "page_info": {
                    "page_no": i,
                    "width": 1000 + i,
                    "height": 1400,
                    "image_path": f"page-{i:03d}.jpg",
                    "page_attribute": {"data_source": sources[i % 4], "language": "english"},
                },
                "extra": {"relation": []},
            }
        )
    root = tmp_path / "omni"
    (root / "images").mkdir(parents=True)
    (root / "OmniDocBench.json").write_text(json.dumps(entries))
    return root


def test_omnidocbench_reads_pages(tmp_path):
    root = _omni_root(tmp_path)
    pages = load_omnidocbench(root)
    assert len(pages) == 20
    p = pages[3]
    assert (p.page_id, p.width, p.height, p.source) == ("page-003", 1003, 1400, "omnidocbench")
    assert p.image_path == str(root / "images" / "page-003.jpg")
    assert p.attributes["data_source"] == "newspaper" and p.attributes["page_no"] == 3
    assert not p.synthetic


def test_omnidocbench_filters_and_limit(tmp_path):
    root = _omni_root(tmp_path)
    books = load_omnidocbench(root, data_sources=["book"])
    assert [p.page_id for p in books] == [f"page-{i:03d}" for i in range(1, 20, 4)]
    two = load_omnidocbench(root, data_sources=["book", "PPT2PDF"], limit=3)
    assert [p.page_id for p in two] == ["page-001", "page-002", "page-005"]


def test_omnidocbench_seeded_sample_is_reproducible(tmp_path):
    root = _omni_root(tmp_path)
    a = [p.page_id for p in load_omnidocbench(root, sample=5, seed=7)]
    b = [p.page_id for p in load_omnidocbench(root, sample=5, seed=7)]
    c = [p.page_id for p in load_omnidocbench(root, sample=5, seed=8)]
    assert a == b and len(a) == 5 and a == sorted(a)  # source order kept
    assert a != c


def test_omnidocbench_custom_image_dir_and_prefixed_paths(tmp_path):
    root = _omni_root(tmp_path, n=1)
    assert load_omnidocbench(root, images_dir=tmp_path / "elsewhere")[0].image_path == str(
        tmp_path / "elsewhere" / "page-000.jpg"
    )
    data = json.loads((root / "OmniDocBench.json").read_text())
    data[0]["page_info"]["image_path"] = "images/page-000.jpg"
    (root / "OmniDocBench.json").write_text(json.dumps(data))
    assert load_omnidocbench(root)[0].image_path == str(root / "images" / "page-000.jpg")


def test_checked_page_uses_the_real_image_size(tmp_path):
    root = _omni_root(tmp_path, n=2)
    Image.new("RGB", (1400, 1000)).save(root / "images" / "page-000.jpg")  # annotated 1000x1400
    real, missing = load_omnidocbench(root)
    fixed = checked_page(real)
    assert (fixed.width, fixed.height) == (1400, 1000) and fixed.attributes["annotated_size"] == [1000, 1400]
    with pytest.raises(PageImageError, match="no such image"):
        checked_page(missing)
    embedded = load_embedded(limit=1)[0]
    assert checked_page(embedded) is embedded


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda root: (root / "OmniDocBench.json").write_text("{not json"), "unreadable"),
        (lambda root: (root / "OmniDocBench.json").unlink(), "not found"),
        (lambda root: (root / "OmniDocBench.json").write_text("[]"), "non-empty JSON list"),
        (lambda root: (root / "OmniDocBench.json").write_text('[{"layout_dets": []}]'), "no page_info"),
    ],
)
def test_omnidocbench_bad_json(tmp_path, mutate, match):
    root = _omni_root(tmp_path, n=2)
    mutate(root)
    with pytest.raises(PageSourceError, match=match) as exc:
        load_omnidocbench(root)
    assert "\n" not in str(exc.value)


def test_omnidocbench_missing_root_and_unknown_source(tmp_path):
    with pytest.raises(PageSourceError, match="not a directory"):
        load_omnidocbench(tmp_path / "missing")
    with pytest.raises(PageSourceError, match=r"unknown OmniDocBench data source.*use one of"):
        load_omnidocbench(_omni_root(tmp_path), data_sources=["cookbook"])


# --- plain image files ----------------------------------------------------------------------


def test_image_files_and_folders(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    Image.new("RGB", (50, 70)).save(folder / "b.png")
    Image.new("RGB", (80, 60)).save(folder / "a.png")
    (folder / "notes.txt").write_text("not an image")
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 270: stored 90x40, seen as 40x90
    Image.new("RGB", (90, 40)).save(tmp_path / "rot.jpg", exif=exif)
    pages = load_image_files([folder, tmp_path / "rot.jpg"])
    assert [(p.page_id, p.width, p.height) for p in pages] == [("a", 80, 60), ("b", 50, 70), ("rot", 40, 90)]
    assert all(p.source == "files" and p.error is None for p in pages)


def test_bad_image_is_a_page_error_not_a_source_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    Image.new("RGB", (10, 10)).save(tmp_path / "good.png")
    pages = load_image_files([tmp_path])
    bad = next(p for p in pages if p.page_id == "bad")
    assert "not a readable image" in bad.error and (bad.width, bad.height) == (0, 0)
    assert next(p for p in pages if p.page_id == "good").error is None


def test_image_files_source_errors(tmp_path):
    with pytest.raises(PageSourceError, match="does not exist"):
        load_image_files([tmp_path / "nope.png"])
    with pytest.raises(PageSourceError, match="holds no images"):
        load_image_files([tmp_path])
    with pytest.raises(PageSourceError, match="no image files"):
        load_image_files([])


# --- hostile OmniDocBench annotations ------------------------------------------------------------


def _omni_with(tmp_path, image_paths, **info):
    """An OmniDocBench root whose entries name `image_paths` (one 100x80 PNG exists as images/ok.png)."""
    root = tmp_path / "omni"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (100, 80)).save(root / "images" / "ok.png")
    entries = [
        {"page_info": {"image_path": p, "width": 100, "height": 80, "page_no": i, **info}}
        for i, p in enumerate(image_paths)
    ]
    (root / "OmniDocBench.json").write_text(json.dumps(entries))
    return root


def test_image_paths_escaping_the_root_are_refused_alike_whether_or_not_the_target_exists(tmp_path):
    outside = tmp_path / "secret.png"
    Image.new("RGB", (100, 80)).save(outside)
    root = _omni_with(tmp_path, [])
    (root / "images" / "link-to-secret.png").symlink_to(outside)
    (root / "images" / "link-to-nothing.png").symlink_to(tmp_path / "nothing.png")
    cases = {
        "../../secret.png": "../../nothing.png",  # exists / does not
        str(outside): str(tmp_path / "nothing.png"),  # absolute
        "images/../../secret.png": "images/../../nothing.png",
        "..\\..\\secret.png": "..\\..\\nothing.png",  # Windows separators
        "link-to-secret.png": "link-to-nothing.png",  # a link leading out, resolved then checked
    }
    paths = [p for pair in cases.items() for p in pair]
    entries = [{"page_info": {"image_path": p, "width": 100, "height": 80}} for p in paths]
    (root / "OmniDocBench.json").write_text(json.dumps(entries))
    pages = load_omnidocbench(root)
    for page, name in zip(pages, paths, strict=True):
        assert page.image_path is None and page.error, name
        assert "points outside the OmniDocBench image folder" in page.error
        with pytest.raises(PageImageError):
            checked_page(page)
    for existing, missing in cases.items():
        by_path = {p: pg.error for p, pg in zip(paths, pages, strict=True)}
        # the same words, only the quoted name differs: nothing says whether the target exists
        assert by_path[existing].replace(repr(existing), "X") == by_path[missing].replace(repr(missing), "X")


def test_odd_image_path_forms_are_page_errors_or_stay_inside(tmp_path):
    long_name = "a" * 300 + ".png"
    odd = ["bad\x00.png", "\ud800.png", "file:///etc/passwd", "https://example.com/p.png", long_name, ".", "~/ok.png"]
    root = _omni_with(tmp_path, odd)
    pages = {p.attributes["page_no"]: p for p in load_omnidocbench(root)}
    assert "not a valid file name" in pages[0].error and "not a valid file name" in pages[1].error
    assert "is a URL" in pages[2].error and "is a URL" in pages[3].error
    assert "longer than the file system allows" in pages[4].error
    assert "names no file" in pages[5].error
    # "~" is never expanded: a literal folder name, looked up inside the image folder like any other
    assert pages[6].error is None and pages[6].image_path == str((root / "images" / "ok.png").resolve())
    for page in pages.values():
        assert page.error is None or "\n" not in page.error


def test_image_path_with_undecodable_bytes_is_found(tmp_path):
    root = _omni_with(tmp_path, [])
    name = os.fsdecode(b"scan-\xff.png")  # a Latin-1 file name on a UTF-8 system: legal on Linux
    Image.new("RGB", (100, 80)).save(root / "images" / name)
    (root / "OmniDocBench.json").write_text(
        json.dumps([{"page_info": {"image_path": name, "width": 100, "height": 80}}])
    )
    (page,) = load_omnidocbench(root)
    assert page.error is None and checked_page(page).width == 100


BAD_NUMBERS = ["1e400", "-1e400", "NaN", "Infinity", "-5", "0", "0.5", "true", '"100"', "null", "[100]", "1e30"]


@pytest.mark.parametrize("width", BAD_NUMBERS)
def test_annotation_sizes_must_be_finite_positive_bounded_integers(tmp_path, width):
    """A bad size is never used: the page's size is read from its image, with a note; the run goes on."""
    root = tmp_path / "omni"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (100, 80)).save(root / "images" / "a.png")
    (root / "OmniDocBench.json").write_text(
        '[{"page_info": {"image_path": "a.png", "width": ' + width + ', "height": 80}}]'
    )
    (page,) = load_omnidocbench(root)
    assert (page.width, page.height) == (0, 0) and page.error is None
    note = page.attributes["annotation_note"]
    assert "positive integers" in note and "read from the image" in note
    assert "\n" not in note
    checked = checked_page(page)
    assert (checked.width, checked.height) == (100, 80) and "annotated_size" not in checked.attributes


def test_annotation_area_is_bounded(tmp_path):
    # 20000 x 20000 = 4e8 pixels > MAX_PAGE_PIXELS (2e8), though each side alone is plausible
    root = tmp_path / "omni"
    root.mkdir()
    (root / "OmniDocBench.json").write_text('[{"page_info": {"image_path": "a.png", "width": 20000, "height": 20000}}]')
    (page,) = load_omnidocbench(root)
    assert (page.width, page.height) == (0, 0) and "200,000,000 pixels" in page.attributes["annotation_note"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[" * 200_000 + "]" * 200_000, "nested too deep"),  # RecursionError in the parser
        ('[{"page_info": {"image_path": "a.png", "width": ' + "9" * 5000 + ', "height": 1}}]', "unreadable"),
    ],
)
def test_annotation_nesting_and_giant_numbers_are_one_line_errors(tmp_path, text, match):
    root = tmp_path / "omni"
    root.mkdir()
    (root / "OmniDocBench.json").write_text(text)
    with pytest.raises(PageSourceError, match=match) as exc:
        load_omnidocbench(root)
    assert "\n" not in str(exc.value)


def test_omnidocbench_accepts_the_annotation_file_itself(tmp_path):
    root = _omni_root(tmp_path, n=3)
    demo = root / "OmniDocBench_demo.json"
    (root / "OmniDocBench.json").rename(demo)
    pages = load_omnidocbench(demo)
    assert [p.page_id for p in pages] == ["page-000", "page-001", "page-002"]
    assert pages[0].image_path == str((root / "images" / "page-000.jpg").resolve())
    other = tmp_path / "elsewhere"
    assert load_omnidocbench(demo, images_dir=other)[0].image_path == str(other.resolve() / "page-000.jpg")


def test_omnidocbench_page_ids_are_unique(tmp_path):
    root = _omni_with(tmp_path, ["ok.png", "ok.jpg", "sub/ok.png"])
    assert [p.page_id for p in load_omnidocbench(root)] == ["ok", "ok-2", "ok-3"]


def test_truncated_image_is_refused_when_the_page_is_checked(tmp_path):
    path = tmp_path / "cut.png"
    Image.effect_noise((200, 200), 50).convert("RGB").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    (page,) = load_image_files([path])
    assert page.error is None  # the header alone looks fine
    with pytest.raises(PageImageError, match="corrupt or truncated"):
        checked_page(page)


def test_same_file_twice_is_one_page_and_ids_are_unique(tmp_path):
    a, b = tmp_path / "a" / "x", tmp_path / "b" / "x"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    Image.new("RGB", (10, 10)).save(a / "p.png")
    Image.new("RGB", (20, 20)).save(b / "p.png")
    (tmp_path / "alias.png").symlink_to(a / "p.png")
    pages = load_image_files([a / "p.png", a, tmp_path / "alias.png", a / "p.png", b / "p.png"])
    assert [p.image_path for p in pages] == [str(a / "p.png"), str(b / "p.png")]
    assert [p.page_id for p in pages] == ["x/p.png", "x/p.png-2"]


def test_megabyte_annotation_values_are_quoted_short(tmp_path):
    root = _omni_with(tmp_path, ["x" * 1_000_000 + ".png"])
    (page,) = load_omnidocbench(root)
    assert "longer than the file system allows" in page.error and len(page.error) < 400
    assert len(page.page_id) < 300
    (root / "OmniDocBench.json").write_text(
        json.dumps([{"page_info": {"image_path": "a.png", "width": "9" * 1_000_000, "height": 1}}])
    )
    (page,) = load_omnidocbench(root)
    assert len(page.attributes["annotation_note"]) < 600


def test_deeply_nested_page_info_is_a_bad_page(tmp_path):
    text = '{"page_info": {"image_path": "a.png", "width": 1, "height": 1, "x": ' + "[" * 40 + "]" * 40 + "}}"
    root = tmp_path / "omni"
    root.mkdir()
    (root / "OmniDocBench.json").write_text(f"[{text}, {json.dumps(_one_entry())}]")
    bad, fine = load_omnidocbench(root)
    assert "nests deeper than 16" in bad.error and "\n" not in bad.error and fine.error is None


def _one_entry():
    return {"page_info": {"image_path": "b.png", "width": 10, "height": 10}}
