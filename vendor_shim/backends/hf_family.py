"""What backend ``hf`` must know about one model family: which transformers classes, at which dimensions, and
which modules are its vision stage roots.  One `HfFamily` per family (`vendor_shim.backends.hf.FAMILIES`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HfFamily:
    family: str  # analytic.schema family name (--model)
    module: str  # the transformers modeling module it runs (its sha256 goes into every trace and cache key)
    classes: Callable[[], tuple[Any, Any]]  # () -> (config class, ForConditionalGeneration class)
    build_config: Callable[[int], Any]  # num_text_layers -> config at the published dimensions
    vision_roots: Callable[[Any], dict[str, Any]]  # inner model -> {vision stage: root module}, pipeline order
    text_layers: int
    image_token_id: int
    patches_grid: bool  # get_image_features takes patches_grid=[[columns, rows]] (DeepSeek-OCR) or not
    known_differences: tuple[str, ...]


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
