"""Backend remote-code on the project's own tiny snapshot (assembled from datasets/fixtures: tiny_snapshots.py).

These run the real path: the pinned transformers-4.46 environment (built once per machine
under the cache dir, ~10 s from PyPI), the worker subprocess, the snapshot's own classes,
and the counting harness.  Expected numbers are derived by hand from the tiny snapshot's
dimensions (config.json: hidden 32, vocab 129280, 2 layers of 2 heads x 16, dense MLP 64,
4 routed experts of 16 with top-2, 1 shared expert of 16; deepencoder.py: projector
Linear(128, 32)), never copied from a measurement.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_snapshots import tiny_snapshot

from core.workload import VisionWorkload
from vendor_shim.backends import get_backend
from vendor_shim.errors import VendorInputError, VendorRunError
from vendor_shim.measure import measure
from vendor_shim.remote_code.env import ensure_env
from vendor_shim.remote_code.snapshot import FAMILIES, SnapshotError, load_snapshot

TINY = tiny_snapshot("deepseek-ocr")

# Tiny snapshot dimensions (config.json / deepencoder.py), used by the hand derivations below.
HIDDEN, VOCAB, HEADS, HEAD_DIM = 32, 129280, 2, 16
DENSE_FFN, MOE_FFN, TOP_K, SHARED_FFN, N_EXPERTS = 64, 16, 2, 16, 4
PROJ_IN, PROJ_OUT = 128, 32


@pytest.fixture(scope="session")
def pinned_env():
    """Build (or reuse) the pinned environment once per session."""
    return ensure_env()


def _copy_tiny(tmp_path: Path) -> Path:
    dst = tmp_path / "snapshot"
    shutil.copytree(TINY, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


# ---- refusals and bad snapshots: no subprocess needed -----------------------------------------------


def test_untrusted_remote_code_is_refused_with_exit_2():
    with pytest.raises(VendorInputError) as err:
        get_backend("remote-code", vendor_dir=str(TINY), trust_remote_code=False)
    assert err.value.exit_code == 2
    assert "--trust-remote-code" in str(err.value)
    assert "\n" not in str(err.value)


def test_vendor_dir_that_is_a_file_says_so(tmp_path):
    with pytest.raises(SnapshotError, match="is a file, not a folder") as err:
        load_snapshot(TINY / "config.json")
    assert err.value.exit_code == 2


def test_missing_vendor_dir_is_exit_2(tmp_path):
    with pytest.raises(SnapshotError) as err:
        load_snapshot(tmp_path / "nowhere")
    assert err.value.exit_code == 2


@pytest.mark.parametrize("name", ["deepencoder.py", "config.json"])
def test_missing_file_is_named(tmp_path, name):
    snap = _copy_tiny(tmp_path)
    (snap / name).unlink()
    with pytest.raises(SnapshotError) as err:
        get_backend("remote-code", vendor_dir=str(snap), trust_remote_code=True)
    assert err.value.exit_code == 2
    assert name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"architectures": ["DeepseekOCRForCausalLM"]', '"architectures": ["LlamaForCausalLM"]'),
        ('"AutoModel": "modeling_deepseekocr.DeepseekOCRForCausalLM"', '"AutoModel": "other.Model"'),
        ('"hidden_size": 32,', '"hidden_size": "wide",'),
        ("{", "{{"),
    ],
    ids=["architecture", "auto_map", "field", "json"],
)
def test_bad_config_names_config_json(tmp_path, old, new):
    snap = _copy_tiny(tmp_path)
    cfg = snap / "config.json"
    text = cfg.read_text()
    assert old in text
    cfg.write_text(text.replace(old, new, 1))
    with pytest.raises(SnapshotError) as err:
        load_snapshot(snap)
    assert err.value.exit_code == 2
    assert "config.json" in str(err.value) and "\n" not in str(err.value)


def test_code_hashes_cover_every_code_file():
    snap = load_snapshot(TINY)
    for name in (*FAMILIES["deepseek-ocr"].code_files, "config.json"):
        assert snap.code_hashes[name] == hashlib.sha256((TINY / name).read_bytes()).hexdigest()
    assert snap.signature()["code_hashes"] == snap.code_hashes


def test_lm_head_last_is_refused_for_the_official_forward(tmp_path):
    backend = get_backend("remote-code", vendor_dir=str(TINY), trust_remote_code=True)
    w = VisionWorkload.from_page(600, 500, "small", impl="official", lm_head_scope="last")
    with pytest.raises(VendorInputError, match="lm_head"):
        backend.measure_dict(w, device="cpu", vision_only=False)


# ---- the real path: pinned env + worker + harness -------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vendor_shim", "--backend", "remote-code", "--vendor-dir", str(TINY), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def test_cli_without_trust_exits_2():
    proc = _cli("--width", "800", "--height", "1000", "--json")
    assert proc.returncode == 2, proc.stderr
    assert "--trust-remote-code" in proc.stderr
    assert proc.stdout == ""


@pytest.fixture(scope="module")
def tiny_trace(pinned_env):
    """The CLI, same flags and JSON as the hf backend, on a gundam page of 800x1000.

    Aspect 0.8: the closest crop grid is (2 cols, 3 rows) -> 6 crops of 640.
    """
    w = VisionWorkload.from_page(800, 1000, "gundam", prompt_tokens=5, decode_tokens=2, impl="official")
    flags = ["--trust-remote-code", "--mode", "gundam", "--width", "800", "--height", "1000"]
    flags += ["--prompt-tokens", "5", "--decode-tokens", "2", "--device", "cpu", "--no-fvcore", "--json"]
    proc = _cli(*flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return w, json.loads(proc.stdout)


def test_tiny_end_to_end_is_complete_and_sums(tiny_trace):
    _, d = tiny_trace
    assert d["complete"] is True
    assert d["coverage"]["uncounted_ops"] == []
    t = d["totals"]
    assert t["stage_sum"] == t["counter_total"] == t["audit_total"] > 0
    assert t["unattributed"] == 0
    env = d["environment"]
    assert env["backend"] == "remote-code"
    assert env["transformers"].startswith("4.46.")
    assert env["torchvision"] == "stub"
    assert env["code_hashes"] == load_snapshot(TINY).code_hashes


def test_tiny_token_layout(tiny_trace):
    w, d = tiny_trace
    r = d["received"]
    # global 1024 view: (16 + 1) * 16 + 1 = 273; crops 2x3 of 640: (10*2 + 1) * (10*3) = 630.
    assert (r["w_crop"], r["h_crop"], r["n_crops"]) == (2, 3, 6)
    assert r["n_image_tokens"] == 273 + 630 == w.n_image_tokens
    assert r["prefill_len"] == 1 + 903 + 5
    assert r["decode_forwards"] == 2
    assert r["lm_head_scope"] == "all"


def test_tiny_hand_derived_stage_flops(tiny_trace):
    _, d = tiny_trace
    s = d["stages"]
    # Projector Linear(128, 32): 2*128*32 = 8192 FLOPs per row.
    assert s["projector"]["global"]["tensor_flops"] == 16 * 16 * 8192  # 256 rows
    assert s["projector"]["crops"]["tensor_flops"] == 6 * 10 * 10 * 8192  # 6 crops x 100 rows
    # lm_head over every prefill position (official forward): 2 * 909 * 32 * 129280.
    assert s["prefill"]["lm_head"]["tensor_flops"] == 2 * 909 * HIDDEN * VOCAB
    assert s["decode"]["lm_head"]["tensor_flops"] == 2 * (2 * HIDDEN * VOCAB)

    # One decode step over L keys, per layer: q,k,v,o 4*2*32*32 = 8192; QK^T and AV 2 * 2*H*L*D = 128*L;
    # RoPE frequencies recomputed in the layer: (8 x 1) @ (1 x 1) -> 2*8 = 16.
    # Layer 0 dense SwiGLU 3*2*32*64 = 12288; layer 1: router 2*32*4 = 256, top-2 experts 2*3*2*32*16 = 6144,
    # shared expert 3*2*32*16 = 3072.
    def step(keys: int) -> int:
        attn = 4 * 2 * HIDDEN * HIDDEN + 2 * (2 * HEADS * keys * HEAD_DIM) + 2 * (HEAD_DIM // 2)
        dense = 3 * 2 * HIDDEN * DENSE_FFN
        moe = 2 * HIDDEN * N_EXPERTS + TOP_K * 3 * 2 * HIDDEN * MOE_FFN + 3 * 2 * HIDDEN * SHARED_FFN
        return 2 * attn + dense + moe

    steps = s["decode"]["steps"]
    assert [st["decoder"]["tensor_flops"] for st in steps] == [step(909 + 1), step(909 + 2)]
    assert s["decode"]["decoder"]["tensor_flops"] == step(910) + step(911)


def test_tiny_hand_derived_image_layout_bytes(tiny_trace):
    """The official layout of the projected views, measured in the prefill's decoder stage (hand-derived)."""
    _, d = tiny_trace
    db = {"float32": 4, "bfloat16": 2}[d["dtype"]]
    ops = d["op_breakdown"]["prefill"]["decoder"]
    s, image = 909, 903  # prefill positions, image rows (273 + 630)
    # inputs_embeds[0].masked_scatter_(mask[..., None], features): reads the 909 bools and the 903 x 32 feature
    # rows, overwrites the 909 x 32 embeddings
    scatter = ops["aten.masked_scatter_.default"]
    assert scatter["io_bytes"] == s + image * HIDDEN * db + s * HIDDEN * db
    assert scatter["activation_bytes"] == s * HIDDEN * db
    # cats: the crops' and the global view's CLIP/SAM features (600 and 256 rows of 64 + 64), the newline columns
    # (630 and 272 rows out), cat([crops, global, separator]) and the one-image list's cat (903 rows each); then
    # the decoder's own, per layer (2): cat(freqs, freqs) in float32 (909 x 16), rotate_half's cat for q and k
    # (909 x 32 each), and in the MoE layer moe_infer's cat of the expert outputs (909 x top-2 rows of 32)
    layout = ((600 + 256) * 128 + 630 * HIDDEN + 272 * HIDDEN + 2 * image * HIDDEN) * db
    decoder = 2 * (s * HEAD_DIM * 4 + 2 * s * HIDDEN * db) + s * 2 * HIDDEN * db
    assert ops["aten.cat.default"]["activation_bytes"] == layout + decoder
    assert ops["aten.cat.default"]["weight_bytes"] == 3 * HIDDEN * db  # image_newline twice, view_seperator once


def test_tiny_official_profile_bytes_agree_with_the_run(tiny_trace):
    """The analytic `official` profile against the measured run: io and activation bytes of every leaf."""
    from test_verify_cli import TINY_OVERRIDES

    from analytic.model import build_cost_model
    from verify.runner import with_vendor_routing

    w, d = tiny_trace
    w = with_vendor_routing(VisionWorkload.from_dict(d["workload"]), d)
    est = build_cost_model(TINY_OVERRIDES).estimate(w)
    for stage, parts in d["stages"].items():
        for part, leaf in parts.items():
            if part == "steps" or not leaf["calls"]:
                continue
            for metric in ("io_bytes", "activation_bytes"):
                a, m = est.stages[stage][part][metric], leaf[metric]
                assert abs(a - m) <= 0.005 * m, (stage, part, metric, a, m)


def test_tiny_vision_meta_equals_model_forward(tiny_trace):
    """run_vision (direct calls, meta device) == the vision the model's forward ran on CPU."""
    w, d = tiny_trace
    v = measure(w, backend="remote-code", vendor_dir=str(TINY), trust_remote_code=True, device="meta", vision_only=True)
    v = v.to_dict()
    assert v["complete"] is True
    for stage in ("sam", "clip", "projector"):
        for branch in ("global", "crops"):
            assert v["stages"][stage][branch]["tensor_flops"] == d["stages"][stage][branch]["tensor_flops"] > 0


def test_import_error_in_snapshot_names_the_file(tmp_path, pinned_env):
    snap = _copy_tiny(tmp_path)
    enc = snap / "deepencoder.py"
    enc.write_text("import dsocr_no_such_module  # broken on purpose\n" + enc.read_text())
    w = VisionWorkload.from_page(500, 500, "tiny", impl="official")
    with pytest.raises(VendorInputError) as err:
        measure(w, backend="remote-code", vendor_dir=str(snap), trust_remote_code=True, device="meta", vision_only=True)
    assert err.value.exit_code == 2
    assert "deepencoder.py" in str(err.value) and "\n" not in str(err.value)


def _write_word_tokenizer(snap: Path) -> None:
    """A whitespace word-level tokenizer (tokenizers' JSON format): 'page' is one token."""
    vocab = {"<unk>": 2, "page": 3, "free": 4, "ocr": 5}
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    (snap / "tokenizer.json").write_text(json.dumps(doc))
    (snap / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def test_snapshot_tokenizer_tokenizes_the_prompt(tmp_path, pinned_env):
    """With a tokenizer in the snapshot the prompt is really tokenized to the workload's count."""
    snap = _copy_tiny(tmp_path)
    _write_word_tokenizer(snap)
    # tiny mode, 500x500: one 512 view, nq = ceil(32 / 4) = 8 -> (8 + 1) * 8 + 1 = 73 image tokens.
    w = VisionWorkload.from_page(500, 500, "tiny", prompt_tokens=4, decode_tokens=0, impl="official")
    d = measure(w, backend="remote-code", vendor_dir=str(snap), trust_remote_code=True, device="cpu").to_dict()
    assert d["environment"]["tokenizer"] == "snapshot"
    assert d["received"]["n_image_tokens"] == 73
    assert d["received"]["prompt_tokens"] == 4
    assert d["received"]["prefill_len"] == 1 + 73 + 4
    assert d["stages"]["prefill"]["lm_head"]["tensor_flops"] == 2 * 78 * HIDDEN * VOCAB


def test_runtime_error_in_snapshot_is_exit_3_at_its_line(tmp_path, pinned_env):
    snap = _copy_tiny(tmp_path)
    enc = snap / "deepencoder.py"
    text = enc.read_text()
    anchor = "        embedded = self.embeddings(x, patch_embeds)\n"  # the CLIP-like forward
    assert anchor in text
    enc.write_text(text.replace(anchor, '        raise RuntimeError("broken on purpose")\n' + anchor, 1))
    w = VisionWorkload.from_page(500, 500, "tiny", impl="official")
    with pytest.raises(VendorRunError) as err:
        measure(w, backend="remote-code", vendor_dir=str(snap), trust_remote_code=True, device="meta", vision_only=True)
    assert err.value.exit_code == 3
    assert "broken on purpose" in str(err.value) and "deepencoder.py:" in str(err.value)


def test_one_worker_counts_many_workloads(pinned_env):
    """measure_dicts: one subprocess, one model build, a trace per workload."""
    backend = get_backend("remote-code", vendor_dir=str(TINY), trust_remote_code=True)
    pages = [VisionWorkload.from_page(500, 500, m, impl="official") for m in ("tiny", "small")]
    a, b = backend.measure_dicts(pages, device="meta", vision_only=True)
    assert not isinstance(a, Exception) and not isinstance(b, Exception)
    assert a["timing"]["model_reused"] is False and b["timing"]["model_reused"] is True
    # Projector Linear(128, 32), 2*128*32 = 8192 FLOPs a row: tiny 512 -> 8*8 rows, small 640 -> 10*10 rows.
    assert a["stages"]["projector"]["global"]["tensor_flops"] == 64 * 8192
    assert b["stages"]["projector"]["global"]["tensor_flops"] == 100 * 8192


def test_tiny_shapes_only_equals_real_run_op_by_op(pinned_env):
    """The official code (per-expert moe_infer loop, .cuda() redirect, SDPA vision) counted hollow == for real.

    The routing differs (balanced round-robin vs the random router), so per-op call counts of the expert loop
    may differ; the FLOPs of every op cannot: each token goes through exactly top-2 experts either way."""
    w = VisionWorkload.from_page(800, 1000, "gundam", prompt_tokens=5, decode_tokens=2, impl="official")
    kw = {"backend": "remote-code", "vendor_dir": str(TINY), "trust_remote_code": True, "device": "cpu"}
    real = measure(w, execution="real", **kw).to_dict()
    shapes = measure(w, execution="shapes", **kw).to_dict()
    assert real["received"]["execution"] == {"mode": "real"}
    assert shapes["received"]["execution"]["mode"] == "shapes"
    assert shapes["received"]["execution"]["topk_calls"] == 3  # one MoE layer x (prefill + 2 decode steps)

    def flops(d):
        return {
            (s, p, op): c["flops"]
            for s, parts in d["op_breakdown"].items()
            for p, ops in parts.items()
            for op, c in ops.items()
        }

    assert flops(shapes) == flops(real)
    assert shapes["stages"]["decode"]["steps"] == real["stages"]["decode"]["steps"]
    assert shapes["totals"] == real["totals"]


# ---- a snapshot whose files import their siblings by bare name ---------------------------------------


def test_bare_name_sibling_import_is_the_same_module(tmp_path):
    """`from configuration_deepseek_v2 import X` and `from .configuration_deepseek_v2 import X` give one class."""
    from vendor_shim.remote_code.model import import_snapshot
    from vendor_shim.remote_code.snapshot import Snapshot

    root = tmp_path / "snap"
    root.mkdir()
    (root / "configuration_deepseek_v2.py").write_text("class DeepseekV2Config:\n    pass\n")
    (root / "modeling_deepseekv2.py").write_text("from configuration_deepseek_v2 import DeepseekV2Config\n")
    (root / "modeling_deepseekocr.py").write_text(
        "from .configuration_deepseek_v2 import DeepseekV2Config\nfrom . import modeling_deepseekv2\n"
    )
    hashes = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.glob("*.py")}
    before = (set(sys.modules), list(sys.meta_path))
    try:
        mod = import_snapshot(Snapshot(root, {}, hashes, has_tokenizer=False, weight_files=()))
        assert mod.modeling_deepseekv2.DeepseekV2Config is mod.DeepseekV2Config
        assert sys.modules["configuration_deepseek_v2"] is sys.modules[f"{mod.__package__}.configuration_deepseek_v2"]
    finally:
        for name in set(sys.modules) - before[0]:
            del sys.modules[name]
        sys.meta_path[:] = before[1]


def test_tiny_snapshot_with_bare_name_imports_runs_with_its_own_hashes(tmp_path, pinned_env):
    snap = _copy_tiny(tmp_path)
    model = snap / "modeling_deepseekv2.py"
    text = model.read_text()
    assert "from .configuration_deepseek_v2 import" in text
    model.write_text(text.replace("from .configuration_deepseek_v2 import", "from configuration_deepseek_v2 import"))
    w = VisionWorkload.from_page(500, 500, "tiny", impl="official")
    d = measure(w, backend="remote-code", vendor_dir=str(snap), trust_remote_code=True, device="meta", vision_only=True)
    d = d.to_dict()
    assert d["complete"] is True
    assert d["environment"]["code_hashes"]["modeling_deepseekv2.py"] == hashlib.sha256(model.read_bytes()).hexdigest()
    # Projector Linear(128, 32), 2*128*32 = 8192 FLOPs a row: tiny 512 -> 8*8 rows.
    assert d["stages"]["projector"]["global"]["tensor_flops"] == 64 * 8192
