"""DeepSeek-OCR 2 for backend ``hf``: transformers' own `deepseek_ocr2` classes at the published dimensions.

The dimensions are docs/deepseek-ocr2-facts.md's (official deepencoderv2.py / config.json); the package's
config defaults are NOT OCR-2's (only SAM's are).  Where the package's model differs from the official code
(`KNOWN_DIFFERENCES`, also written into every trace's ``environment.model_notes``):

- The encoder's rotary cos/sin are an elementwise product computed once per encoder forward (official
  4.46.3 Qwen2: one ``inv_freq @ position_ids`` bmm of 2*32*L FLOPs per call); the decoder's once per
  forward, elementwise (official: a bmm per layer).  Analytic profile field ``rope``.
- The encoder mask is a 4D bool mask from ``create_causal_mask`` with ``block_sequence_ids`` (official: a
  float additive mask built by a Python loop of ``index_put_``); SDPA computes the full L x L product either
  way, so attention FLOPs are the same.
- The learnable query table is chosen by ``num_patches <= 144`` (official: exactly 144 or 256, anything else
  crashes); the workload only builds the 768 and 1024 views, so the choice is the official one.
- get_image_features runs the global view first, then the crops (official: crops first); branches are
  attributed by input shape, the embedding order is the official one.
- generate() applies lm_head to the last prefill position only; lm_head_scope "all" passes logits_to_keep=0.
- Routed experts through ``aten._grouped_mm`` (official: per-expert Linear loop); same multiply-adds.
"""

from __future__ import annotations

from typing import Any

from vendor_shim.backends.hf_family import HfFamily, published_config

IMAGE_TOKEN_ID = 128815
BOS_ID = 0
TEXT_LAYERS = 12

KNOWN_DIFFERENCES = (
    "encoder and decoder rotary cos/sin computed once per forward with an elementwise product (official: a bmm"
    " per encoder call / per decoder layer)",
    "encoder mask: 4D bool from create_causal_mask(block_sequence_ids) (official: float additive mask); same SDPA",
    "query table chosen by num_patches <= 144 (official: 144 or 256 only); the workload builds 768/1024 views",
    "global view runs before crops in get_image_features (official: crops first); branches attributed by shape",
    "generate() keeps the last prefill position for lm_head; lm_head_scope='all' passes logits_to_keep=0",
    "routed experts via aten._grouped_mm (official: per-expert Linear loop); same multiply-adds",
)

# deepencoderv2.py build_sam_vit_b: as OCR-1's SAM-B except net_3 512 -> 896.
SAM_CONFIG = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_dim": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "image_size": 1024,
    "patch_size": 16,
    "window_size": 14,
    "global_attn_indexes": [2, 5, 8, 11],
    "output_channels": 256,
    "downsample_channels": [512, 896],  # net_2 256->512, net_3 512->896 (deepencoderv2.py:663)
    "qkv_bias": True,
    "use_abs_pos": True,
    "use_rel_pos": True,
}
# deepencoderv2.py CustomQwen2Decoder: Qwen2Config(...) at lines 196-240 (Qwen2-0.5B shape).
ENCODER_CONFIG = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,  # GQA, head 64
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
}


def text_config(num_layers: int = TEXT_LAYERS) -> dict[str, Any]:
    """config.json's language part (the same numbers as DeepSeek-OCR's decoder); ``num_layers`` < 12 for tests."""
    return {
        "vocab_size": 129280,
        "hidden_size": 1280,
        "intermediate_size": 6848,  # layer 0 dense SwiGLU
        "moe_intermediate_size": 896,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 10,
        "num_key_value_heads": 10,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "n_group": 1,
        "topk_group": 1,
        "topk_method": "greedy",
        "routed_scaling_factor": 1.0,
        "max_position_embeddings": 8192,
        "bos_token_id": BOS_ID,
        "eos_token_id": 1,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "mlp_layer_types": ["dense"] + ["sparse"] * (num_layers - 1),  # first_k_dense_replace: 1
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }


def _classes() -> tuple[Any, Any]:
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2Config
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2ForConditionalGeneration

    return DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration


def build_config(num_text_layers: int = TEXT_LAYERS) -> Any:
    config_cls, _ = _classes()
    return published_config(config_cls, SAM_CONFIG, ENCODER_CONFIG, text_config(num_text_layers), IMAGE_TOKEN_ID)


def vision_roots(inner: Any) -> dict[str, Any]:
    """``qwen2_encoder`` is the whole vision tower (SAM features flattened, the query table appended, the encoder,
    the query outputs kept); ``sam`` nests inside it and takes its own ops (the innermost root is charged)."""
    return {
        "sam": inner.vision_tower.sam_encoder,
        "qwen2_encoder": inner.vision_tower,
        "projector": inner.multi_modal_projector,
    }


FAMILY = HfFamily(
    family="deepseek-ocr-2",
    module="transformers.models.deepseek_ocr2.modeling_deepseek_ocr2",
    classes=_classes,
    build_config=build_config,
    vision_roots=vision_roots,
    text_layers=TEXT_LAYERS,
    image_token_id=IMAGE_TOKEN_ID,
    patches_grid=False,
    known_differences=KNOWN_DIFFERENCES,
)
