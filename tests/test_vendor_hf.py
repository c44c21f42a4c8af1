"""Backend `hf` (transformers' UnlimitedOcr classes at DeepSeek-OCR dims) under the complete counter.

Expected FLOPs are derived by hand from the facts page's shapes (2 FLOPs per multiply-add,
attention over the full query x key product).  Full-size vision runs on the meta device
(shapes only); decoder runs use a reduced depth (2 of 12 layers: dense layer 0 + one MoE
layer), as the test names say.
"""

from __future__ import annotations

import math

import pytest
import torch

from analytic.model import build_cost_model
from core.workload import VisionWorkload
from vendor_shim import ModelCache, measure
from vendor_shim.backends.hf import HfBackend
from vendor_shim.errors import VendorInputError, WorkloadMismatchError
from vendor_shim.harness import run_counted

pytest.importorskip("transformers.models.unlimited_ocr")

VOCAB, HID, HEADS, HDIM = 129280, 1280, 10, 128


def sam_flops(side: int, batch: int) -> int:
    """SAM-B at side x side (facts page): patch conv, 8 windowed + 4 global blocks, neck, net_2, net_3."""
    g = side // 16
    t = g * g
    gp = math.ceil(g / 14) * 14  # window partition pads g to a multiple of 14
    nw, tp = (gp // 14) ** 2, gp * gp
    f = 2 * t * 768 * (3 * 16 * 16)  # patch embedding conv 3->768, k16 s16
    windowed = (
        2 * tp * 768 * 2304  # qkv on padded tokens
        + 4 * nw * 12 * 196 * 196 * 64  # SDPA per window
        + 2 * (2 * nw * 12 * 14 * 14 * 14 * 64)  # rel-pos einsums bhwc,hkc->bhwk and bhwc,wkc->bhwk
        + 2 * tp * 768 * 768  # output projection on padded tokens
        + 2 * 2 * t * 768 * 3072  # MLP on unpadded tokens
    )
    global_ = (
        2 * t * 768 * 2304
        + 4 * 12 * t * t * 64
        + 2 * (2 * 12 * g * g * g * 64)
        + 2 * t * 768 * 768
        + 2 * 2 * t * 768 * 3072
    )
    f += 8 * windowed + 4 * global_
    f += 2 * t * 768 * 256 + 2 * t * 256 * 256 * 9  # neck: 1x1 conv, 3x3 conv
    f += 2 * (g // 2) ** 2 * 256 * 512 * 9 + 2 * (g // 4) ** 2 * 512 * 1024 * 9  # net_2, net_3 (stride 2)
    return batch * f


def clip_flops(side: int, batch: int) -> int:
    """CLIP-L on SAM's (side/64)^2 features + CLS: 24 blocks of q,k,v,o + SDPA + MLP 4096."""
    t = (side // 64) ** 2 + 1
    per_block = 4 * 2 * t * 1024 * 1024 + 4 * 16 * t * t * 64 + 2 * 2 * t * 1024 * 4096
    return batch * 24 * per_block


def projector_flops(side: int, batch: int) -> int:
    return batch * 2 * (side // 64) ** 2 * 2048 * 1280  # Linear(2048, 1280) per projected row


def decoder_layer_flops(q: int, keys: int, layer: int) -> int:
    """One decoder layer for q new tokens attending over `keys` keys (eager or SDPA: full product)."""
    f = 4 * 2 * q * HID * HID  # q, k, v, o projections (MHA 10 x 128)
    f += 2 * (2 * HEADS * q * keys * HDIM)  # QK^T and AV
    if layer == 0:
        return f + 3 * 2 * q * HID * 6848  # dense SwiGLU 6848
    f += 2 * q * HID * 64  # router Linear(1280, 64)
    f += 2 * (6 * q) * HID * (2 * 896) + 2 * (6 * q) * 896 * HID  # top-6 experts: gate_up, down
    return f + 3 * 2 * q * HID * 1792  # shared experts SwiGLU 2 x 896


@pytest.mark.parametrize(
    ("mode", "width", "height"),
    [
        ("tiny", 800, 600),
        ("small", 800, 600),
        ("base", 800, 600),
        ("large", 800, 600),
        ("gundam", 600, 500),
        ("gundam", 3000, 700),
    ],
)
def test_hf_full_size_vision_on_meta_every_mode(mode, width, height):
    w = VisionWorkload.from_page(width, height, mode, impl="hf")
    tr = measure(w, device="meta", vision_only=True, fvcore=False)
    assert tr.complete, tr.coverage["uncounted_ops"]
    g = w.global_view_size
    assert tr.stages["sam"]["global"]["tensor_flops"] == sam_flops(g, 1)
    assert tr.stages["clip"]["global"]["tensor_flops"] == clip_flops(g, 1)
    assert tr.stages["projector"]["global"]["tensor_flops"] == projector_flops(g, 1)
    n = w.n_crops  # 0 without crops: the crops branch is present with zeros
    assert tr.stages["sam"]["crops"]["tensor_flops"] == (sam_flops(640, n) if n else 0)
    assert tr.stages["clip"]["crops"]["tensor_flops"] == (clip_flops(640, n) if n else 0)
    assert tr.received["n_image_tokens"] == w.n_image_tokens


def test_hf_full_size_vision_on_meta_matches_hand_derivation_gundam():
    w = VisionWorkload.from_page(1654, 2339, "gundam", prompt_tokens=12, impl="hf")
    tr = measure(w, device="meta", vision_only=True, fvcore=False)
    assert tr.complete, tr.coverage["uncounted_ops"]
    assert (w.w_crop, w.h_crop, w.n_crops) == (2, 3, 6)
    for side, batch, branch in ((1024, 1, "global"), (640, 6, "crops")):
        assert tr.stages["sam"][branch]["tensor_flops"] == sam_flops(side, batch)
        assert tr.stages["clip"][branch]["tensor_flops"] == clip_flops(side, batch)
        assert tr.stages["projector"][branch]["tensor_flops"] == projector_flops(side, batch)
    assert tr.totals["stage_sum"] == tr.totals["counter_total"]
    rec = tr.received
    assert (rec["w_crop"], rec["h_crop"], rec["n_crops"], rec["n_image_tokens"]) == (2, 3, 6, 903)
    assert rec["prefill_len"] == w.prefill_len == 1 + 903 + 12


@pytest.mark.parametrize(
    "w",
    [
        pytest.param(VisionWorkload.from_page(600, 800, "tiny", impl="hf", dtype="bfloat16"), id="tiny-512-view"),
        # custom: 512 global view + a 2x1 grid of 640 crops (the smallest crops case)
        pytest.param(
            VisionWorkload.from_page(
                1300, 640, None, base_size=512, image_size=640, crop_mode=True, impl="hf", dtype="bfloat16"
            ),
            id="512-global-plus-2-crops",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_hf_full_size_vision_cpu_equals_meta(w):
    cpu = measure(w, device="cpu", vision_only=True, fvcore=False)
    meta = measure(w, device="meta", vision_only=True, fvcore=False)
    assert cpu.complete and meta.complete
    for s in ("sam", "clip", "projector"):
        for b in ("global", "crops"):
            assert cpu.stages[s][b]["tensor_flops"] == meta.stages[s][b]["tensor_flops"], (s, b)
    assert cpu.stages["sam"]["global"]["tensor_flops"] == sam_flops(512, 1)
    if w.has_crops:
        assert cpu.stages["sam"]["crops"]["tensor_flops"] == sam_flops(640, 2)
    # the CPU run met the CPU SDPA kernel the shim had to add a formula for
    assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in cpu.coverage["ops_seen"]


@pytest.fixture(scope="module")
def reduced_depth_cache() -> ModelCache:
    return ModelCache()


@pytest.mark.parametrize(("scope", "attn", "vision_device"), [("last", "eager", None), ("all", "sdpa", "meta")])
def test_hf_reduced_depth_2_layers_prefill_and_decode_by_hand(scope, attn, vision_device, reduced_depth_cache):
    be = HfBackend(num_text_layers=2)
    k = 3
    w = VisionWorkload.from_page(
        500,
        700,
        "tiny",
        prompt_tokens=5,
        decode_tokens=k,
        impl="hf",
        lm_head_scope=scope,
        dtype="bfloat16",
        attn_impl=attn,
    )
    tr = measure(
        w, backend=be, device="cpu", model_cache=reduced_depth_cache, fvcore=False, vision_device=vision_device
    )
    assert tr.complete, tr.coverage["uncounted_ops"]
    s = w.prefill_len
    assert s == 1 + 73 + 5  # tiny: (8+1)*8+1 = 73 image tokens
    assert tr.received["prefill_len"] == s and tr.received["n_image_tokens"] == 73
    assert tr.received["decode_forwards"] == k and tr.received["lm_head_scope"] == scope
    assert tr.stages["prefill"]["decoder"]["tensor_flops"] == sum(decoder_layer_flops(s, s, i) for i in range(2))
    rows = 1 if scope == "last" else s
    assert tr.stages["prefill"]["lm_head"]["tensor_flops"] == 2 * rows * HID * VOCAB
    steps = tr.stages["decode"]["steps"]
    assert len(steps) == k
    for t, st in enumerate(steps, start=1):  # step t attends over prefill_len + t keys
        assert st["decoder"]["tensor_flops"] == sum(decoder_layer_flops(1, s + t, i) for i in range(2))
        assert st["lm_head"]["tensor_flops"] == 2 * HID * VOCAB
    assert tr.totals["stage_sum"] == tr.totals["counter_total"]
    assert "aten._grouped_mm.default" in tr.op_breakdown["prefill"]["decoder"]


def test_hf_reduced_depth_2_layers_split_vision_on_meta_equals_full_cpu_run(reduced_depth_cache):
    be = HfBackend(num_text_layers=2)
    w = VisionWorkload.from_page(500, 700, "tiny", prompt_tokens=5, decode_tokens=2, impl="hf", dtype="bfloat16")
    full = measure(w, backend=be, device="cpu", model_cache=reduced_depth_cache, fvcore=False)
    split = measure(w, backend=be, device="cpu", vision_device="meta", model_cache=reduced_depth_cache, fvcore=False)
    assert split.complete and split.received["vision_device"] == "meta"
    assert "mm_encoder_outputs" in split.received["generation_path"]

    def flops(tr):
        return {
            (s, p): leaf["tensor_flops"] for s, parts in tr.stages.items() for p, leaf in parts.items() if p != "steps"
        }

    assert flops(split) == flops(full)
    assert [st["decoder"]["tensor_flops"] for st in split.stages["decode"]["steps"]] == [
        st["decoder"]["tensor_flops"] for st in full.stages["decode"]["steps"]
    ]
    # resident memory: the meta vision build is a counting aid, not weights the model holds twice
    assert split.memory["weight_resident_bytes"] == full.memory["weight_resident_bytes"]
    # KV cache after the prefill and each step, by hand: 2 layers x (K + V) x 10 heads x 128 x 2 bytes = 10,240
    # bytes per position; prefill_len 1 + 73 + 5 = 79
    assert split.memory["kv_cache_resident_bytes"] == [10240 * (79 + t) for t in range(3)]
    # and the analytic model's figures, from the layer shapes alone (parameters x 2 bytes + buffers)
    est = build_cost_model(["decoder.num_layers=2"]).estimate(w).memory
    assert est["weight_resident_bytes"] == full.memory["weight_resident_bytes"]
    assert est["kv_cache_resident_bytes"] == full.memory["kv_cache_resident_bytes"]


def test_hf_input_builder_mismatch_is_loud(monkeypatch):
    w = VisionWorkload.from_page(1654, 2339, "gundam", impl="hf")
    orig = HfBackend.prepare_inputs

    def drop_one_token(self, loaded, workload):
        prep = orig(self, loaded, workload)
        prep.payload["input_ids"] = prep.payload["input_ids"][:, 1:]
        prep.received = HfBackend._read_back(prep.payload)
        return prep

    monkeypatch.setattr(HfBackend, "prepare_inputs", drop_one_token)
    with pytest.raises(WorkloadMismatchError, match="prefill_len"):
        measure(w, device="meta", vision_only=True, fvcore=False)


def test_device_errors_are_input_errors():
    w = VisionWorkload.from_page(1654, 2339, "gundam", impl="hf")
    with pytest.raises(VendorInputError, match="meta"):
        measure(w, device="meta", vision_only=False)
    with pytest.raises(VendorInputError, match="unknown"):
        measure(w, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(VendorInputError, match="cuda"):
            measure(w, device="cuda", vision_only=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_hf_vision_cuda_equals_meta():
    w = VisionWorkload.from_page(1654, 2339, "gundam", impl="hf", dtype="bfloat16")
    gpu = measure(w, device="cuda", vision_only=True, fvcore=False)
    meta = measure(w, device="meta", vision_only=True, fvcore=False)
    assert gpu.complete, gpu.coverage["uncounted_ops"]
    assert gpu.stages == meta.stages or all(
        gpu.stages[s][b]["tensor_flops"] == meta.stages[s][b]["tensor_flops"]
        for s in ("sam", "clip", "projector")
        for b in ("global", "crops")
    )


def test_hf_stock_counter_stacked_above_the_audit_agrees_and_shows_its_own_reads(reduced_depth_cache):
    """The default run counts with the audit alone (the stock counter's registry, its decompositions); stacking the
    stock FlopCounterMode above it (cross_check) gives the same FLOPs on every stage and step: two independent totals.
    The stacked counter's only trace is its own formula evaluation, which the audit below it then sees: the
    _grouped_mm formula reads ``offs[-1].item()`` (a select view and a 4-byte int32 _local_scalar_dense).  By hand:
    2 layers, layer 0 dense, layer 1 MoE with two _grouped_mm (up, down) = 2 x 4 = 8 bytes per forward."""
    be = HfBackend(num_text_layers=2)
    w = VisionWorkload.from_page(500, 700, "tiny", prompt_tokens=5, decode_tokens=2, impl="hf", dtype="bfloat16")
    loaded, _ = reduced_depth_cache.get_or_build(
        be, device="cpu", dtype=w.dtype, attn_impl=w.attn_impl, vision_only=False, execution="shapes"
    )
    lean, stacked = (
        run_counted(be, loaded, w, vision_only=False, fvcore=False, execution="shapes", cross_check=c).to_dict()
        for c in (False, True)
    )
    assert stacked["totals"]["counter"].startswith("torch FlopCounterMode")
    assert lean["totals"]["counter"].startswith("audit")
    assert stacked["totals"]["counter_total"] == lean["totals"]["counter_total"] == lean["totals"]["stage_sum"] > 0
    steps = [("prefill", "decoder", lean["stages"]["prefill"]["decoder"], stacked["stages"]["prefill"]["decoder"])]
    steps += [
        ("decode", "decoder", a["decoder"], b["decoder"])
        for a, b in zip(lean["stages"]["decode"]["steps"], stacked["stages"]["decode"]["steps"], strict=True)
    ]
    for _, _, a, b in steps:
        assert b["io_bytes"] - a["io_bytes"] == 8
        assert {m: v for m, v in a.items() if m not in ("io_bytes", "activation_bytes")} == {
            m: v for m, v in b.items() if m not in ("io_bytes", "activation_bytes")
        }
    for stage, parts in lean["stages"].items():
        for part, leaf in parts.items():
            if part != "steps" and (stage, part) not in (("prefill", "decoder"), ("decode", "decoder")):
                assert leaf == stacked["stages"][stage][part], (stage, part)
    calls = {k: v["calls"] for k, v in lean["coverage"]["ops_seen"].items()}
    extra = {k: v["calls"] - calls.get(k, 0) for k, v in stacked["coverage"]["ops_seen"].items()}
    assert {k: n for k, n in extra.items() if n} == {  # 2 per forward: prefill + 2 decode steps
        "aten.select.int": 6,
        "aten._local_scalar_dense.default": 6,
    }
