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

from core.published import dims
from vendor_shim.backends.hf_family import (
    HfFamily,
    decoder_config,
    published_decoder,
    sam_config,
)

_DECODER = published_decoder("deepseek-ocr-2")
TEXT_LAYERS = int(_DECODER["num_layers"])

KNOWN_DIFFERENCES = (
    "encoder and decoder rotary cos/sin computed once per forward with an elementwise product (official: a bmm"
    " per encoder call / per decoder layer)",
    "encoder mask: 4D bool from create_causal_mask(block_sequence_ids) (official: float additive mask); same SDPA",
    "query table chosen by num_patches <= 144 (official: 144 or 256 only); the workload builds 768/1024 views",
    "global view runs before crops in get_image_features (official: crops first); branches attributed by shape",
    "generate() keeps the last prefill position for lm_head; lm_head_scope='all' passes logits_to_keep=0",
    "routed experts via aten._grouped_mm (official: per-expert Linear loop); same multiply-adds",
)

# DeepSeek-OCR 2's published dimensions: core/published/ (read by the analytic model too), in transformers' names.
SAM_CONFIG = sam_config("sam_vit_b_ocr2")
_ENCODER = dims("qwen2_encoder", "qwen2_0_5b")
# deepencoderv2.py CustomQwen2Decoder: Qwen2Config(...) at lines 196-240; entries the formulas do not read are the
# official config's own (its vocabulary, positions, rope theta: the embedding table is deleted).
ENCODER_CONFIG = {
    "vocab_size": 151936,
    "hidden_size": _ENCODER["hidden_size"],
    "intermediate_size": _ENCODER["intermediate_size"],
    "num_hidden_layers": _ENCODER["num_layers"],
    "num_attention_heads": _ENCODER["num_heads"],
    "num_key_value_heads": _ENCODER["num_kv_heads"],  # GQA, head 64
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
}


def text_config(num_layers: int = TEXT_LAYERS) -> dict[str, Any]:
    """config.json's language part (DeepSeek-OCR's decoder) as `DeepseekOcr2Config` takes it; ``num_layers`` < 12
    for tests."""
    dense = _DECODER["first_k_dense_replace"]
    return {
        **decoder_config(_DECODER, num_layers),
        "n_group": 1,
        "topk_group": 1,
        "mlp_layer_types": ["dense"] * dense + ["sparse"] * (num_layers - dense),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    }


def _classes() -> tuple[Any, Any]:
    from transformers.models.deepseek_ocr2.configuration_deepseek_ocr2 import DeepseekOcr2Config
    from transformers.models.deepseek_ocr2.modeling_deepseek_ocr2 import DeepseekOcr2ForConditionalGeneration

    return DeepseekOcr2Config, DeepseekOcr2ForConditionalGeneration


FAMILY = HfFamily(
    family="deepseek-ocr-2",
    module="transformers.models.deepseek_ocr2.modeling_deepseek_ocr2",
    classes=_classes,
    sam_config=SAM_CONFIG,
    encoder_config=ENCODER_CONFIG,
    text_config=text_config,
    # qwen2_encoder is the whole vision tower (SAM features flattened, the query table appended, the encoder, the
    # query outputs kept); sam nests inside it and takes its own ops (the innermost root is charged)
    vision_roots=(
        ("sam", "vision_tower.sam_encoder"),
        ("qwen2_encoder", "vision_tower"),
        ("projector", "multi_modal_projector"),
    ),
    patches_grid=False,
    known_differences=KNOWN_DIFFERENCES,
)
