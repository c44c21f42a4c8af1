"""Per-layer tensor FLOPs on small shapes, derived by hand (2 FLOPs per multiply-add)."""

import pytest

from analytic.costs import Cost, causal_pairs
from analytic.layers.clip import ClipBlock, ClipEncoder
from analytic.layers.common import ConfigError
from analytic.layers.decoder import Decoder, MhaAttention, MlaAttention, MoeMlp, SwiGluMlp
from analytic.layers.projector import MlpProjector
from analytic.layers.sam import SamBlock, SamEncoder
from core.profiles import ImplProfile, ProfileError
from core.published import dims as published_dims

# the model.yaml section -> the published dimensions it composes (core/published/, the one source of them)
PUBLISHED = {
    "vision.sam": ("sam", "sam_vit_b"),
    "vision.clip": ("clip", "clip_l14"),
    "decoder": ("decoder", "deepseek_v2_3b"),
}


def dims(section: str, **small) -> dict:
    """DeepSeek-OCR's published dimensions of one model.yaml section with the given fields replaced."""
    return {**published_dims(*PUBLISHED[section]), **small}


def profile(**kw) -> ImplProfile:
    base = dict(
        name="t",
        rope="once_elementwise",
        clip_qkv="fused",
        experts="grouped_mm",
        vision_attention="sdpa",
        decoder_attn_impls=("eager", "sdpa"),
        supports_mla=True,
        lm_head_default="last",
    )
    base.update(kw)
    return ImplProfile(**base)


def test_linear_counts_mm_only_not_bias():
    c = Cost(records=True)
    c.linear("x", rows=3, in_f=4, out_f=5, bias=True, db=2)
    # mm: 2 * M * K * N = 2 * 3 * 4 * 5 = 120; bias add is elementwise (3*5 = 15)
    assert c.tensor_flops == 120
    assert c.families == {"mm": 120}
    assert c.elementwise_flops == 15
    assert c.records[0]["aten"] == "addmm"


def test_conv_output_size_and_flops():
    c = Cost()
    # 3x3 stride 2 pad 1 on 10x10: out = (10 + 2 - 3)//2 + 1 = 5
    h, w = c.conv2d(None, 2, 4, 10, 10, 8, 3, 2, 1, bias=False, db=2)
    assert (h, w) == (5, 5)
    # 2 * prod(out=[2,8,5,5]) * Cin 4 * 3*3 = 2 * 400 * 36 = 28,800
    assert c.tensor_flops == 28_800
    assert c.families == {"conv": 28_800}


def test_sdpa_formula():
    c = Cost()
    c.sdpa(None, 2, 3, 5, 7, 4, 4, db=2)
    # 4 * B*H*Sq*Sk*D = 4 * 2*3*5*7*4 = 3360
    assert c.tensor_flops == 3360


def test_windowed_block_pads_attention_not_mlp():
    # dim 8, 2 heads (head 4), mlp 16, window 3, grid 4 -> padded to 6: 2x2 windows of 9 tokens
    blk = SamBlock(dim=8, num_heads=2, mlp_dim=16, window=3)
    c = Cost()
    blk.evaluate(c, batch=1, grid=4, profile=profile(), db=2, path=None)
    n_views, seq = 4, 9
    rows = n_views * seq  # 36 padded tokens
    qkv = 2 * rows * 8 * 24  # 13,824
    # einsum bhwc,hkc->bhwk: (B*nh)=4*2 windows-heads, h=w=k=3, c=4 -> 2 * 8*3*3*4*3 = 1,728 each
    rel = 2 * (2 * 8 * 3 * 3 * 4 * 3)
    attn = 4 * n_views * 2 * seq * seq * 4  # 4*B*H*S*S*D = 10,368
    proj = 2 * rows * 8 * 8  # 4,608
    mlp = 2 * (16 * 8 * 16) * 2  # MLP on the 16 UNPADDED tokens: 8,192
    assert c.tensor_flops == qkv + rel + attn + proj + mlp
    assert c.families == {"mm": qkv + proj + mlp, "bmm": rel, "sdpa": attn}


def test_global_block_rel_pos_einsums():
    blk = SamBlock(dim=8, num_heads=2, mlp_dim=16, window=0)
    c = Cost(records=True)
    blk.evaluate(c, batch=2, grid=5, profile=profile(), db=2, path="b")
    rel = [r for r in c.records if r["op"].startswith("einsum")]
    # einsum over q (B*nh=4, 5, 5, c=4) x R (5, 5, 4): 2 * 4*5*5*4*5 = 4,000 FLOPs, twice
    assert [r["tensor_flops"] for r in rel] == [4000, 4000]
    assert all(r["family"] == "bmm" for r in rel)


def test_eager_vision_attention_is_two_bmm_with_same_flops():
    blk = SamBlock(dim=8, num_heads=2, mlp_dim=16, window=0)
    a, b = Cost(), Cost()
    blk.evaluate(a, 1, 4, profile(), 2, None)
    blk.evaluate(b, 1, 4, profile(vision_attention="eager"), 2, None)
    assert a.tensor_flops == b.tensor_flops
    # 2 bmm of 2 * (1*2) * 16 * 4 * 16 = 4,096 each replace the SDPA term 4 * 2*16*16*4 = 8,192
    assert b.families["bmm"] - a.families["bmm"] == 2 * 4096 == a.families["sdpa"]


def test_sam_encoder_small():
    sam = SamEncoder(
        **dims(
            "vision.sam",
            img_size=64,
            patch_size=16,
            embed_dim=8,
            depth=1,
            num_heads=2,
            mlp_ratio=2,
            window_size=3,
            global_attn_indexes=(0,),
            out_chans=4,
            downsample_channels=(6, 8),
        )
    )
    c = Cost()
    g3 = sam.evaluate(c, batch=1, size=64, profile=profile(), db=2, path=None)
    g = 4  # 64 / 16
    patch = 2 * (8 * g * g) * 3 * 16 * 16  # 196,608
    block = 2 * 16 * 8 * 24 + 2 * 2 * (2 * 4 * 4 * 4 * 4) + 4 * 2 * 16 * 16 * 4 + 2 * 16 * 8 * 8 + 2 * (2 * 16 * 8 * 16)
    neck = 2 * (4 * 16) * 8 + 2 * (4 * 16) * 4 * 9  # 1x1 then 3x3 pad 1
    net2 = 2 * (6 * 2 * 2) * 4 * 9  # 4 -> 2
    net3 = 2 * (8 * 1 * 1) * 6 * 9  # 2 -> 1
    assert g3 == 1
    assert c.tensor_flops == patch + block + neck + net2 + net3


def test_clip_block_fused_vs_separate_qkv():
    blk = ClipBlock(dim=8, num_heads=2, ffn=32)
    a, b = Cost(records=True), Cost(records=True)
    blk.evaluate(a, 2, 5, profile(clip_qkv="fused"), 2, "x")
    blk.evaluate(b, 2, 5, profile(clip_qkv="separate"), 2, "x")
    rows = 10
    expected = 2 * rows * 8 * 24 + 4 * 2 * 2 * 5 * 5 * 4 + 2 * rows * 8 * 8 + 2 * 2 * rows * 8 * 32
    assert a.tensor_flops == b.tensor_flops == expected  # 3840 + 1600 + 1280 + 10240 = 16,960
    assert len([r for r in b.records if r["family"] == "mm"]) == len([r for r in a.records if r["family"] == "mm"]) + 2


def test_clip_encoder_sequence_includes_cls():
    enc = ClipEncoder(**dims("vision.clip", hidden_size=8, num_layers=2, num_heads=2, ffn_hidden_size=32))
    c = Cost()
    assert enc.evaluate(c, batch=1, grid=3, profile=profile(), db=2, path=None) == 10  # 3*3 + CLS
    one = Cost()
    ClipBlock(8, 2, 32).evaluate(one, 1, 10, profile(), 2, None)
    assert c.tensor_flops == 2 * one.tensor_flops


def test_projector_types():
    def flops(**kw):
        c = Cost()
        MlpProjector(**kw).evaluate(c, batch=2, tokens=16, db=2, path=None)
        return c.tensor_flops

    rows = 32
    assert flops(projector_type="identity", input_dim=8, n_embed=8) == 0
    assert flops(projector_type="linear", input_dim=8, n_embed=4) == 2 * rows * 8 * 4
    assert flops(projector_type="mlp_gelu", input_dim=8, n_embed=4, depth=3) == 2 * rows * (8 * 4 + 2 * 4 * 4)
    # downsample 2: 4x4 grid -> 2x2, 8 rows of 8*4 = 32 features; depth 3, ratio 2: 32->8, 8->8, 8->4
    ds = 2 * 8 * (32 * 8 + 8 * 8 + 8 * 4)
    assert flops(projector_type="downsample_mlp_gelu", input_dim=8, n_embed=4, depth=3, mlp_ratio=2) == ds
    assert flops(projector_type="normlayer_downsample_mlp_gelu", input_dim=8, n_embed=4, depth=3, mlp_ratio=2) == ds
    # odd grid pads: 3x3 -> ceil(3/2)=2 -> 2x2 rows
    c = Cost()
    MlpProjector("downsample_mlp_gelu", 8, 4, depth=1).evaluate(c, 1, 9, 2, None)
    assert c.tensor_flops == 2 * 4 * (32 * 4 + 4 * 4)
    assert flops(projector_type="low_high_hybrid_split_mlp_gelu", input_dim=8, n_embed=4, depth=2) == 2 * rows * (
        8 * 2 + 8 * 2 + 4 * 4
    )
    assert flops(projector_type="hybrid_split_feature_mlp_gelu", input_dim=(6, 2), n_embed=4, depth=1) == 2 * rows * (
        6 * 2 + 2 * 2
    )
    assert flops(projector_type="low_high_split_mlp_gelu", input_dim=2, n_embed=4, depth=2) == 2 * 2 * rows * 2 * 2
    # token pooling: 4x4 -> 2x2 tokens, Linear(4*8, 8), then linear 8->4 on 4 tokens per view
    assert flops(projector_type="linear", input_dim=8, n_embed=4, token_pooling=True) == 2 * 8 * 32 * 8 + 2 * 8 * 8 * 4
    with pytest.raises(ConfigError, match="unknown"):
        MlpProjector(projector_type="nope")


def test_moe_counts_topk_and_shared_experts():
    moe = MoeMlp(hidden=8, n_experts=4, top_k=2, expert_intermediate=3, n_shared=2)
    for mode in ("per_expert_mlp", "eager", "grouped_mm", "batched_mm"):
        c = Cost()
        moe.evaluate(c, rows=5, profile=profile(experts=mode), db=2, path=None)
        router = 2 * 5 * 8 * 4  # 320
        routed = 2 * (5 * 2) * (8 * 3 * 2 + 3 * 8)  # 10 token-expert pairs x SwiGLU(3): 1,440
        shared = 2 * 5 * (8 * 6 * 2 + 6 * 8)  # shared SwiGLU of 2 x 3 = 6: 1,440
        assert c.tensor_flops == router + routed + shared, mode
    assert c.families == {"mm": router + shared, "bmm": routed}


def test_swiglu_dense():
    c = Cost()
    SwiGluMlp(8, 5).evaluate(c, 3, 2, None)
    assert c.tensor_flops == 2 * 3 * (8 * 5 * 3)


def test_mha_eager_prefill_and_causal_and_rope():
    attn = MhaAttention(hidden=8, heads=2, kv_heads=2, head_dim=4)
    c = Cost()
    attn.evaluate(c, q=5, past=0, profile=profile(rope="per_layer_matmul"), family="bmm", db=2, path=None)
    proj = 4 * 2 * 5 * 8 * 8  # q, k, v, o: 2,560
    rope = 2 * (4 // 2) * 1 * 5  # (1, D/2, 1) @ (1, 1, S) = 20
    attn_full = 2 * (2 * 2 * 5 * 4 * 5)  # QK^T and AV, 2*H*S*D*L each: 800
    assert c.tensor_flops == proj + rope + attn_full
    # causal: 5*6/2 = 15 of 25 pairs kept
    assert causal_pairs(5, 0) == 15
    assert c.causal_tensor_flops == proj + rope + 2 * (2 * 2 * 15 * 4)


def test_mha_decode_step_sees_all_cached_keys():
    attn = MhaAttention(hidden=8, heads=2, kv_heads=1, head_dim=4)
    c = Cost()
    attn.evaluate(c, q=1, past=9, profile=profile(), family="sdpa", db=2, path=None)
    proj = 2 * 8 * 8 + 2 * 2 * 8 * 4 + 2 * 8 * 8  # q (8->8), k,v (8->4 with one kv head), o
    assert c.tensor_flops == proj + 4 * 2 * 1 * 10 * 4  # 10 keys = 9 cached + 1 new
    assert c.causal_tensor_flops == c.tensor_flops
    assert c.kv_cache_bytes == 2 * 1 * 10 * 4 * 2


def test_mla_absorbed_terms():
    mla = MlaAttention(
        hidden=8, heads=2, q_lora_rank=None, kv_lora_rank=6, qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=3
    )
    c = Cost()
    mla.evaluate(c, q=3, past=1, profile=profile(), family="bmm", db=2, path=None)
    keys = 4
    expected = (
        2 * 3 * 8 * (2 * 6)  # q_proj 8 -> H*(dn+dr) = 12
        + 2 * 3 * 8 * (6 + 2)  # kv_a_proj_with_mqa 8 -> r + dr
        + 2 * 2 * 3 * 4 * 6  # q_nope @ q_absorb
        + 2 * 2 * 3 * 2 * keys  # q_pe @ k_pe^T
        + 2 * 2 * 3 * 6 * keys  # q_nope @ compressed_kv^T
        + 2 * 2 * 3 * keys * 6  # einsum bhql,blc->bhqc
        + 2 * 2 * 3 * 6 * 3  # @ out_absorb^T
        + 2 * 3 * 6 * 8  # o_proj H*dv -> 8
    )
    assert c.tensor_flops == expected
    with pytest.raises(ProfileError, match="MLA"):
        mla.evaluate(Cost(), 1, 0, profile(supports_mla=False), "bmm", 2, None)
    with pytest.raises(ProfileError, match="eager"):
        Decoder(**dims("decoder", use_mla=True)).forward(Cost(), 1, 0, profile(), "sdpa", 2)


def test_decoder_layer_kinds_and_lm_head():
    dec = Decoder(
        **dims(
            "decoder",
            vocab_size=11,
            hidden_size=8,
            num_layers=3,
            num_heads=2,
            num_kv_heads=2,
            intermediate_size=16,
            first_k_dense_replace=1,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=3,
            n_shared_experts=1,
        )
    )
    assert [type(layer.mlp).__name__ for layer in dec.layers] == ["SwiGluMlp", "MoeMlp", "MoeMlp"]
    c = Cost()
    dec.lm_head(c, rows=7, db=2)
    assert c.tensor_flops == 2 * 7 * 8 * 11
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        Decoder(**dims("decoder", n_routed_experts=4, num_experts_per_tok=5))


def test_stack_scaling_equals_per_layer_records():
    dec = Decoder(
        **dims(
            "decoder",
            vocab_size=11,
            hidden_size=8,
            num_layers=3,
            num_heads=2,
            num_kv_heads=2,
            intermediate_size=16,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=3,
            n_shared_experts=1,
        )
    )
    fast, slow = Cost(), Cost(records=True)
    dec.forward(fast, 4, 2, profile(), "eager", 2, None)
    dec.forward(slow, 4, 2, profile(), "eager", 2, "decoder")
    assert fast.metrics() == slow.metrics()
    assert sum(r["tensor_flops"] for r in slow.records) == slow.tensor_flops


def test_transformers_causal_masks_bytes_by_hand():
    """transformers 5 eager masks for q = 2 new positions over 3 keys (past 1), bfloat16 (2 bytes), int64 8."""
    from analytic.layers.decoder import causal_mask_traffic, reference_sliding_mask_traffic

    # create_causal_mask: aranges batch 8 + heads 8 + q 16 + keys 24; the two offset adds read 16 + 24 and write as
    # much; kv <= q reads 16 + 24 and writes 2 x 3 = 6 bools; where reads the 6 bools and the 0-d zero and minimum
    # (2 + 2) and writes 6 x 2 = 12; the zero and minimum are written too (4)
    reads = 40 + 40 + 6 + 4
    writes = (16 + 40) + 40 + 6 + 12 + 4
    assert causal_mask_traffic(2, 3, 2) == (reads, writes)
    # the reference sliding-window mask (its function under vmap): the same aranges and adds; new_zeros and two
    # new_ones, 2 bytes each (q bools); q - window (16 -> 16) and kv - offset (24 -> 24); > reads 16 + 24 and writes
    # 6; < reads 24 and writes 3; two <= read 40 each and write 6 each; four & read (2 + 6) + (6 + 6) + (2 + 6) +
    # (6 + 3) and write 6 each; two | read (2 + 6) + (6 + 6) and write 6 each; where reads 6 + 4, writes 12 + 4
    reads = 40 + 40 + 40 + 24 + 80 + (8 + 12 + 8 + 9) + (8 + 12) + 10
    writes = (16 + 40) + 40 + 6 + 40 + 6 + 3 + 12 + 24 + 12 + 16
    assert reference_sliding_mask_traffic(2, 3, 2) == (reads, writes)


def test_sam_relative_coordinates_and_resize_elementwise_by_hand():
    """get_rel_pos for a side of 4 (head dim 2, 2 x 4 - 1 = 7 relative positions): the coordinates scale q and k
    (4 float32 elements each), subtract and add the offset (4 x 4 each): 8 + 32 = 40; a linear 1-D resize of the
    table to 7 rows adds 2 per output element: 2 x 7 x 2 = 28."""
    from analytic.layers.sam import _rel_pos_gather

    gathered, resized = Cost(), Cost()
    _rel_pos_gather(gathered, None, 4, 2, 7, True, 2)
    _rel_pos_gather(resized, None, 4, 2, 7, False, 2, rows_l=9)
    assert (gathered.elementwise_flops, resized.elementwise_flops) == (40, 40 + 28)


def test_layer_norm_statistics_in_the_profile_dtype_by_hand():
    """native_layer_norm over 3 rows of 4 in bfloat16: reads x (3 x 4 x 2 = 24) and weight and bias (2 x 4 x 2 =
    16), writes y (24) and a mean and rstd per row: float32 (meta, CUDA) 2 x 3 x 4 = 24, or bfloat16 (the CPU
    kernel) 2 x 3 x 2 = 12."""
    from analytic.layers.common import layer_norm

    f32, bf16 = Cost(), Cost()
    layer_norm(f32, None, 3, 4, 2)
    layer_norm(bf16, None, 3, 4, 2, profile(layer_norm_stats="dtype").norm_stats_bytes(2))
    assert (f32.io_bytes, f32.activation_bytes) == (24 + 16 + 24 + 24, 24 + 24)
    assert (bf16.io_bytes, bf16.activation_bytes) == (24 + 16 + 24 + 12, 24 + 12)
    assert profile().norm_stats_bytes(2) == 4 and profile(layer_norm_stats="dtype").norm_stats_bytes(4) == 4
