"""What backend ``hf`` must know about one model family: which transformers classes, at which dimensions, and
which modules are its vision stage roots.  One `HfFamily` per family (`vendor_shim.backends.hf.FAMILIES`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from core.families import DEEPSEEK_TOKENS, family
from core.published import dims

BOS_ID = DEEPSEEK_TOKENS.bos
EOS_ID = DEEPSEEK_TOKENS.eos
IMAGE_TOKEN_ID = DEEPSEEK_TOKENS.image


@dataclass(frozen=True)
class HfFamily:
    family: str  # core.families name (--model)
    module: str  # the transformers modeling module it runs (its sha256 goes into every trace and cache key)
    classes: Callable[[], tuple[Any, Any]]  # () -> (config class, ForConditionalGeneration class)
    sam_config: dict[str, Any]  # vision_config.sam_config at the published dimensions
    encoder_config: dict[str, Any]  # vision_config.encoder_config (CLIP or the Qwen2 encoder)
    text_config: Callable[[int], dict[str, Any]]  # num_text_layers -> text_config
    vision_roots: tuple[tuple[str, str], ...]  # (vision stage, dotted attribute of the inner model), pipeline order
    patches_grid: bool  # get_image_features takes patches_grid=[[columns, rows]] (DeepSeek-OCR) or not
    known_differences: tuple[str, ...]

    def build_config(self, num_text_layers: int) -> Any:
        """The family's config at the published dimensions (``num_text_layers`` < the published depth for tests)."""
        config_cls, _ = self.classes()
        text = self.text_config(num_text_layers)
        return published_config(config_cls, self.sam_config, self.encoder_config, text, self.image_token_id)

    def roots_of(self, inner: Any) -> dict[str, Any]:
        """{vision stage: its root module} of a built model's inner model."""
        return {stage: attrgetter(path)(inner) for stage, path in self.vision_roots}

    @property
    def text_layers(self) -> int:
        """The published decoder depth of the family (core.families -> core/published/decoder/)."""
        return int(published_decoder(self.family)["num_layers"])

    @property
    def image_token_id(self) -> int:
        return family(self.family).tokens.image


def published_config(
    config_cls: Any, sam: dict[str, Any], encoder: dict[str, Any], text: dict[str, Any], image_token_id: int
) -> Any:
    """A family's config at its published dimensions: SAM and the encoder under ``vision_config``, the text
    config, the image token, lm_head untied from the embedding."""
    return config_cls(
        vision_config={"sam_config": dict(sam), "encoder_config": dict(encoder)},
        text_config=text,
        image_token_id=image_token_id,
        tie_word_embeddings=False,
    )


def sam_config(name: str) -> dict[str, Any]:
    """transformers' SAM vision config from the published SAM dimensions ``core/published/sam/<name>.yaml``
    (the activation and norm epsilon are the classes' own: the formulas do not depend on them)."""
    sam = dims("sam", name)
    return {
        "hidden_size": sam["embed_dim"],
        "num_hidden_layers": sam["depth"],
        "num_attention_heads": sam["num_heads"],
        "mlp_dim": int(sam["embed_dim"] * sam["mlp_ratio"]),
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "image_size": sam["img_size"],
        "patch_size": sam["patch_size"],
        "window_size": sam["window_size"],
        "global_attn_indexes": list(sam["global_attn_indexes"]),
        "output_channels": sam["out_chans"],
        "downsample_channels": list(sam["downsample_channels"]),
        "qkv_bias": sam["qkv_bias"],
        "use_abs_pos": sam["use_abs_pos"],
        "use_rel_pos": sam["use_rel_pos"],
    }


def published_decoder(family_name: str) -> dict[str, Any]:
    """The published decoder the family registry names for ``family_name`` (core/published/decoder/)."""
    return dims("decoder", family(family_name).decoder)


def decoder_config(dec: dict[str, Any], num_layers: int) -> dict[str, Any]:
    """The text config entries both families share, from a published decoder ``dec``; ``num_layers`` < its
    depth only for reduced-depth tests."""
    return {
        "vocab_size": dec["vocab_size"],
        "hidden_size": dec["hidden_size"],
        "intermediate_size": dec["intermediate_size"],  # layer 0 dense SwiGLU
        "moe_intermediate_size": dec["moe_intermediate_size"],
        "num_hidden_layers": num_layers,
        "num_attention_heads": dec["num_heads"],
        "num_key_value_heads": dec["num_kv_heads"],
        "n_routed_experts": dec["n_routed_experts"],
        "n_shared_experts": dec["n_shared_experts"],
        "num_experts_per_tok": dec["num_experts_per_tok"],  # softmax top-k, greedy, no top-k normalisation
        "topk_method": "greedy",
        "routed_scaling_factor": 1.0,
        "max_position_embeddings": dec["max_position_embeddings"],
        "rms_norm_eps": 1e-6,
        "attention_bias": dec["attention_bias"],
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
    }
