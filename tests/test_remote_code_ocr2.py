"""Backend remote-code on a DeepSeek-OCR 2 snapshot: the project's own tiny look-alike
(assembled from datasets/fixtures: tiny_snapshots.py), through the pinned env and the worker.

Expected numbers are derived by hand from the look-alike's dimensions (deepencoderv2.py: the
query encoder is 2 Qwen2 layers of width 32, 4 heads x 8, 2 key/value heads, FFN 64, query
tables of 144 and 256; projector Linear(32, 32)) and from DeepSeek-OCR 2's infer() rules
(crops of 768, 2..6 of them, no newline tokens), never copied from a measurement.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from tiny_snapshots import tiny_snapshot

from core.workload import VisionWorkload
from vendor_shim.backends import get_backend
from vendor_shim.errors import VendorInputError
from vendor_shim.remote_code.env import ensure_env
from vendor_shim.remote_code.snapshot import FAMILIES, SnapshotError, load_snapshot

TINY2 = tiny_snapshot("deepseek-ocr-2")
TINY1 = tiny_snapshot("deepseek-ocr")

# deepencoderv2.py of the look-alike
ENC_WIDTH, ENC_LAYERS, ENC_HEADS, ENC_KV_HEADS, ENC_FFN = 32, 2, 4, 2, 64
ENC_HEAD_DIM = ENC_WIDTH // ENC_HEADS
PROJ_IN, PROJ_OUT = 32, 32  # projector: encoder width -> decoder hidden (config.json)


def encoder_flops(n_query: int, batch: int) -> int:
    """One query-encoder call: SAM tokens + as many queries, so L = 2 * n_query per batch element."""
    length, kv = 2 * n_query, ENC_KV_HEADS * ENC_HEAD_DIM
    proj = 2 * length * ENC_WIDTH * (ENC_WIDTH + 2 * kv + ENC_WIDTH)  # q, k, v, o
    attn = 4 * ENC_HEADS * length * length * ENC_HEAD_DIM  # scores and weighted sum
    mlp = 6 * length * ENC_WIDTH * ENC_FFN  # gate, up, down
    rope = 2 * (ENC_HEAD_DIM // 2) * length  # transformers' rotary embedding: one bmm per call (batch 1)
    return ENC_LAYERS * batch * (proj + attn + mlp) + rope


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "snapshot"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


# ---- the snapshot: family, files, refusals (no subprocess) -------------------------------------------


def test_family_is_read_from_config_json():
    assert load_snapshot(TINY2).family == "deepseek-ocr-2"
    assert load_snapshot(TINY2).model_module == "modeling_deepseekocr2"
    assert load_snapshot(TINY1).family == "deepseek-ocr"


def test_code_hashes_cover_every_ocr2_code_file():
    snap = load_snapshot(TINY2)
    for name in (*FAMILIES["deepseek-ocr-2"].code_files, "config.json"):
        assert snap.code_hashes[name] == hashlib.sha256((TINY2 / name).read_bytes()).hexdigest()
    assert snap.signature()["family"] == "deepseek-ocr-2"


@pytest.mark.parametrize("name", ["deepencoderv2.py", "modeling_deepseekocr2.py", "modeling_deepseekv2.py"])
def test_missing_ocr2_file_is_named(tmp_path, name):
    snap = _copy(TINY2, tmp_path)
    (snap / name).unlink()
    with pytest.raises(SnapshotError) as err:
        get_backend("remote-code", vendor_dir=str(snap), trust_remote_code=True, model="deepseek-ocr-2")
    msg = str(err.value)
    assert err.value.exit_code == 2 and name in msg and "DeepSeek-OCR 2" in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("snapshot", "model", "fix"),
    [(TINY2, "deepseek-ocr", "--model deepseek-ocr-2"), (TINY1, "deepseek-ocr-2", "--model deepseek-ocr")],
    ids=["ocr2-snapshot-ocr1-model", "ocr1-snapshot-ocr2-model"],
)
def test_family_mismatch_names_config_json_and_the_fix(snapshot, model, fix):
    with pytest.raises(SnapshotError) as err:
        get_backend("remote-code", vendor_dir=str(snapshot), trust_remote_code=True, model=model)
    msg = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in msg
    assert str(snapshot / "config.json") in msg and f"pass {fix} " in msg


def test_workload_of_the_other_family_is_refused_before_the_worker():
    backend = get_backend("remote-code", vendor_dir=str(TINY2), trust_remote_code=True, model="deepseek-ocr-2")
    w = VisionWorkload.from_page(800, 1000, "base", impl="official")  # a DeepSeek-OCR workload
    with pytest.raises(VendorInputError, match=r"config\.json.*--model deepseek-ocr-2"):
        backend.measure_dict(w, device="cpu", vision_only=False)


def test_ocr2_auto_map_must_point_into_modeling_deepseekocr2(tmp_path):
    snap = _copy(TINY2, tmp_path)
    cfg = snap / "config.json"
    cfg.write_text(
        cfg.read_text().replace('"modeling_deepseekocr2.DeepseekOCR2ForCausalLM"', '"modeling_deepseekocr.M"')
    )
    with pytest.raises(SnapshotError, match=r"modeling_deepseekocr2\.<Class>"):
        load_snapshot(snap)


# ---- the real path: one worker, several pages --------------------------------------------------------

# (width, height, mode) -> image tokens by infer()'s rules: global 1024 view -> 16 x 16 queries + separator;
# crops of 768 -> 12 x 12 queries each, laid out as (12 w) x (12 h), no newline tokens; a 768 view -> 12 x 12 + 1.
PAGES = {
    "gundam-a4": ((1654, 2339, "gundam"), (2, 3), 16 * 16 + 1 + (12 * 2) * (12 * 3)),  # aspect 0.71 -> 2 x 3
    "gundam-tie": ((1600, 1280, "gundam"), (3, 2), 16 * 16 + 1 + (12 * 3) * (12 * 2)),  # 1.25: 2x2/3x2 tie, area
    "gundam-small-page": ((700, 700, "gundam"), None, 16 * 16 + 1),  # both sides <= 768: no crops
    "base": ((800, 1000, "base"), None, 16 * 16 + 1),
    "small": ((800, 1000, "small"), None, 12 * 12 + 1),
}


@pytest.fixture(scope="module")
def traces():
    ensure_env()
    backend = get_backend("remote-code", vendor_dir=str(TINY2), trust_remote_code=True, model="deepseek-ocr-2")
    workloads = [
        VisionWorkload.from_page(w, h, mode, prompt_tokens=5, decode_tokens=1, impl="official", model="deepseek-ocr-2")
        for (w, h, mode), _, _ in PAGES.values()
    ]
    docs = backend.measure_dicts(workloads, device="cpu", vision_only=False)
    for doc in docs:
        assert not isinstance(doc, Exception), doc
    return dict(zip(PAGES, docs, strict=True))


@pytest.mark.parametrize("page", list(PAGES))
def test_token_layout_per_mode(traces, page):
    (_, _, _), grid, n_image = PAGES[page]
    r = traces[page]["received"]
    assert r["n_image_tokens"] == n_image
    assert r["prefill_len"] == 1 + 5 + n_image  # BOS, prompt, image
    if grid is None:
        assert r["n_crops"] == 0
    else:
        assert (r["w_crop"], r["h_crop"], r["n_crops"], r["crop_size"]) == (*grid, grid[0] * grid[1], 768)


@pytest.mark.parametrize("page", list(PAGES))
def test_hand_derived_encoder_and_projector_flops(traces, page):
    (_, _, mode), grid, _ = PAGES[page]
    doc = traces[page]
    assert doc["complete"] is True and doc["coverage"]["uncounted_ops"] == []
    enc, proj = doc["stages"]["qwen2_encoder"], doc["stages"]["projector"]
    n_global = 144 if mode == "small" else 256
    assert enc["global"]["tensor_flops"] == encoder_flops(n_global, 1)
    assert proj["global"]["tensor_flops"] == 2 * n_global * PROJ_IN * PROJ_OUT
    n_crops = grid[0] * grid[1] if grid else 0
    assert enc["crops"]["tensor_flops"] == (encoder_flops(144, n_crops) if n_crops else 0)
    assert proj["crops"]["tensor_flops"] == 2 * 144 * n_crops * PROJ_IN * PROJ_OUT


def test_trace_records_the_family_and_every_code_hash(traces):
    env = traces["base"]["environment"]
    assert env["family"] == "deepseek-ocr-2" and traces["base"]["workload"]["model"] == "deepseek-ocr-2"
    for name in (*FAMILIES["deepseek-ocr-2"].code_files, "config.json"):
        assert env["code_hashes"][name] == hashlib.sha256((TINY2 / name).read_bytes()).hexdigest()
    assert "clip" not in traces["base"]["stages"]
