"""DeepSeek-OCR 2 in the analytic model: the Qwen2 query encoder, SAM with net_3 -> 896, the 896->1280
projector and the A4 page, each derived by hand from the shapes in docs/deepseek-ocr2-facts.md
(2 FLOPs per multiply-add; bias adds, norms, softmax and SiLU are not tensor FLOPs)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from analytic import VisionWorkload
from analytic.costs import Cost
from analytic.layers.common import ConfigError
from analytic.layers.decoder import AttentionCall
from analytic.layers.qwen2_encoder import Qwen2QueryEncoder
from analytic.model import build_cost_model
from core.families import FAMILY_TABLE
from core.profiles import ImplProfile
from core.published import dims, max_positions
from core.schema import family_stages, leaf_paths
from tests.test_analytic_layers import profile as layer_profile

OCR2 = "deepseek-ocr-2"
CONFIGS = Path(__file__).resolve().parents[1] / "analytic" / "configs"


@pytest.fixture(scope="module")
def model():
    return build_cost_model(family=OCR2)


def profile(**kw) -> ImplProfile:
    return layer_profile(**{"lm_head_default": "all", **kw})


# ---- hand derivations (docs/deepseek-ocr2-facts.md, "Hand derivation: encoder stage") ----------------


def encoder_by_hand(n: int) -> int:
    """24 Qwen2 layers over L = 2n tokens ([n SAM tokens; n queries]), d 896, 14 q / 2 kv heads of 64."""
    L = 2 * n
    q_proj = 2 * L * 896 * 896  # [L,896] x [896,896]
    k_proj = 2 * L * 896 * 128  # [L,896] x [896, 2 kv heads * 64]
    v_proj = 2 * L * 896 * 128
    qk = 2 * 14 * L * L * 64  # 14 heads (kv repeated to 14) x [L,64] x [64,L]: the full L x L, mask or not
    av = 2 * 14 * L * L * 64  # 14 x [L,L] x [L,64]
    o_proj = 2 * L * 896 * 896
    gate_up = 2 * (2 * L * 896 * 4864)  # gate_proj and up_proj
    down = 2 * L * 4864 * 896
    layer = q_proj + k_proj + v_proj + qk + av + o_proj + gate_up + down
    return 24 * layer


def test_encoder_768_view_by_hand(model):
    # n = (768/64)^2 = 144, L = 288. Per layer:
    #   q_proj 2*288*896*896 = 462,422,016; k_proj = v_proj = 2*288*896*128 = 66,060,288 each;
    #   QK^T = AV = 2*14*288*288*64 = 148,635,648 each; o_proj 462,422,016;
    #   gate+up 2 * 2*288*896*4864 = 5,020,581,888; down 2*288*4864*896 = 2,510,290,944
    #   layer = 8,587,837,440 (linear) + 297,271,296 (attention) = 8,885,108,736; x 24 = 213,242,609,664
    assert 2 * 288 * 896 * 896 == 462_422_016 and 2 * 14 * 288 * 288 * 64 == 148_635_648
    assert encoder_by_hand(144) == 24 * 8_885_108_736 == 213_242_609_664  # = the notes' figure (HF on meta)
    w = VisionWorkload.from_page(768, 768, "small", model=OCR2, impl="hf")
    est = model.estimate(w)
    assert est.stages["qwen2_encoder"]["global"]["tensor_flops"] == encoder_by_hand(144)
    # official (transformers 4.46 Qwen2RotaryEmbedding): + one inv_freq (1,32,1) @ position_ids (1,1,288) bmm
    # per encoder call = 2*32*288 = 18,432 -> 213,242,628,096
    w = VisionWorkload.from_page(768, 768, "small", model=OCR2, impl="official")
    assert model.estimate(w).stages["qwen2_encoder"]["global"]["tensor_flops"] == 213_242_609_664 + 2 * 32 * 288


def test_encoder_1024_view_by_hand(model):
    # n = 16*16 = 256, L = 512: linear 2*512*(2*896*896 + 2*896*128 + 3*896*4864) = 2*512*14,909,440
    #   = 15,267,266,560; attention 4*14*512*512*64 = 939,524,096; layer 16,206,790,656; x 24
    assert 2 * 512 * (2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864) == 15_267_266_560
    assert encoder_by_hand(256) == 24 * (15_267_266_560 + 939_524_096) == 388_962_975_744
    w = VisionWorkload.from_page(1000, 1000, "base", model=OCR2, impl="hf")
    assert model.estimate(w).stages["qwen2_encoder"]["global"]["tensor_flops"] == 388_962_975_744


def sam_by_hand(size: int) -> int:
    """SAM-B at `size` px with net_3 512->896 (the OCR-1 formula terms, as in test_analytic_model)."""
    g = size // 16  # patch grid: 48 at 768, 64 at 1024
    padded = -(-g // 14) * 14  # windows pad to a multiple of 14: 48 -> 56, 64 -> 70
    nw = (padded // 14) ** 2  # 16 windows at 768, 25 at 1024
    w = 14
    patch = 2 * (768 * g * g) * 3 * 16 * 16  # Conv 3->768 k16 s16
    win = (
        2 * (nw * 196) * 768 * 2304  # qkv on the padded windows
        + 2 * (2 * (nw * 12) * w * w * 64 * w)  # the two rel-pos einsums
        + 4 * nw * 12 * 196 * 196 * 64  # SDPA over 196-token windows
        + 2 * (nw * 196) * 768 * 768  # proj
        + 2 * (g * g) * 768 * 3072 * 2  # MLP on the unpadded tokens
    )
    glob = (
        2 * (g * g) * 768 * 2304
        + 2 * (2 * 12 * g * g * 64 * g)
        + 4 * 12 * (g * g) * (g * g) * 64
        + 2 * (g * g) * 768 * 768
        + 2 * (g * g) * 768 * 3072 * 2
    )
    neck = 2 * (256 * g * g) * 768 + 2 * (256 * g * g) * 256 * 9  # 1x1 768->256, 3x3 256->256
    g2, g3 = g // 2, g // 4
    net = 2 * (512 * g2 * g2) * 256 * 9 + 2 * (896 * g3 * g3) * 512 * 9  # net_2 256->512, net_3 512->896 (s2)
    return patch + 8 * win + 4 * glob + neck + net  # blocks 2,5,8,11 global, 8 windowed


def test_sam_with_896_channels_by_hand(model):
    # the hand formula gives the notes' measured figures (HF SAM on meta, SDPA decomposed)
    assert sam_by_hand(768) == 514_449_211_392
    assert sam_by_hand(1024) == 976_607_182_848
    # OCR-1's net_3 (512->1024) at 1024 would add 2*(1024-896)*16*16*512*9 = 2*256*9*512*128 (notes)
    assert sam_by_hand(1024) + 2 * 128 * 16 * 16 * 512 * 9 == 976_909_172_736
    for size, mode in ((768, "small"), (1024, "base")):
        w = VisionWorkload.from_page(800, 800, mode, model=OCR2)
        assert model.estimate(w).stages["sam"]["global"]["tensor_flops"] == sam_by_hand(size)


def test_projector_by_hand(model):
    # Linear(896, 1280) on the n query outputs only: 2*144*896*1280 = 330,301,440; 2*256*896*1280 = 587,202,560
    for mode, n, flops in (("small", 144, 330_301_440), ("base", 256, 587_202_560)):
        assert 2 * n * 896 * 1280 == flops
        w = VisionWorkload.from_page(800, 800, mode, model=OCR2)
        assert model.estimate(w).stages["projector"]["global"]["tensor_flops"] == flops


def decoder_prefill_by_hand(s: int, official: bool) -> int:
    """The DeepSeek-V2 decoder (identical to OCR-1's) over s prefill tokens, eager attention, 12 layers."""
    rope = 12 * 2 * 64 * s if official else 0  # 4.46 LlamaAttention: (1,64,1) @ (1,1,s) in every layer
    attn = 12 * (4 * 2 * s * 1280 * 1280 + 2 * 2 * 10 * s * 128 * s)  # q,k,v,o + QK^T, AV over all s keys
    dense = 3 * 2 * s * 1280 * 6848  # layer 0 SwiGLU 6848
    moe = 11 * (
        2 * s * 1280 * 64  # router
        + 2 * s * 6 * (1280 * 896 * 2 + 896 * 1280)  # 6 routed SwiGLU 896 experts per token
        + 3 * 2 * s * 1280 * 1792  # shared experts: one SwiGLU 1792
    )
    return rope + attn + dense + moe


def test_a4_page_every_stage_by_hand(model):
    # 1654x2339 -> grid 2x3: the global 1024 view (batch 1) and 6 crops of 768 (one batch of 6)
    w = VisionWorkload.from_page(1654, 2339, "gundam", model=OCR2, impl="official", prompt_tokens=12)
    s = 1 + 1121 + 12  # BOS + 257 + 144*6 image tokens + prompt = 1134
    assert w.prefill_len == s
    rope = 2 * 32  # official encoder rotary bmm per call, times L
    expected = {
        ("sam", "global"): sam_by_hand(1024),
        ("sam", "crops"): 6 * sam_by_hand(768),
        ("qwen2_encoder", "global"): encoder_by_hand(256) + rope * 512,
        ("qwen2_encoder", "crops"): 6 * encoder_by_hand(144) + rope * 288,  # position_ids batch 1: once
        ("projector", "global"): 2 * 256 * 896 * 1280,
        ("projector", "crops"): 2 * 6 * 144 * 896 * 1280,
        ("prefill", "decoder"): decoder_prefill_by_hand(s, official=True),
        ("prefill", "lm_head"): 2 * s * 1280 * 129280,  # official: lm_head over every position
        ("decode", "decoder"): 0,
        ("decode", "lm_head"): 0,
    }
    est = model.estimate(w)
    got = {(st, p): est.stages[st][p]["tensor_flops"] for st, p in leaf_paths(family_stages(OCR2))}
    assert got == expected
    # vision totals against the notes' A4 table (tensor FLOPs, attention included; hf = no rotary bmm)
    hf = model.estimate(VisionWorkload.from_page(1654, 2339, "gundam", model=OCR2, impl="hf")).stages
    assert hf["sam"]["global"]["tensor_flops"] + hf["sam"]["crops"]["tensor_flops"] == 4_063_302_451_200
    enc = hf["qwen2_encoder"]["global"]["tensor_flops"] + hf["qwen2_encoder"]["crops"]["tensor_flops"]
    assert enc == 1_668_418_633_728
    assert hf["projector"]["global"]["tensor_flops"] + hf["projector"]["crops"]["tensor_flops"] == 2_569_011_200


def test_stages_and_records(model):
    w = VisionWorkload.from_page(1654, 2339, "gundam", model=OCR2, decode_tokens=1)
    est = model.estimate(w, records=True)
    assert tuple(est.stages) == family_stages(OCR2) == ("sam", "qwen2_encoder", "projector", "prefill", "decode")
    for stage, part in leaf_paths(family_stages(OCR2)):
        recs = [r for r in est.records if r["stage"] == stage and r["part"] == part]
        assert sum(r["tensor_flops"] for r in recs) == est.stages[stage][part]["tensor_flops"], (stage, part)
    enc = [r for r in est.records if r["stage"] == "qwen2_encoder" and r["part"] == "global"]
    assert sum(r["path"].endswith(".self_attn.sdpa") for r in enc) == 24
    # the memoised fast path gives the same figures as the record-keeping one
    fast = model.estimate(w)
    assert fast.stages["qwen2_encoder"] == est.stages["qwen2_encoder"]
    assert fast.model["qwen2_encoder"]["num_kv_heads"] == 2 and "clip" not in fast.model


def test_encoder_layer_small_shapes():
    # hidden 8, 4 q heads / 2 kv heads of 2, FFN 5; batch 2, seq 6 -> rows 12
    c = Cost()
    layer = Qwen2QueryEncoder(8, 1, 4, 2, 2, 5, (3,)).layer
    call = AttentionCall(views=2, kv="none", mask_bytes=2 * 6 * 6, layer_rotary=False, output_copy=False)
    layer.evaluate(c, 6, 0, profile(), "sdpa", 2, None, None, call)
    q, kv, o = 2 * 12 * 8 * 8, 2 * 12 * 8 * 4, 2 * 12 * 8 * 8  # kv: 2 heads * 2 = 4 outputs each
    attn = 2 * (2 * 2 * 4 * 6 * 6 * 2)  # SDPA: QK^T + AV, B=2, H=4, 6x6, D=2
    mlp = 2 * 12 * 8 * 5 * 3  # gate, up, down
    assert c.tensor_flops == q + 2 * kv + o + attn + mlp
    assert c.families == {"mm": q + 2 * kv + o + mlp, "sdpa": attn}


def test_encoder_refuses_a_grid_without_queries():
    enc = Qwen2QueryEncoder(8, 1, 4, 2, None, 5, (144, 256))
    with pytest.raises(ConfigError, match="10x10 SAM map \\(100 tokens\\) has no learnable query table"):
        enc.evaluate(Cost(), 1, 10, profile(), 2, None)


def test_published_dimensions_stated_once():
    """Both families compose DeepSeek-OCR's decoder and SAM-B from core/published/; OCR-2's SAM differs in net_3 only
    (deepencoderv2.py:663: 512 -> 896, OCR-1's 512 -> 1024)."""
    sam1, sam2 = dims("sam", "sam_vit_b"), dims("sam", "sam_vit_b_ocr2")
    assert sam2.pop("downsample_channels") == [512, 896] and sam1.pop("downsample_channels") == [512, 1024]
    assert sam1 == sam2
    for fam in FAMILY_TABLE:  # the Hydra composition and the backends' loader read the same numbers
        with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
            cfg = OmegaConf.to_container(compose(config_name=fam.analytic_config))
        published = dims("decoder", fam.decoder)
        assert {k: cfg["decoder"][k] for k in published} == published
        assert max_positions(fam.decoder) == 8192  # config.json max_position_embeddings


def test_family_mismatch_refused(model):
    with pytest.raises(ConfigError, match="build_cost_model\\(family='deepseek-ocr'\\)"):
        model.estimate(VisionWorkload.from_page(1654, 2339, "gundam"))
    with pytest.raises(ConfigError, match="unknown model family"):
        build_cost_model(family="deepseek-ocr-3")


def test_overrides_and_consistency_checks():
    small = build_cost_model(["vision.qwen2_encoder.num_layers=1"], family=OCR2)
    w = VisionWorkload.from_page(768, 768, "small", model=OCR2, impl="hf")
    assert small.estimate(w).stages["qwen2_encoder"]["global"]["tensor_flops"] == encoder_by_hand(144) // 24
    with pytest.raises(ConfigError, match=r"override projector\.input_dim=896"):
        build_cost_model(["projector.input_dim=2048"], family=OCR2)
    with pytest.raises(ConfigError, match=r"must equal vision\.qwen2_encoder\.hidden_size=896"):
        build_cost_model(["vision.sam.downsample_channels=[512,1024]"], family=OCR2)


# ---- the CLI: --model on dsocr-analytic ---------------------------------------------------------------


def test_cli_json_for_the_a4_page(capsys):
    import json

    from analytic.cli import main

    assert main(["--model", OCR2, "--width", "1654", "--height", "2339", "--dtype", "bfloat16", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["workload"]["model"] == OCR2 and doc["workload"]["n_image_tokens"] == 1121
    assert tuple(doc["stages"]) == family_stages(OCR2)
    # official profile (the CLI default): encoder + the rotary bmm 2*32*L once per call
    enc = doc["stages"]["qwen2_encoder"]
    assert enc["global"]["tensor_flops"] == encoder_by_hand(256) + 2 * 32 * 512
    assert enc["crops"]["tensor_flops"] == 6 * encoder_by_hand(144) + 2 * 32 * 288
    assert doc["stages"]["sam"]["crops"]["tensor_flops"] == 6 * sam_by_hand(768)
    assert doc["model"]["family"] == OCR2


def test_cli_table_names_the_family(capsys):
    from analytic.cli import main

    assert main(["--model", OCR2, "--width", "1654", "--height", "2339", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "deepseek-ocr-2 gundam 1654x2339" in out and "clip" not in out


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--mode", "tiny"], "unknown mode 'tiny' for --model deepseek-ocr-2"),
        (["--mode", "base", "--image-size", "640"], "image_size=640 cannot run on deepseek-ocr-2"),
    ],
)
def test_cli_refuses_other_views_in_one_line(extra, needle, capsys):
    from analytic.cli import main

    assert main(["--model", OCR2, "--width", "1654", "--height", "2339", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_model_option_is_shared():
    import argparse

    from core.options import add_workload_options, workload_kwargs

    p = argparse.ArgumentParser()
    add_workload_options(p)
    default = p.parse_args([])
    assert default.model == "deepseek-ocr" and workload_kwargs(default, dtype="float32")["model"] == "deepseek-ocr"
    two = p.parse_args(["--model", OCR2])
    assert workload_kwargs(two, dtype="float32")["model"] == OCR2


# ---- bytes and liveness of the encoder stage, by hand on a small configuration ----------------------------------


def test_bool_block_overlay_mask_by_hand():
    # transformers 5: B = 2 views of n = 2 SAM tokens, L = 4 positions; int64 ids 8 bytes, bools 1 byte
    from analytic.layers.qwen2_encoder import bool_block_overlay_mask

    c = Cost()
    assert bool_block_overlay_mask(c, None, 2, 2) == 2 * 4 * 4  # the (B, 1, L, L) bool mask: 32 bytes
    # writes: block ids full (B, L) 64; the 0-d value 8 and its copy into [:, :n] 2 * 2 * 8 = 32; aranges B * 8 +
    # 8 + 2 * L * 8 and the two offset adds 2 * L * 8: 16 + 8 + 64 + 64 = 152; new_zeros 1, <= 16, | 16, two gathers
    # 2 * 64, == 32, >= 8, & 32, | 32 = 265
    writes = 64 + 40 + 152 + 265
    # reads: the 0-d value 8; the adds read the aranges 64; | 1 + 16 and <= 2 * 32; gathers 2 * (64 rows + 16 + 32
    # indices); == 2 * 64; >= 64; & 32 + 8; the final | 16 + 32
    reads = 8 + 64 + (17 + 64) + 224 + 128 + 64 + 40 + 48
    assert (c.io_bytes, c.activation_bytes) == (reads + writes, writes)
    # liveness: the block ids (64) stay; at the overlay's & live the aranges (16 + 8 + 64), the causal part (16),
    # the gathered ids (128), == (32), >= (8) and & (32): 304; then only the mask stays
    assert (c.peak_bytes, c.live) == (64 + 304, 64 + 32)


def test_float_index_put_mask_by_hand():
    # official: B = 2 views, n = 2, L = 4, bfloat16 (2 bytes), per view:
    #   full 16 * 2 = 32 written; == twice (reads 2 * 32 int64, writes 2 * 4 bools); nonzero twice (reads 8,
    #   writes 2 * 2 positions * 8 = 32); the image block: index tensors 2 * 16 + the value 2 read, 2 * 2 * 2 = 8
    #   written; per query i (2 of them): its row over the image columns (index 8 + 16, value 2; writes 2 * 2) and
    #   over queries 0..i (index 8 + 8 (i + 1), value 2; writes 2 (i + 1))
    from analytic.layers.qwen2_encoder import float_index_put_mask

    c = Cost()
    assert float_index_put_mask(c, None, 2, 2, 2) == 2 * 16 * 2  # the stacked (B, 1, L, L) mask: 64 bytes
    reads = 64 + 8 + 34 + 2 * (8 + 16 + 2) + (8 + 8 + 2) + (8 + 16 + 2)
    writes = 32 + 8 + 32 + 8 + 2 * 4 + (2 + 4)
    stack = 2 * 64  # reads both masks, writes their stack
    assert (c.io_bytes, c.activation_bytes) == (2 * (reads + writes) + stack, 2 * writes + 64)
    # liveness: the list of masks and their stack (2 * 64) with the last view's two position tensors (2 * 16)
    assert (c.peak_bytes, c.live) == (128 + 32, 64)


def tiny_encoder(layers: int) -> Qwen2QueryEncoder:
    # hidden 8, 4 q heads / 2 kv heads of 2, SwiGLU 16, the 2 x 2 SAM map's query table (n = 4, L = 8)
    return Qwen2QueryEncoder(8, layers, 4, 2, None, 16, (4,))


def test_encoder_stage_peaks_in_its_last_mlp_by_hand():
    # transformers 5 (profile hf: SAM nested in the stage, bool mask, rotary once), float32, one view:
    # an activation 8 tokens * 8 * 4 = 256 bytes, SwiGLU's act, up and product 3 * 8 * 16 * 4 = 1,536.
    # Live through the layers: SAM's output 4 * 8 * 4 = 128, the input cat 256, position ids 64, block ids 64, the
    # bool mask 64, cos and sin 2 * 8 * 2 * 4 = 128: 704.  Layer 0's MLP adds the first residual and the normed
    # input (512) and the SwiGLU: 2,752; layer 1 also has the input cat held back next to its own input (+256)
    hf = build_cost_model(family=OCR2).profiles["hf"]
    for layers, peak in ((1, 704 + 512 + 1536), (2, 704 + 256 + 512 + 1536)):
        c = Cost()
        tiny_encoder(layers).evaluate(c, 1, 2, hf, 4, None)
        assert c.peak_bytes == peak, layers
    # official (4.46.3 Qwen2Model): SAM's output is the caller's; token_type_ids 64 and cache positions 64; the float
    # mask 8 * 8 * 4 = 256; cos and sin 128: 768.  Its DynamicCache keeps every layer's K and V (2 * 8 * 2 * 2 * 4 =
    # 256 a layer): layer 1's MLP peaks at 768 + 256 (its input) + 512 + 1,536 + 2 * 256 = 3,584
    official = build_cost_model(family=OCR2).profiles["official"]
    c = Cost()
    tiny_encoder(2).evaluate(c, 1, 2, official, 4, None)
    assert c.peak_bytes == 768 + 256 + 512 + 1536 + 512
    # a global view after the crops: the crops' token_type_ids (kept as an attribute) die when it starts
    after = Cost()
    tiny_encoder(2).evaluate(after, 1, 2, official, 4, None, previous_tokens=3 * 4)
    assert c.peak_bytes - after.peak_bytes == 2 * 3 * 4 * 8


def test_official_image_merge_of_an_a4_page_by_hand(model):
    """DeepSeek-OCR2Model.forward on the A4 gundam page (6 crops of 768 + the 1024 view, 1121 image tokens, prefill
    1134), float32: what the vision calls leave bound, the merge's cats and masked_scatter_."""
    from analytic.composites import image_layout, image_locals

    w = VisionWorkload.from_page(1654, 2339, "gundam", model=OCR2, impl="official", dtype="float32")
    assert (w.n_crops, w.n_image_tokens, w.prefill_len) == (6, 1121, 1134)
    official = model.profiles["official"]
    enc = model.vision["qwen2_encoder"]
    # crops: SAM 6 x 896 x 12 x 12 x 4 = 3,096,576; the encoder's whole output 6 x 288 x 896 x 4 = 6,193,152 (the
    # query slice is a view of it).  Global: 917,504 and 512 x 896 x 4 = 1,835,008, plus its token_type_ids kept as
    # an attribute, 512 x 8 = 4,096 (the crops' died in the global call)
    crops = model.sam.output_bytes(6, 768, 4) + enc.bound_output_bytes(6, 12, official, 4, last=False)
    page = model.sam.output_bytes(1, 1024, 4) + enc.bound_output_bytes(1, 16, official, 4, last=True)
    assert (crops, page) == (3_096_576 + 6_193_152, 917_504 + 1_835_008 + 4_096)
    c = Cost()
    kept = image_locals(c, w, 1280, (crops, page), 0, 4)
    # + the projector outputs 864 x 1280 x 4 = 4,423,680 and 256 x 1280 x 4 = 1,310,720, and the two cats of the
    # 1121 rows (the views with the separator, the one-image list): 2 x 5,739,520
    assert kept == c.live == c.peak_bytes == crops + page + 4_423_680 + 1_310_720 + 2 * 5_739_520 == 29_259_776
    layout = Cost()
    image_layout(layout, w, 1280, 0, 4, None)
    # views cat: reads 1120 rows x 5,120 and the separator (a parameter: 5,120), writes 1121 rows; the list's cat
    # copies them; masked_scatter_ reads 1134 bools and the rows, writes 1134 embedding rows (5,806,080)
    writes = 5_739_520 + 5_739_520 + 5_806_080
    reads = 1120 * 5120 + 5120 + 5_739_520 + 1134 + 5_739_520
    assert (layout.io_bytes, layout.activation_bytes, layout.weight_bytes) == (reads + writes, writes, 5120)
