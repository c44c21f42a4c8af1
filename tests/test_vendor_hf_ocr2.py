"""Backend `hf` for DeepSeek-OCR 2 (transformers' deepseek_ocr2 classes at the published dims) under the counter.

Expected FLOPs are derived by hand from docs/deepseek-ocr2-facts.md's shapes (2 FLOPs per multiply-add, attention
over the full query x key product, masked or not) and, as a second independent path, from the analytic model.
Full-size vision runs on the meta device; decoder runs use a reduced depth (2 of 12 layers).
"""

from __future__ import annotations

import math

import pytest

from analytic.model import build_cost_model
from core.metrics import METRICS
from core.profiles import gated_leaves
from core.schema import family_stages
from core.workload import VisionWorkload
from vendor_shim import ModelCache, measure
from vendor_shim.backends import REGISTRY, BackendSpec, get_backend
from vendor_shim.backends.hf import HfBackend, families
from vendor_shim.errors import VendorInputError, VendorRunError

pytest.importorskip("transformers.models.deepseek_ocr2")

OCR2 = "deepseek-ocr-2"
VOCAB, HID, HEADS, HDIM = 129280, 1280, 10, 128
ENC, ENC_KV, ENC_FFN, ENC_LAYERS, ENC_HEADS = 896, 128, 4864, 24, 14
VISION = ("sam", "qwen2_encoder", "projector")


def sam_flops(side: int, batch: int) -> int:
    """SAM-B at side x side: patch conv, 8 windowed + 4 global blocks, neck, net_2 256->512, net_3 512->896."""
    g = side // 16
    t = g * g
    gp = math.ceil(g / 14) * 14  # window partition pads g to a multiple of 14
    nw, tp = (gp // 14) ** 2, gp * gp
    f = 2 * t * 768 * (3 * 16 * 16)
    windowed = (
        2 * tp * 768 * 2304
        + 4 * nw * 12 * 196 * 196 * 64
        + 2 * (2 * nw * 12 * 14 * 14 * 14 * 64)  # rel-pos einsums
        + 2 * tp * 768 * 768
        + 2 * 2 * t * 768 * 3072
    )
    global_ = (
        2 * t * 768 * 2304
        + 4 * 12 * t * t * 64
        + 2 * (2 * 12 * g * g * g * 64)
        + 2 * t * 768 * 768
        + 4 * t * 768 * 3072
    )
    f += 8 * windowed + 4 * global_
    f += 2 * t * 768 * 256 + 2 * t * 256 * 256 * 9  # neck
    f += 2 * (g // 2) ** 2 * 256 * 512 * 9 + 2 * (g // 4) ** 2 * 512 * 896 * 9  # net_2, net_3
    return batch * f


def encoder_flops(side: int, batch: int) -> int:
    """24 Qwen2 layers over L = 2n tokens (n SAM tokens + n queries): q/k/v/o, full L x L SDPA, SwiGLU 4864."""
    n = (side // 64) ** 2
    seq = 2 * n
    per_layer = 2 * seq * ENC * (ENC + 2 * ENC_KV + ENC) + 3 * 2 * seq * ENC * ENC_FFN + 4 * ENC_HEADS * seq * seq * 64
    return batch * ENC_LAYERS * per_layer


def projector_flops(side: int, batch: int) -> int:
    return batch * 2 * (side // 64) ** 2 * ENC * HID  # Linear(896, 1280) on the n query outputs


def decoder_layer_flops(q: int, keys: int, layer: int) -> int:
    """One DeepSeek-V2 decoder layer (the same as DeepSeek-OCR's) for q new tokens over `keys` keys."""
    f = 4 * 2 * q * HID * HID + 2 * (2 * HEADS * q * keys * HDIM)
    if layer == 0:
        return f + 3 * 2 * q * HID * 6848
    f += 2 * q * HID * 64 + 2 * (6 * q) * HID * (2 * 896) + 2 * (6 * q) * 896 * HID
    return f + 3 * 2 * q * HID * 1792


def test_hand_derived_encoder_matches_the_facts_page():
    """The facts page's per-layer table (768 view: 8,885,108,736 per layer) and its 1024 figure, by hand."""
    assert encoder_flops(768, 1) == 24 * 8_885_108_736 == 213_242_609_664
    assert encoder_flops(1024, 1) == 388_962_975_744
    assert projector_flops(768, 1) == 330_301_440 and projector_flops(1024, 1) == 587_202_560


@pytest.fixture(scope="module")
def two_crops():
    """gundam on a 2:1 page: the global 1024 view plus a 2x1 grid of 768 crops (the smallest crops case)."""
    w = VisionWorkload.from_page(1536, 768, "gundam", impl="hf", model=OCR2, dtype="bfloat16")
    return w, measure(w, device="meta", vision_only=True, fvcore=False)


@pytest.mark.parametrize(("mode", "width", "height"), [("small", 800, 600), ("base", 800, 600), ("gundam", 0, 0)])
def test_ocr2_full_size_vision_on_meta_every_mode(mode, width, height, two_crops):
    if mode == "gundam":
        w, tr = two_crops
    else:
        w = VisionWorkload.from_page(width, height, mode, impl="hf", model=OCR2)
        tr = measure(w, device="meta", vision_only=True, fvcore=False)
    assert tr.complete, tr.coverage["uncounted_ops"]
    crops = 2 if mode == "gundam" else 0
    assert w.n_crops == crops and tr.received["n_crops"] == crops
    assert tr.received["n_image_tokens"] == w.n_image_tokens == (w.global_view_size // 64) ** 2 + 1 + 144 * crops
    analytic = build_cost_model([], family=OCR2).estimate(w).stages
    for branch, side, batch in (("global", w.global_view_size, 1), ("crops", w.crop_size, crops)):
        want = {
            "sam": sam_flops(side, batch) if batch else 0,
            "qwen2_encoder": encoder_flops(side, batch) if batch else 0,
            "projector": projector_flops(side, batch) if batch else 0,
        }
        for stage in VISION:
            assert tr.stages[stage][branch]["tensor_flops"] == want[stage], (stage, branch)
            assert analytic[stage][branch]["tensor_flops"] == want[stage], (stage, branch)
    assert "clip" not in tr.stages and tr.workload["model"] == OCR2
    assert tr.environment["family"] == OCR2 and tr.environment["model"]["family"] == OCR2


def test_ocr2_stage_attribution_sam_nests_in_the_encoder_stage(two_crops):
    """qwen2_encoder is the vision tower (flatten, query concat, encoder, query slice); SAM's ops are its own."""
    _, tr = two_crops
    seen = sorted((c["root"], c["part"]) for c in tr.calls)
    assert seen == sorted((s, b) for s in VISION for b in ("global", "crops"))
    enc_ops = tr.op_breakdown["qwen2_encoder"]["crops"]
    sam_ops = tr.op_breakdown["sam"]["crops"]
    assert "aten.convolution.default" in sam_ops and "aten.convolution.default" not in enc_ops
    assert "aten.cat.default" in enc_ops  # [SAM tokens; queries]
    crops_call = next(c for c in tr.calls if (c["root"], c["part"]) == ("qwen2_encoder", "crops"))
    assert crops_call["input_shapes"][0][1] == [2, 3, 768, 768]  # the tower receives the pixels: it decides


def test_ocr2_projector_bytes_of_the_strided_query_slice(two_crops):
    """Crops: last_hidden_state[:, n:, :] of a (B, 2n, 896) tensor cannot be flattened without a copy, so the
    Linear runs as clone + mm + bias add (a new tensor); the global view (batch 1) is one addmm."""
    w, tr = two_crops
    est = build_cost_model([], family=OCR2).estimate(w).stages
    db, rows_c, rows_g = 2, 2 * 144, 256
    weights = (ENC * HID + HID) * db
    crops_io = 2 * rows_c * ENC * db + (rows_c * ENC * db + ENC * HID * db + rows_c * HID * db)
    crops_io += 2 * rows_c * HID * db + HID * db
    global_io = rows_g * ENC * db + weights + rows_g * HID * db
    for side in (tr.stages, est):
        assert side["projector"]["crops"]["io_bytes"] == crops_io
        assert side["projector"]["global"]["io_bytes"] == global_io
        assert side["projector"]["crops"]["peak_bytes"] == 2 * rows_c * HID * db  # mm output + the sum
        assert side["projector"]["global"]["peak_bytes"] == rows_g * HID * db


def test_ocr2_reduced_depth_decoder_on_cpu_matches_hand_and_analytic():
    w = VisionWorkload.from_page(700, 700, "gundam", prompt_tokens=5, decode_tokens=2, impl="hf", model=OCR2)
    backend = HfBackend(num_text_layers=2, family=OCR2)
    tr = measure(w, backend=backend, device="cpu", vision_device="meta", fvcore=False, model_cache=ModelCache())
    assert tr.complete, tr.coverage["uncounted_ops"]
    s = w.prefill_len
    assert s == 1 + 257 + 5
    prefill = sum(decoder_layer_flops(s, s, i) for i in range(2))
    decode = sum(decoder_layer_flops(1, s + t, i) for t in (1, 2) for i in range(2))
    assert tr.stages["prefill"]["decoder"]["tensor_flops"] == prefill
    assert tr.stages["prefill"]["lm_head"]["tensor_flops"] == 2 * HID * VOCAB  # generate(): last position
    assert tr.stages["decode"]["decoder"]["tensor_flops"] == decode
    estimate = build_cost_model(["decoder.num_layers=2"], family=OCR2).estimate(w)
    est = estimate.stages
    for stage in family_stages(OCR2):
        for part, leaf in est[stage].items():
            if part != "steps":
                assert tr.stages[stage][part]["tensor_flops"] == leaf["tensor_flops"], (stage, part)
    # resident memory from the layer shapes alone: the parameters x 4 bytes + buffers, and the KV cache: 2 layers x
    # (K + V) x 10 heads x 128 x 4 bytes = 20,480 bytes a position after the prefill (263 positions) and each step.
    # The encoder by hand: a layer has two norms 2 * 896, q 896 * 896 + 896, k and v 2 * (896 * 128 + 128), o
    # 896 * 896, the SwiGLU 3 * 896 * 4864: 14,912,384; x 24 = 357,897,216, + the query tables (144 + 256) * 896 =
    # 358,400, + the final norm 896 = 358,256,512
    assert estimate.memory["parameters"]["qwen2_encoder"] == 358_256_512
    assert estimate.memory["weight_resident_bytes"] == tr.memory["weight_resident_bytes"]
    assert tr.memory["kv_cache_resident_bytes"] == estimate.memory["kv_cache_resident_bytes"]
    assert tr.memory["kv_cache_resident_bytes"] == [20480 * (263 + t) for t in range(3)]


def test_model_key_and_roots_follow_the_family():
    one, two = HfBackend(num_text_layers=2), HfBackend(num_text_layers=2, family=OCR2)
    kw = {"device": "meta", "dtype": "float32", "attn_impl": "eager", "vision_only": True}
    assert one.model_key(**kw) != two.model_key(**kw) and OCR2 in two.model_key(**kw)
    loaded = two.build(**kw)
    assert tuple(loaded.roots.vision) == VISION
    w = VisionWorkload.from_page(800, 600, "gundam", impl="hf")  # a DeepSeek-OCR workload on an OCR-2 model
    with pytest.raises(VendorRunError, match="build the backend for --model deepseek-ocr"):
        measure(w, backend=two, device="meta", vision_only=True, fvcore=False)
    with pytest.raises(VendorInputError, match="no model family"):
        HfBackend(family="deepseek-ocr-3")


def test_registry_describes_which_families_each_backend_runs():
    assert REGISTRY.spec("hf").families == ("deepseek-ocr", OCR2) == tuple(families())  # registry == backend
    assert get_backend("hf", model=OCR2).family.family == OCR2
    # remote-code runs both: the snapshot's config.json says which, --model must agree (test_remote_code_ocr2.py)
    assert REGISTRY.spec("remote-code").families == ("deepseek-ocr", OCR2)
    assert REGISTRY.spec("remote-code").family_refusal(OCR2) is None


def test_gates_resolve_per_stage_and_skip_flops_only_stages():
    modeled = ["tensor_flops", "weight_bytes", "projector.io_bytes"]
    gates = gated_leaves(modeled, ["qwen2_encoder"], family_stages(OCR2), ["tensor_flops", "weight_bytes", "io_bytes"])
    assert "qwen2_encoder.tensor_flops" in gates and "qwen2_encoder.weight_bytes" not in gates
    assert {"sam.weight_bytes", "projector.io_bytes", "decode.weight_bytes"} <= set(gates)
    assert "sam.io_bytes" not in gates and not any(g.endswith("kv_cache_bytes") for g in gates)


def _stub(*, vendor_dir=None, trust_remote_code=False, model="deepseek-ocr"):
    return HfBackend(num_text_layers=2, family=model)


@pytest.fixture
def reduced_hf():
    REGISTRY.register(
        BackendSpec(
            "hf-2",
            _stub,
            impl="hf",
            summary="hf at 2 decoder layers",
            splits_vision=True,
            families=("deepseek-ocr", OCR2),
        )
    )
    yield
    REGISTRY.unregister("hf-2")


def test_verify_model_ocr2_passes_and_says_so(reduced_hf, tmp_path):
    """The verifier's own path (config, analytic, vendor, comparison, markdown) at --model deepseek-ocr-2; the HTML
    charts are left to the CLI tests."""
    from reports.markdown import render_markdown
    from verify.cli import build_analytic, build_parser, config_from_args, load_pages
    from verify.runner import Verifier, run_pages
    from verify.vendor_measure import VendorMeasurer

    argv = ["--model", OCR2, "--backend", "hf-2", "--mode", "small", "--limit", "1", "--decode-tokens", "2"]
    argv += ["--override", "decoder.num_layers=2", "--cache-dir", str(tmp_path / "c")]
    args = build_parser("run_verify_end2end", False).parse_args(argv)
    cfg = config_from_args(args, "run_verify_end2end", False)
    assert cfg.model == OCR2 and cfg.stages == family_stages(OCR2)

    def verify() -> object:
        measurer = VendorMeasurer.create(cfg)
        verifier = Verifier(cfg=cfg, measure=measurer, cost_model=build_analytic(cfg))
        return run_pages(verifier, load_pages(args), measurer.environment())

    run = verify()
    assert run.verdict == "PASS", [p.error for p in run.pages]
    rows = [r for p in run.pages for r in p.rows]
    enc = {r.metric: r.passed for r in rows if r.stage == "qwen2_encoder"}
    assert set(enc) == set(METRICS) and all(enc.values())  # every metric of the encoder is gated
    assert {r.rel_delta for r in rows if r.metric == "tensor_flops" and r.passed is not None} == {0.0}
    assert run.pages[0].trace["workload"]["model"] == OCR2 and run.config["model"] == OCR2
    assert f"model `{OCR2}`" in render_markdown(run)
    again = verify()  # served from the cache: the family is part of the key
    assert all(p.cache_hit for p in again.pages)


def test_ocr2_vision_cpu_equals_meta_through_the_masked_cpu_sdpa_kernel():
    """On CPU the encoder's bool-masked SDPA dispatches to aten._scaled_dot_product_flash_attention_for_cpu, which
    torch's counter has no formula for: the shim's formula must give the meta device's count (SDPA decomposed)."""
    w = VisionWorkload.from_page(800, 600, "small", impl="hf", model=OCR2, dtype="float32")
    cpu = measure(w, device="cpu", vision_only=True, fvcore=False)
    assert cpu.complete, cpu.coverage["uncounted_ops"]
    assert "aten._scaled_dot_product_flash_attention_for_cpu.default" in cpu.op_breakdown["qwen2_encoder"]["global"]
    assert cpu.stages["qwen2_encoder"]["global"]["tensor_flops"] == encoder_flops(768, 1)
    assert cpu.stages["sam"]["global"]["tensor_flops"] == sam_flops(768, 1)
