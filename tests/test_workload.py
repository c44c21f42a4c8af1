"""Crop grid and token counts, derived by hand from the vendor policy."""

import pytest

from analytic import VisionWorkload, WorkloadError, compute_num_queries
from core.families import MODES
from core.workload import check_positions, max_image_tokens


def test_num_queries():
    # ceil((size // 16) / 4): 512/16=32 -> 8; 640/16=40 -> 10; 1024/16=64 -> 16; 1280/16=80 -> 20
    assert [compute_num_queries(s) for s in (512, 640, 1024, 1280)] == [8, 10, 16, 20]


def test_inconsistent_override_rejected():
    with pytest.raises(WorkloadError, match="image_size=640"):
        VisionWorkload.from_page(1000, 1000, "gundam", image_size=1024)


@pytest.mark.parametrize(
    ("mode", "tokens"),
    [
        ("tiny", 73),  # nq 8: (8+1)*8 + 1
        ("small", 111),  # nq 10: (10+1)*10 + 1
        ("base", 273),  # nq 16: (16+1)*16 + 1
        ("large", 421),  # nq 20: (20+1)*20 + 1
        ("gundam", 273),  # page <= 640 on both sides: global view only, no crops
    ],
)
def test_token_counts_one_view(mode, tokens):
    w = VisionWorkload.from_page(600, 400, mode, prompt_tokens=5)
    assert (w.n_image_tokens, w.n_crops) == (tokens, 0)
    assert w.prefill_len == 1 + tokens + 5  # BOS + image + prompt


@pytest.mark.parametrize(
    ("width", "height", "grid", "tokens"),
    [
        # portrait A4: w/h = 0.707; candidates with i*j <= 9: (2,3)=0.667 (diff .040) beats (1,1)-free others
        (1654, 2339, (2, 3), 273 + (10 * 2 + 1) * (10 * 3)),  # 903
        # landscape: 1.414 -> (3,2)=1.5 (diff .086) beats (2,2)=1.0, (2,1)=2.0
        (2339, 1654, (3, 2), 273 + (10 * 3 + 1) * (10 * 2)),  # 893
        # square below the tie threshold: (2,2) and (3,3) both ratio 1; 1000^2 = 1e6 <= 0.5*640^2*9 -> (2,2)
        (1000, 1000, (2, 2), 273 + 21 * 20),
        # square above it: 1400^2 = 1,960,000 > 1,843,200 -> the later (3,3) wins the tie
        (1400, 1400, (3, 3), 273 + 31 * 30),
        # tall: 600x3000 (h > 640 so crops), ratio 0.2 = (1,5) exactly
        (600, 3000, (1, 5), 273 + 11 * 50),
        # wide: ratio 8 = (8,1) exactly
        (4000, 500, (8, 1), 273 + 81 * 10),
        # tiny: both sides <= 640 -> no crops, grid [1, 1]
        (640, 640, (1, 1), 273),
    ],
)
def test_crop_grids(width, height, grid, tokens):
    w = VisionWorkload.from_page(width, height, "gundam")
    assert (w.w_crop, w.h_crop) == grid
    assert w.n_crops == (grid[0] * grid[1] if grid != (1, 1) else 0)
    assert w.n_image_tokens == tokens
    assert w.crop_size == (640 if w.n_crops else 0)
    assert w.global_view_size == 1024


@pytest.mark.parametrize(
    ("width", "height", "grid"),
    [
        # ratio exactly 2.0: (2,1) (i*j=2) and (4,2) (i*j=8) tie; threshold 0.5*640*640*8 = 1,638,400
        (1810, 905, (2, 1)),  # area 1,638,050 <= threshold: the earlier (2,1) stays
        (1812, 906, (4, 2)),  # area 1,641,672 >  threshold: the later (4,2) wins
    ],
)
def test_tie_break_on_both_sides_of_the_area_threshold(width, height, grid):
    assert width / height == 2.0
    w = VisionWorkload.from_page(width, height, "gundam")
    assert (w.w_crop, w.h_crop) == grid


def test_no_crop_modes_ignore_page_shape():
    for mode, size in (("tiny", 512), ("small", 640), ("base", 1024), ("large", 1280)):
        w = VisionWorkload.from_page(3000, 500, mode)
        assert (w.global_view_size, w.n_crops, w.crop_size) == (size, 0, 0)


def test_bad_pages_rejected():
    for wh in ((0, 10), (10, -1)):
        with pytest.raises(WorkloadError, match="not positive"):
            VisionWorkload.from_page(*wh, "base")
    with pytest.raises(WorkloadError, match="unknown mode"):
        VisionWorkload.from_page(10, 10, "huge")


# ---- the decoder's positions bound every token count ----------------------------------------------


def test_max_image_tokens_by_hand():
    # One view of s pixels: nq = s / 64, (nq + 1) * nq + 1 tokens. tiny 512 -> 8: 73; small 640 -> 10: 111;
    # base 1024 -> 16: 273; large 1280 -> 20: 421. Gundam: global 273 plus the crop grid with the most tokens,
    # (10 i + 1) * 10 j over 2 <= i*j <= 9: 1x9 gives 11 * 90 = 990 (9x1: 910, 3x3: 930, 2x4: 840) -> 1263.
    expected = {"tiny": 73, "small": 111, "base": 273, "large": 421, "gundam": 273 + 990}
    assert {m: max_image_tokens(p) for m, p in MODES.items()} == expected


def test_positions_bound_is_inclusive():
    # 1 (BOS) + 1263 + 12 + 6916 = 8192 fits exactly; one more decode step does not.
    check_positions(8192, 1263, 12, 6916)
    with pytest.raises(WorkloadError, match="= 8193 positions, past the decoder's 8192"):
        check_positions(8192, 1263, 12, 6917)


def test_analytic_positions_are_the_hf_decoders():
    """The analytic config is the one statement of the limit the CLIs enforce; the hf model must agree."""
    from analytic.model import build_cost_model
    from vendor_shim.backends.hf import text_config

    assert build_cost_model([]).decoder.max_position_embeddings == text_config()["max_position_embeddings"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--decode-tokens", "100000"], "past the decoder's 8192"),
        (["--override", "vision.sam.patch_size=abc"], "bad analytic config"),
    ],
)
def test_analytic_cli_refuses_with_one_line(extra, needle, capsys):
    from analytic.cli import main

    assert main(["--mode", "gundam", "--width", "1654", "--height", "2339", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
