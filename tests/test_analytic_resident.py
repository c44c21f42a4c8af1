"""Resident memory of the analytic model (weights and KV cache), by hand on small configurations.  The full-size
figures are checked against the hf model's own parameters and cache in tests/test_vendor_hf.py."""

from analytic.layers.decoder import Decoder
from analytic.model import build_cost_model
from core.workload import VisionWorkload
from tests.test_analytic_layers import dims


def small_decoder() -> Decoder:
    return Decoder(
        **dims(
            "decoder",
            vocab_size=10,
            hidden_size=4,
            num_layers=2,
            num_heads=2,
            num_kv_heads=2,
            head_dim=2,
            intermediate_size=8,
            n_routed_experts=2,
            num_experts_per_tok=1,
            moe_intermediate_size=3,
            n_shared_experts=1,
        )
    )


def test_decoder_parameters_by_hand():
    # embedding and untied lm_head 2 * 10 * 4 = 80, final norm 4;
    # layer 0: two norms 8 + q, k, v, o 4 * (4 * 2 * 2) = 64 + dense SwiGLU 3 * 4 * 8 = 96 -> 168;
    # layer 1: 8 + 64 + two experts 2 * (3 * 4 * 3) = 72 + router 2 * 4 = 8 + shared 3 * 4 * 3 = 36 -> 188
    assert small_decoder().params() == 80 + 4 + 168 + 188


def test_kv_cache_per_token_by_hand():
    # 2 layers x (K + V) x 2 kv heads x head 2 x 2 bytes = 32 bytes a position
    assert small_decoder().cache_bytes_per_token(2) == 32


def test_deepseek_ocr_resident_figures():
    w = VisionWorkload.from_page(1654, 2339, "gundam", decode_tokens=2, impl="hf", dtype="bfloat16")
    mem = build_cost_model().estimate(w).memory
    # KV: 12 layers x 2 x 10 heads x 128 x 2 bytes = 61,440 a position; prefill 916 positions (273 + 630 image
    # tokens, BOS, 12 prompt tokens), then one more per step
    assert mem["kv_cache_resident_bytes"] == [61440 * 916, 61440 * 917, 61440 * 918]
    p = mem["parameters"]
    assert p["projector"] == 2048 * 1280 + 1280 and p["view_embeddings"] == 2 * 1280
    # buffers: CLIP's 257 int64 position ids, hf's rotary inv_freq and original_inv_freq (2 x 64 float32); the newest
    # verified transformers (5.24 on) keeps the 11 MoE routers' 64 x 1280 weights in float32: 2 more bytes each
    routers = 11 * 64 * 1280 * (4 - 2)
    assert mem["weight_resident_bytes"] == 2 * sum(p.values()) + 257 * 8 + 2 * 64 * 4 + routers
