"""DeepSeek-OCR 2 workload rules, derived by hand from docs/deepseek-ocr2-facts.md ("Modes", "Views and
the crop grid", "Image tokens in the prompt"): crops of 768, 2..6 of them, no newline tokens."""

import pytest

from analytic import VisionWorkload, WorkloadError
from core.families import MODES_OCR2
from core.workload import max_image_tokens

OCR2 = "deepseek-ocr-2"


def ocr2(width, height, mode="gundam", **kw):
    return VisionWorkload.from_page(width, height, mode, model=OCR2, **kw)


@pytest.mark.parametrize(
    ("mode", "size", "tokens"),
    [
        # one 768 view: nq = ceil((768 // 16) / 4) = 48 / 4 = 12 -> 12*12 queries + 1 separator = 145
        ("small", 768, 12 * 12 + 1),
        # one 1024 view: nq = 64 / 4 = 16 -> 16*16 + 1 = 257
        ("base", 1024, 16 * 16 + 1),
    ],
)
def test_single_view_tokens(mode, size, tokens):
    w = ocr2(3000, 500, mode, prompt_tokens=5)  # without crops the page shape does not matter
    assert (w.global_view_size, w.n_crops, w.crop_size, w.n_image_tokens) == (size, 0, 0, tokens)
    assert w.prefill_len == 1 + tokens + 5  # BOS + image + prompt
    assert w.model == OCR2


@pytest.mark.parametrize(
    ("width", "height", "grid"),
    [
        # A4 portrait, ratio 1654/2339 = 0.7071. Candidates (2 <= i*j <= 6): (2,3)=0.667 |diff| 0.040,
        # (2,2)=1.0 diff 0.293, (1,2)=0.5 diff 0.207, (1,1) is not a candidate -> (2,3)
        (1654, 2339, (2, 3)),
        # landscape A4, ratio 1.414: (3,2)=1.5 diff 0.086 beats (2,2)=1.0 diff 0.414 and (2,1)=2.0 diff 0.586
        (2339, 1654, (3, 2)),
        # 800x600 (> 768 wide, so crops), ratio 1.333: (3,2)=1.5 diff 0.167 beats (2,2) diff 0.333; the page
        # is UPSCALED to 3*768 x 2*768 = 2304x1536 and cut into 6 crops
        (800, 600, (3, 2)),
        # square: ratio 1.0 = (2,2) exactly (no other candidate has ratio 1 with i*j <= 6)
        (1000, 1000, (2, 2)),
        # 3000x1000: ratio 3.0 = (3,1) exactly
        (3000, 1000, (3, 1)),
        # 769x100: ratio 7.69; the widest candidate is (6,1)=6.0
        (769, 100, (6, 1)),
        # tie at ratio 1.25, midway between (2,2)=1.0 (product 4, earlier) and (3,2)=1.5 (product 6, later):
        # the later wins only if area > 0.5*768*768*6 = 1,769,472. 1250*1000 = 1,250,000 -> stays (2,2);
        (1250, 1000, (2, 2)),
        # 1600*1280 = 2,048,000 > 1,769,472 -> (3,2)
        (1600, 1280, (3, 2)),
    ],
)
def test_crop_grids(width, height, grid):
    w = ocr2(width, height)
    i, j = grid
    assert (w.w_crop, w.h_crop, w.n_crops, w.crop_size, w.global_view_size) == (i, j, i * j, 768, 1024)
    # global: 16*16 + 1 separator = 257; crops: (12*i) * (12*j) = 144*i*j, no newline tokens
    assert (w.global_image_tokens, w.crops_image_tokens) == (257, 144 * i * j)
    assert (w.global_queries, w.crop_queries) == (16, 12)
    assert w.n_image_tokens == 257 + 144 * i * j


def test_a4_page_tokens():
    # the brief's reference page: 2x3 crops -> 257 + 144*6 = 257 + 864 = 1121 (OCR-1 gundam: 903)
    assert ocr2(1654, 2339).n_image_tokens == 1121
    assert VisionWorkload.from_page(1654, 2339, "gundam").n_image_tokens == 903


@pytest.mark.parametrize("wh", [(768, 768), (500, 300), (768, 1)])
def test_no_crops_at_or_below_768(wh):
    # crops iff NOT (w <= 768 and h <= 768): the global 1024 view alone, 257 tokens
    w = ocr2(*wh)
    assert (w.n_crops, w.w_crop, w.h_crop, w.n_image_tokens) == (0, 1, 1, 257)


def test_max_image_tokens_by_hand():
    # small: 145; base: 257; gundam: 257 + 144 * (largest i*j = 6) = 1121
    assert {m: max_image_tokens(p, OCR2) for m, p in MODES_OCR2.items()} == {"small": 145, "base": 257, "gundam": 1121}


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"mode": "base", "image_size": 640}, "image_size=640 cannot run on deepseek-ocr-2"),
        ({"mode": "base", "image_size": 1280}, "use image_size=768 or 1024"),
        ({"mode": "gundam", "base_size": 512}, "base_size=512 cannot run"),
        ({"mode": "gundam", "image_size": 1024}, "use image_size=768"),
        ({"mode": "tiny"}, "unknown mode 'tiny' for --model deepseek-ocr-2: use one of small, base, gundam"),
        ({"mode": "large"}, "unknown mode 'large'"),
    ],
)
def test_other_sizes_refused_in_one_line(kw, needle):
    mode = kw.pop("mode")
    with pytest.raises(WorkloadError, match=needle) as err:
        ocr2(1654, 2339, mode, **kw)
    assert len(str(err.value).splitlines()) == 1


def test_unknown_model_refused():
    with pytest.raises(WorkloadError, match="unknown model 'deepseek-ocr-3': use one of deepseek-ocr, deepseek-ocr-2"):
        VisionWorkload.from_page(100, 100, "gundam", model="deepseek-ocr-3")


def test_signature_names_the_family():
    one = VisionWorkload.from_page(1654, 2339, "base").signature()
    two = ocr2(1654, 2339, "base").signature()
    assert one["model"] == "deepseek-ocr" and two["model"] == OCR2
    # same view size (1024) and no crops, different token layout: 273 vs 257
    assert (one["n_image_tokens"], two["n_image_tokens"]) == (273, 257)
    # a stored workload without the field (written before families existed) reads back as OCR-1
    d = VisionWorkload.from_page(1654, 2339, "gundam").to_dict()
    del d["model"]
    assert VisionWorkload.from_dict(d).model == "deepseek-ocr"
