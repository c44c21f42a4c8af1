"""Model inputs built the way the official ``infer()`` of each family builds them.

The image side uses the snapshot's own ``dynamic_preprocess`` and ``BasicImageTransform``
(plus PIL's ``ImageOps.pad``, as ``infer()`` does); the prompt side its ``format_messages``
with the ``plain`` template and, when the snapshot ships a tokenizer, its ``text_encode``.
Token layout (``infer()``): BOS, text before the image, the global view's
``(nq_base + 1) * nq_base + 1`` image tokens, then the crops' ``(nq * w + 1) * (nq * h)``,
then the text after the image.  DeepSeek-OCR 2's ``infer()`` differs only in literals
(`INPUT_RULES`): crops of 768 (the crop test and the no-crop resize threshold are 768), and no
newline tokens: ``nq_base * nq_base + 1`` for the global view and separator, plus
``(nq * w) * (nq * h)`` for the crops.  Runs inside the worker (needs torch and PIL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from core.families import DEEPSEEK_TOKENS, FAMILY_TABLE
from core.workload import DOWNSAMPLE_RATIO, PATCH_SIZE
from vendor_shim.backends.base import PreparedInputs, ReceivedInputs
from vendor_shim.errors import VendorInputError, VendorRunError

# What infer() hard-codes (modeling_deepseekocr.py).
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = DEEPSEEK_TOKENS.image
BOS_ID = DEEPSEEK_TOKENS.bos
SFT_FORMAT = "plain"
PROMPT_HEAD = "<image>\n"  # the official examples start the user turn with the image
FILLER_WORDS = ("page", "text", "a", "x")
PLACEHOLDER = "x"  # without a tokenizer, one placeholder character stands for one prompt token
TEXT_TOKEN_ID = 100  # the id a placeholder becomes (FLOPs do not depend on ids)


@dataclass(frozen=True)
class InputRules:
    """The literals of one family's infer()."""

    crop_side: int  # pages with both sides <= crop_side get no crops; also the no-crop resize threshold
    newlines: bool  # one newline token after every row of image tokens
    image_sizes: tuple[int, ...]  # the crop / view sizes the model's vision was built for (others mis-scatter)


# infer()'s literals are the family's workload rules (core.families): OCR-1 `<= 640` (crops of 640, any view
# size); modeling_deepseekocr2.py infer() `<= 768`, and its encoder has query tables for 768 and 1024 views only
INPUT_RULES = {
    f.name: InputRules(crop_side=f.rules.crop_size, newlines=f.rules.newlines, image_sizes=f.rules.view_sizes or ())
    for f in FAMILY_TABLE
}


def image_token_count(rules: InputRules, nq_base: int, nq: int = 0, w: int = 0, h: int = 0) -> int:
    """Image tokens infer() reserves: the global view (+ separator), then the crops' grid."""
    if rules.newlines:
        crops = (nq * w + 1) * (nq * h) if w else 0
        return (nq_base + 1) * nq_base + 1 + crops
    return nq_base * nq_base + 1 + ((nq * w) * (nq * h) if w else 0)


def num_queries(size: int) -> int:
    """infer(): math.ceil((size // patch_size) / downsample_ratio)."""
    return -(-(size // PATCH_SIZE) // DOWNSAMPLE_RATIO)


def synthetic_page(width: int, height: int) -> Any:
    """A white page with dark text-like rules (no two crops are blank)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for y in range(0, height, 48):
        draw.line([(width // 10, y), (width * 9 // 10, y)], fill=(0, 0, 0), width=3)
    return image


class OfficialInputs:
    """Builds `PreparedInputs` with the snapshot's helpers (``helper(name)`` returns one)."""

    def __init__(self, helper: Callable[[str], Any], tokenizer: Any = None, rules: InputRules | None = None):
        self.helper = helper
        self.tokenizer = tokenizer
        self.rules = rules or INPUT_RULES["deepseek-ocr"]

    def build(self, workload: Any, *, dtype: torch.dtype, device: str) -> PreparedInputs:
        from PIL import ImageOps

        transform = self.helper("BasicImageTransform")(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), normalize=True)
        pad_color = tuple(int(x * 255) for x in transform.mean)
        base_size, image_size = workload.base_size, workload.image_size
        rules = self.rules
        sizes = (image_size, base_size) if workload.crop_mode else (image_size,)
        if rules.image_sizes and any(s not in rules.image_sizes for s in sizes):
            raise VendorInputError(
                f"view sizes {sizes}: this model's vision runs {'/'.join(map(str, rules.image_sizes))} views only "
                "(its query tables): use a mode of this --model"
            )
        image = synthetic_page(workload.width, workload.height)

        conversation = [
            {"role": "<|User|>", "content": self.prompt_text(workload.prompt_tokens)},
            {"role": "<|Assistant|>", "content": ""},
        ]
        prompt = self.helper("format_messages")(conversations=conversation, sft_format=SFT_FORMAT, system_prompt="")
        splits = prompt.split(IMAGE_TOKEN)
        if len(splits) != 2:
            raise VendorRunError(f"formatted prompt holds {len(splits) - 1} image tags, expected 1: {prompt!r}")

        views, crops, crop_ratio = [], [], (1, 1)
        if workload.crop_mode:
            if image.size[0] > rules.crop_side or image.size[1] > rules.crop_side:
                tiles, crop_ratio = self.helper("dynamic_preprocess")(image)
                if crop_ratio[0] > 1 or crop_ratio[1] > 1:
                    crops = [transform(t).to(dtype) for t in tiles]
            views.append(transform(ImageOps.pad(image, (base_size, base_size), color=pad_color)).to(dtype))
            nq, nq_base = num_queries(image_size), num_queries(base_size)
            w, h = crop_ratio if crops else (0, 0)
            image_ids = [IMAGE_TOKEN_ID] * image_token_count(rules, nq_base, nq, w, h)
        else:
            view = image.resize((image_size, image_size)) if image_size <= rules.crop_side else image
            views.append(transform(ImageOps.pad(view, (image_size, image_size), color=pad_color)).to(dtype))
            nq = num_queries(image_size)
            image_ids = [IMAGE_TOKEN_ID] * image_token_count(rules, nq)

        head, tail = self.encode(splits[0]), self.encode(splits[1])
        ids = [BOS_ID, *head, *image_ids, *tail]
        mask = [False] * (1 + len(head)) + [True] * len(image_ids) + [False] * len(tail)
        input_ids = torch.tensor(ids, dtype=torch.long)
        seq_mask = torch.tensor(mask, dtype=torch.bool)
        images_ori = torch.stack(views, dim=0)
        images_crop = torch.stack(crops, dim=0) if crops else torch.zeros((1, 3, base_size, base_size), dtype=dtype)
        spatial = torch.tensor([list(crop_ratio)], dtype=torch.long)
        return PreparedInputs(
            received=_received(input_ids, seq_mask, images_ori, images_crop, spatial),
            payload=_payload(input_ids, seq_mask, images_ori, images_crop, spatial, device),
        )

    def prompt_text(self, prompt_tokens: int) -> str:
        """The user turn: the image tag, then text of exactly ``prompt_tokens`` tokens."""
        if self.tokenizer is None:
            return PROMPT_HEAD + PLACEHOLDER * prompt_tokens
        # format_messages strips the turn: measure the text exactly as it will be split.
        for word in FILLER_WORDS:
            for n in range(prompt_tokens + 2):
                text = (PROMPT_HEAD + " ".join([word] * n)).strip()
                if len(self.encode(text.split(IMAGE_TOKEN, 1)[1])) == prompt_tokens:
                    return text
        raise VendorRunError(f"no prompt text tokenizes to exactly {prompt_tokens} tokens: use another --prompt-tokens")

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is not None:
            return list(self.helper("text_encode")(self.tokenizer, text, bos=False, eos=False))
        return [TEXT_TOKEN_ID] * text.count(PLACEHOLDER)


def _received(
    input_ids: torch.Tensor,
    seq_mask: torch.Tensor,
    images_ori: torch.Tensor,
    images_crop: torch.Tensor,
    spatial: torch.Tensor,
) -> ReceivedInputs:
    """Read the grid and token counts back from the tensors the model will receive."""
    has_crops = bool(torch.sum(images_crop).item() != 0)  # the official forward's own test
    n_img = int(seq_mask.sum().item())
    return ReceivedInputs(
        global_view_size=int(images_ori.shape[-1]),
        crop_size=int(images_crop.shape[-1]) if has_crops else 0,
        w_crop=int(spatial[0, 0]),
        h_crop=int(spatial[0, 1]),
        n_crops=int(images_crop.shape[0]) if has_crops else 0,
        n_image_tokens=n_img,
        prompt_tokens=int(input_ids.numel()) - 1 - n_img,
        prefill_len=int(input_ids.numel()),
    )


def _payload(
    input_ids: torch.Tensor,
    seq_mask: torch.Tensor,
    images_ori: torch.Tensor,
    images_crop: torch.Tensor,
    spatial: torch.Tensor,
    device: str,
) -> dict[str, Any]:
    """The generate()/forward keyword arguments, batch 1, on the model's device."""
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device(device)
    return {
        "input_ids": input_ids.unsqueeze(0).to(dev),
        "images": [(images_crop.to(dev), images_ori.to(dev))],
        "images_seq_mask": seq_mask.unsqueeze(0).to(dev),
        "images_spatial_crop": spatial,
        "has_crops": bool(torch.sum(images_crop).item() != 0),
    }
