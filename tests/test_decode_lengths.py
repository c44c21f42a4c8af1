"""Per-page decode lengths (issue 24): the mapping file, the estimate, a named tokenizer, the per-type table, and the
length reaching each page's workload, its cache key, every report row and the console summary.

Every expected number is worked out by hand in a comment; none is copied from running the code.  No vendor model
runs here: the CLI cases stop with exit 2 before the model is built.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from rich.console import Console

from core.decode_lengths import (
    FROM_REFERENCE,
    DecodeLengthError,
    estimate_tokens,
    load_token_counter,
    read_length_file,
)
from reports import write_reports
from reports.console import print_summary
from reports.model import ComparisonRow, PageResult, PageSpec, RunResult
from reports.summary import decode_line
from verify.cache import hash_material, key_material
from verify.cli import main_end2end
from verify.lengths import FILE, DecodeLengths, assign_decode_lengths
from verify.pages import load_embedded, load_omnidocbench
from verify.runner import Verifier, VerifyConfig

# gundam's longest page: 1 BOS + 1263 image tokens (273 global + the 1x9 grid's 990) + 12 prompt tokens = 1276
# positions of 8192, so 8192 - 1276 = 6916 decode steps at most.
GUNDAM_ROOM = 6916


def run_cli(*argv: object) -> int:
    try:
        return main_end2end([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code or 0)


def embedded_ids() -> list[str]:
    return [p.page_id for p in load_embedded()]


# ---- the estimate -------------------------------------------------------------------------------------------


def test_estimate_by_hand():
    # "Hello 世界": H e l l o, one space (6 other characters) and 2 CJK ones:
    # 6 x 0.3 + 2 x 0.6 = 1.8 + 1.2 = 3.0 tokens
    assert estimate_tokens("Hello 世界") == 3
    # "abcd": 4 x 0.3 = 1.2 tokens, rounded up to 2 (a page with any text decodes a whole step more)
    assert estimate_tokens("abcd") == 2
    assert estimate_tokens("") == 0


# ---- the mapping file ---------------------------------------------------------------------------------------


def test_good_json_csv_and_tsv_files(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"a": 5, "b": 0}))
    (tmp_path / "m.csv").write_text("page_id,decode_tokens\na,5\nb, 0\n\n")  # header, spaces, blank line
    (tmp_path / "m.tsv").write_text("a\t5\nb\t0\n")  # no header
    for name in ("m.json", "m.csv", "m.tsv"):
        assert read_length_file(tmp_path / name) == {"a": 5, "b": 0}


def _full_json(tmp_path: Path, **override: object) -> Path:
    """A mapping of every embedded page to 10 decode steps, with ``override`` replacing some values."""
    path = tmp_path / "lengths.json"
    path.write_text(json.dumps({**dict.fromkeys(embedded_ids(), 10), **override}))
    return path


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_FILES = {
    # one page given of the 16 embedded ones: the first missing is the manifest's second page, 14 more after it
    "missing-page": (
        lambda t: _write(t, "m.json", '{"acad-a4-portrait": 5}'),
        "has no length for page 'book-a5-portrait' and 14 more",
    ),
    "fraction": (lambda t: _full_json(t, **{"book-a5-portrait": 1.5}), "'1.5', not an integer"),
    "boolean": (lambda t: _full_json(t, **{"book-a5-portrait": True}), "not an integer"),
    "string": (lambda t: _full_json(t, **{"book-a5-portrait": "12"}), "not an integer"),
    "negative": (lambda t: _full_json(t, **{"book-a5-portrait": -3}), "has -3: decode tokens must be >= 0"),
    # 6917 = GUNDAM_ROOM + 1
    "past-positions": (lambda t: _full_json(t, **{"book-a5-portrait": 6917}), "has 6917 decode tokens, past the 6916"),
    "csv-negative": (lambda t: _write(t, "m.csv", "book-a5-portrait,-3\n"), "has -3: decode tokens must be >= 0"),
    "csv-word": (lambda t: _write(t, "m.csv", "book-a5-portrait,many\n"), "'many', not an integer"),
    "csv-twice": (lambda t: _write(t, "m.csv", "a,1\na,2\n"), "page 'a' is listed twice"),
    "csv-three-cells": (lambda t: _write(t, "m.csv", "a,1,2\n"), "data row 1 has 3 cells"),
    "not-json": (lambda t: _write(t, "m.json", "{oops"), "is not valid JSON"),
    "json-list": (lambda t: _write(t, "m.json", "[1, 2]"), "must hold one JSON object"),
    "suffix": (lambda t: _write(t, "m.txt", "a 1"), "name a .json, .csv or .tsv file"),
    "absent": (lambda t: t / "nowhere.json", "not found: fix the path"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_mapping_file_is_exit_2_with_one_line(case, cache_dir, tmp_path, capsys):
    make, message = BAD_FILES[case]
    out = tmp_path / "runs"
    assert run_cli("--decode-tokens-file", make(tmp_path), "--quiet", "--output-dir", out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "error:" in err
    assert not out.exists()


USAGE = {
    "both-options": (["--decode-tokens", "8", "--decode-tokens-file", "m.json"], "not allowed with argument"),
    "not-a-length": (["--decode-tokens", "lots"], "neither a number of decode steps >= 0 nor from-reference"),
    "tokenizer-without-from-reference": (["--tokenizer", "t.json"], "--tokenizer applies only to --decode-tokens"),
    "tokenizer-on-embedded": (
        ["--decode-tokens", FROM_REFERENCE, "--tokenizer", "t.json"],
        "these pages have none: drop it or add --omnidocbench",
    ),
    "from-reference-on-images": (
        ["--decode-tokens", FROM_REFERENCE, "--images", "{tmp}"],
        "for --images give --decode-tokens N or a --decode-tokens-file",
    ),
}


@pytest.mark.parametrize("case", list(USAGE))
def test_length_options_that_cannot_apply_are_exit_2(case, cache_dir, tmp_path, capsys):
    argv, message = USAGE[case]
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert run_cli(*argv, "--quiet", "--output-dir", tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


# ---- OmniDocBench reference text, estimated or tokenized ------------------------------------------------------


def _omnidocbench(tmp_path: Path, extra: list[dict] | None = None) -> Path:
    entries = [
        {
            "page_info": {"image_path": "p1.jpg", "width": 1654, "height": 2339, "page_attribute": {}},
            "layout_dets": [
                {"category_type": "text_block", "text": "abcd efgh"},
                {"category_type": "equation_isolated", "latex": "x^2"},
                {"category_type": "table", "html": "<td>1</td>", "latex": "\\begin{tabular}{c}1\\end{tabular}"},
                {"category_type": "figure"},
            ],
        },
        {"page_info": {"image_path": "p2.jpg", "width": 800, "height": 600}, "layout_dets": [{"text": "中文"}]},
        {"page_info": {"image_path": "p3.jpg", "width": 800, "height": 600, "page_attribute": {"data_source": "note"}}},
        *(extra or []),
    ]
    root = tmp_path / "odb"
    (root / "images").mkdir(parents=True)
    (root / "OmniDocBench.json").write_text(json.dumps(entries, ensure_ascii=False))
    return root


def _lengths(pages: list[PageSpec]) -> dict[str, int | None]:
    return {p.page_id: p.decode_tokens for p in pages}


def test_from_reference_estimates_omnidocbench_text(tmp_path):
    pages = assign_decode_lengths(load_omnidocbench(_omnidocbench(tmp_path)), DecodeLengths(FROM_REFERENCE), 6916)
    # p1: "abcd efgh" (9) + "\n" + "x^2" (3) + "\n" + the table's html "<td>1</td>" (10; its latex is not counted)
    #     = 24 characters, none CJK: 24 x 0.3 = 7.2 -> 8 tokens; the figure has no text
    # p2: "中文" = 2 CJK characters x 0.6 = 1.2 -> 2 tokens
    # p3: no layout_dets at all: the typical note page, 700
    assert _lengths(pages) == {"p1": 8, "p2": 2, "p3": 700}
    assert pages[2].attributes["decode_tokens_from"] == "typical note page (assumed)"
    assert all(p.reference_text is None for p in pages)  # counted, then dropped: reports never carry it


def _tiny_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "abcd": 1, "efgh": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(path))
    return path


def test_from_reference_counts_with_a_named_tokenizer(tmp_path):
    tokenizer = _tiny_tokenizer(tmp_path / "tokenizer.json")
    count = load_token_counter(tokenizer)
    # split on whitespace only: "abcd", "efgh", "x^2", "<td>1</td>" = 4 tokens (unknown words count as [UNK])
    assert count("abcd efgh\nx^2\n<td>1</td>") == 4
    lengths = DecodeLengths(FROM_REFERENCE, tokenizer=tokenizer)
    pages = assign_decode_lengths(load_omnidocbench(_omnidocbench(tmp_path)), lengths, 6916)
    # p1 as above: 4 tokens; p2: "中文" is one whitespace-free word, 1 token; p3: the typical note page, 700
    assert _lengths(pages) == {"p1": 4, "p2": 1, "p3": 700}
    assert pages[0].attributes["decode_tokens_from"] == "reference text, tokenizer tokenizer.json"


def test_a_tokenizer_that_does_not_load_is_a_decode_length_error(tmp_path):
    bad = _write(tmp_path, "tokenizer.json", '{"not": "a tokenizer"}')
    with pytest.raises(DecodeLengthError, match="cannot be loaded"):
        load_token_counter(bad)


def test_a_page_without_text_or_known_type_is_exit_2(cache_dir, tmp_path, capsys):
    odd = {"page_info": {"image_path": "p4.jpg", "width": 8, "height": 8, "page_attribute": {"data_source": "scroll"}}}
    root = _omnidocbench(tmp_path, [odd])
    assert run_cli("--omnidocbench", root, "--decode-tokens", FROM_REFERENCE, "--quiet") == 2
    assert "page 'p4' has no reference text and no document type" in capsys.readouterr().err


def test_a_reference_too_long_to_decode_makes_that_page_bad_only(tmp_path):
    # room 7: p1 (8 tokens) and p3 (700) do not fit, p2 (2) does
    pages = assign_decode_lengths(load_omnidocbench(_omnidocbench(tmp_path)), DecodeLengths(FROM_REFERENCE), 7)
    assert [p.page_id for p in pages if p.error] == ["p1", "p3"]
    assert "8 decode tokens, past the 7" in pages[0].error


# ---- the embedded set: one typical length per document type ----------------------------------------------------

# core.decode_lengths.TYPICAL_DECODE_TOKENS, restated: the assumption under test
TYPICAL = {
    "academic_literature": 1600,
    "book": 1100,
    "colorful_textbook": 1300,
    "exam_paper": 1400,
    "magazine": 1500,
    "newspaper": 2900,
    "note": 700,
    "research_report": 1700,
    "PPT2PDF": 760,
}


def test_embedded_pages_get_their_document_types_length():
    pages = assign_decode_lengths(load_embedded(), DecodeLengths(FROM_REFERENCE), GUNDAM_ROOM)
    assert {p.page_id: p.decode_tokens for p in pages} == {
        p.page_id: TYPICAL[p.attributes["data_source"]] for p in pages
    }
    assert _lengths(pages)["acad-a4-portrait"] == 1600 and _lengths(pages)["book-thumb-small"] == 1100


# ---- per-page lengths reach the workloads, the cache key and the reports ---------------------------------------


def _prepared(pages: list[PageSpec], rule: str) -> list[PageResult]:
    cfg = VerifyConfig(command="run_verify_end2end", decode_tokens=None, decode_lengths=rule, dtype="float32")
    verifier = Verifier(cfg=cfg, measure=None, cost_model=None)  # prepare() builds workloads only
    return [verifier.prepare(p)[0] for p in pages]


def test_file_lengths_reach_each_pages_workload(tmp_path):
    ids = embedded_ids()
    path = _write(tmp_path, "m.csv", "".join(f"{page_id},{10 * i}\n" for i, page_id in enumerate(ids)))
    pages = assign_decode_lengths(load_embedded(), DecodeLengths(FILE, file=path), GUNDAM_ROOM)
    results = _prepared(pages, FILE)
    # the i-th page of the manifest was given 10 x i steps
    assert [r.workload["decode_tokens"] for r in results] == [10 * i for i in range(len(ids))]
    assert all(r.page.attributes["decode_tokens_from"] == "file" for r in results)


def test_the_decode_length_is_part_of_the_trace_cache_key():
    from core.workload import VisionWorkload

    def key(steps: int) -> str:
        w = VisionWorkload.from_page(1654, 2339, "gundam", decode_tokens=steps, impl="hf")
        return hash_material(
            key_material(
                backend="hf",
                workload_signature=w.signature(),
                device="cpu",
                vision_only=False,
                schema_version=1,
                versions={},
            )
        )

    assert key(16) == key(16) and key(16) != key(17)


def test_console_line_min_median_max_over_the_embedded_set():
    pages = assign_decode_lengths(load_embedded(), DecodeLengths(FROM_REFERENCE), GUNDAM_ROOM)
    run = _run(_prepared(pages, FROM_REFERENCE), FROM_REFERENCE)
    # the 16 pages by type: 3 notes (700), 2 slides (760), 2 books (1100), 1 textbook (1300), 2 exams (1400),
    # 2 magazines (1500), 1 paper (1600), 1 report (1700), 2 newspapers (2900): sorted, the 8th and 9th are
    # 1300 and 1400, so the median is (1300 + 1400) / 2 = 1350
    expected = "decode tokens per page: min 700 · median 1,350 · max 2,900 over 16 pages (from-reference)"
    assert decode_line(run) == expected
    console = Console(record=True, width=200)
    print_summary(run, console)
    assert expected in console.export_text()


def test_fixed_length_line():
    run = _run([PageResult(page=PageSpec("a", 8, 8, "files"), workload={"decode_tokens": 16})], "fixed")
    assert decode_line(run) == "decode tokens per page: 16 on every page"


def _run(pages: list[PageResult], rule: str) -> RunResult:
    config = {"decode_lengths": rule, "vision_only": False}
    return RunResult("r1", "run_verify_end2end", config, {}, pages, "2026-01-01T00:00:00", "2026-01-01T00:01:00", 1.0)


def test_every_report_row_carries_the_decode_length(tmp_path):
    workload = {"w_crop": 2, "h_crop": 3, "n_crops": 6, "n_image_tokens": 903, "prefill_len": 916}
    rows = [ComparisonRow("pg", "decode", "decoder", "tensor_flops", 1.0, 1.0, 0.0, 0.0, 0.01, True)]
    page = PageResult(page=PageSpec("pg", 1654, 2339, "files"), workload={**workload, "decode_tokens": 1234}, rows=rows)
    paths = write_reports(_run([page], FILE), tmp_path / "run")
    with open(paths["csv"], newline="", encoding="utf-8") as fh:
        assert [r["decode_tokens"] for r in csv.DictReader(fh)] == ["1234"]
    doc = json.loads(Path(paths["json"]).read_text())
    assert doc["pages"][0]["decode_tokens"] == 1234
    md = Path(paths["markdown"]).read_text()
    head = next(line for line in md.splitlines() if line.startswith("| page | status"))
    row = next(line for line in md.splitlines() if line.startswith("| pg |"))
    cells = dict(zip(head.split(" | "), row.split(" | "), strict=True))
    assert cells["decode tokens"] == "1234"
    html = Path(paths["html"]).read_text()
    assert "<th>decode tokens</th>" in html and ">1234<" in html
