"""Backend ``hf``: DeepSeek-OCR as transformers itself implements it (its `UnlimitedOcr` classes), and
DeepSeek-OCR 2 (its `deepseek_ocr2` classes: `vendor_shim.backends.hf_ocr2`).  The family is a parameter of
the backend (``create_backend(model=...)``, from ``--model``); each family is one `HfFamily` (`families()`).
This docstring's notes are DeepSeek-OCR's; DeepSeek-OCR 2's are in `hf_ocr2`.

Configured to DeepSeek-OCR's published dimensions (docs/deepseek-ocr-facts.md) with
full causal attention on every decoder layer and random (cheaply filled) weights.
Inputs follow DeepSeek-OCR's crop policy and token layout from the `VisionWorkload`,
not the package's own image processor (whose tiling differs).

Where the package's model differs from the official remote code (`KNOWN_DIFFERENCES`,
also written into every trace's ``environment.model_notes``):

- get_image_features runs the global view first, then the crops (official: crops
  first).  Totals are unaffected; the shim attributes branches by SAM input shape.
- CLIP attention uses separate q/k/v Linear(1024, 1024) instead of one fused
  Linear(1024, 3072): same multiply-adds, three addmm calls instead of one.
- SAM rel-pos tables are sized from config.image_size (127 rows global, 27 windowed,
  as the official 1024 configuration) and always re-interpolated (elementwise only).
- generate() applies lm_head to the last prefill position only (logits_to_keep=1);
  the shim passes logits_to_keep=0 when the workload asks for lm_head_scope "all".
- Rotary cos/sin are computed once per forward with an elementwise product (no
  matmul), not per layer as in the official Llama-style attention.
- Routed experts run through `aten._grouped_mm` (experts_implementation
  "grouped_mm"); the official code loops experts with three Linear calls each.  Both
  cost 2 * sum over routed (token, expert) pairs of 3*1280*896 multiply-adds.
- Decoder attention: "eager" (QK^T and AV matmuls, additive causal mask) or "sdpa".
  The package's default text layer type is "reference_sliding_attention"; the shim
  sets "full_attention" on all 12 layers as DeepSeek-OCR has.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import platform
import sys
import time
from typing import Any

import torch

from core.families import DEFAULT_FAMILY, HF_FAMILIES, family
from core.published import dims
from core.schema import ATTN_IMPLS, LM_HEAD_SCOPES
from core.workload import VisionWorkload
from vendor_shim.backends.base import GenerationResult, LoadedModel, PreparedInputs, ReceivedInputs, StageRoots
from vendor_shim.backends.base import VendorBackend as _VendorBackend
from vendor_shim.backends.hf_family import (
    BOS_ID,
    IMAGE_TOKEN_ID,
    HfFamily,
    decoder_config,
    published_decoder,
    sam_config,
)
from vendor_shim.errors import VendorInputError, VendorRunError
from vendor_shim.hollow import SMALL_PARAMETER_NUMEL

PROMPT_TOKEN_BASE = 1000  # arbitrary ordinary text ids for the prompt (values do not change FLOPs)
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FILL_STD = 0.02  # matches the package's initializer_range; keeps activations finite
FILL_BLOCK = 1_000_003  # prime-length random block tiled into each weight (cheap, not row-aligned)

KNOWN_DIFFERENCES = (
    "global view runs before crops in get_image_features (official: crops first); branches attributed by shape",
    "CLIP uses separate q/k/v Linear(1024,1024) (official: fused qkv Linear(1024,3072)); same FLOPs",
    "SAM rel-pos tables 127/27 rows, always interpolated (elementwise only)",
    "generate() keeps the last prefill position for lm_head; lm_head_scope='all' passes logits_to_keep=0",
    "rotary cos/sin computed once per forward with an elementwise product (official: per layer)",
    "routed experts via aten._grouped_mm (official: per-expert Linear loop); same multiply-adds",
    "text layer_types forced to full_attention (package default: reference_sliding_attention)",
)

# DeepSeek-OCR's published dimensions: core/published/ (read by the analytic model too), in transformers' names.
SAM_CONFIG = sam_config("sam_vit_b")
_CLIP = dims("clip", "clip_l14")
CLIP_PATCH = 14  # CLIP-L/14: its positions were trained for a 16x16 grid + CLS at 224 px
CLIP_CONFIG = {
    "hidden_size": _CLIP["hidden_size"],
    "intermediate_size": _CLIP["ffn_hidden_size"],
    "num_hidden_layers": _CLIP["num_layers"],
    "num_attention_heads": _CLIP["num_heads"],
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "image_size": _CLIP["pretrain_grid"] * CLIP_PATCH,
    "patch_size": CLIP_PATCH,
}
_DECODER = published_decoder("deepseek-ocr")
TEXT_LAYERS = int(_DECODER["num_layers"])


def text_config(num_layers: int = TEXT_LAYERS) -> dict[str, Any]:
    """The DeepSeek-V2 decoder as `UnlimitedOcrConfig` takes it; ``num_layers`` < 12 only for reduced-depth tests."""
    return {
        **decoder_config(_DECODER, num_layers),
        "first_k_dense_replace": _DECODER["first_k_dense_replace"],
        "hidden_act": "silu",
        "layer_types": ["full_attention"] * num_layers,  # full causal attention on every layer
    }


def _unlimited_ocr_classes() -> tuple[Any, Any]:
    from transformers.models.unlimited_ocr.configuration_unlimited_ocr import UnlimitedOcrConfig
    from transformers.models.unlimited_ocr.modeling_unlimited_ocr import UnlimitedOcrForConditionalGeneration

    return UnlimitedOcrConfig, UnlimitedOcrForConditionalGeneration


def _import_model_classes(family: HfFamily) -> tuple[Any, Any]:
    try:
        return family.classes()
    except ImportError as exc:
        raise VendorInputError(
            f"backend 'hf' needs transformers with the {family.module.rsplit('.', 2)[-2]} model (>= 5.x) for "
            f"--model {family.family}: {exc}; pip install -e '.[vendor]'"
        ) from exc


OCR1 = HfFamily(
    family="deepseek-ocr",
    module="transformers.models.unlimited_ocr.modeling_unlimited_ocr",
    classes=_unlimited_ocr_classes,
    sam_config=SAM_CONFIG,
    encoder_config=CLIP_CONFIG,
    text_config=text_config,
    vision_roots=(
        ("sam", "vision_tower.sam_encoder"),
        ("clip", "vision_tower.vision_encoder"),
        ("projector", "multi_modal_projector"),
    ),
    patches_grid=True,
    known_differences=KNOWN_DIFFERENCES,
)


def families() -> dict[str, HfFamily]:
    """Family name -> `HfFamily`: the families whose registry entry names one (core.families ``hf_family``)."""
    found = {}
    for name in HF_FAMILIES:
        module, attr = family(name).hf_family.split(":")
        found[name] = getattr(importlib.import_module(module), attr)
    return found


def cheap_fill_(model: torch.nn.Module, seed: int = 0, max_numel: int | None = None) -> None:
    """Deterministic, finite weights at memcpy speed: norms 1, biases 0, weights a tiled N(0, 0.02) block.
    ``max_numel`` leaves larger parameters unwritten (a shapes-only run never reads them: `vendor_shim.hollow`)."""
    gen = torch.Generator().manual_seed(seed)
    block_cpu = torch.randn(FILL_BLOCK, generator=gen) * FILL_STD
    blocks: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if max_numel is not None and p.numel() > max_numel:
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                p.zero_()
            elif p.dim() == 1 and ("norm" in name or "layernorm" in name or "layer_norm" in name):
                p.fill_(1.0)
            else:
                key = (p.device, p.dtype)
                if key not in blocks:
                    blocks[key] = block_cpu.to(device=p.device, dtype=p.dtype)
                block = blocks[key]
                flat = p.view(-1)
                for start in range(0, flat.numel(), FILL_BLOCK):
                    n = min(FILL_BLOCK, flat.numel() - start)
                    flat[start : start + n].copy_(block[:n])


def _restore_buffers_(model: torch.nn.Module) -> None:
    """Buffers are not weights: recompute each one to_empty() left uninitialised (unknown buffer -> error)."""
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            for buf_name, buf in mod.named_buffers(recurse=False):
                full = f"{mod_name}.{buf_name}"
                if buf_name == "position_ids":
                    buf.copy_(torch.arange(buf.shape[-1], device=buf.device).expand_as(buf))
                elif buf_name in ("inv_freq", "original_inv_freq"):
                    inv_freq, _ = mod.compute_default_rope_parameters(mod.config)
                    buf.copy_(inv_freq.to(buf.device))
                else:
                    raise VendorRunError(
                        f"hf backend: no rule to materialise buffer {full}: add one in _restore_buffers_"
                    )


def _file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def create_backend(
    *, vendor_dir: str | None = None, trust_remote_code: bool = False, model: str = DEFAULT_FAMILY
) -> HfBackend:
    """Registry factory (`vendor_shim.backends.REGISTRY`): the package's own code needs no snapshot or trust."""
    if vendor_dir is not None:
        raise VendorInputError("backend 'hf' builds the model from transformers itself: drop --vendor-dir")
    return HfBackend(family=model)


class HfBackend(_VendorBackend):
    """transformers' own classes for one model family at its published dims (see module docstring)."""

    name = "hf"

    def __init__(self, num_text_layers: int | None = None, *, family: str = DEFAULT_FAMILY) -> None:
        known = families()
        if family not in known:
            raise VendorInputError(f"backend 'hf' has no model family {family!r}: use --model {' or '.join(known)}")
        self.family = known[family]
        layers = self.family.text_layers if num_text_layers is None else num_text_layers
        if not 1 <= layers <= self.family.text_layers:
            raise VendorInputError(f"num_text_layers={layers}: use 1..{self.family.text_layers}")
        self.num_text_layers = layers

    def model_key(
        self, *, device: str, dtype: str, attn_impl: str, vision_only: bool, execution: str = "real"
    ) -> tuple[Any, ...]:
        return (self.name, self.family.family, self.num_text_layers, device, dtype, attn_impl, vision_only, execution)

    def build(
        self, *, device: str, dtype: str, attn_impl: str, vision_only: bool, execution: str = "real"
    ) -> LoadedModel:
        if dtype not in TORCH_DTYPES:
            raise VendorInputError(f"dtype {dtype!r} unknown: use one of {', '.join(TORCH_DTYPES)}")
        if attn_impl not in ATTN_IMPLS:
            raise VendorInputError(f"attn_impl {attn_impl!r} unknown: use one of {', '.join(ATTN_IMPLS)}")
        t0 = time.perf_counter()
        _, model_cls = _import_model_classes(self.family)
        config = self.family.build_config(self.num_text_layers)
        attn = {"": "sdpa", "vision_config": "sdpa", "text_config": attn_impl}
        with torch.device("meta"):
            model = model_cls._from_config(config, attn_implementation=attn, dtype=TORCH_DTYPES[dtype])
        if vision_only:
            # Drop what the vision stack never runs so CPU/meta vision counts stay cheap.
            model.model.language_model = None
            model.lm_head = None
        if device != "meta":
            model.to_empty(device=device)
            cheap_fill_(model, max_numel=SMALL_PARAMETER_NUMEL if execution == "shapes" else None)
            _restore_buffers_(model)
        model.eval()
        inner = model.model
        roots = StageRoots(
            vision=self.family.roots_of(inner),
            decoder=None if vision_only else inner.language_model,
            lm_head=None if vision_only else model.lm_head,
            top=None if vision_only else model,
        )
        info = {
            "class": type(model).__name__,
            "family": self.family.family,
            "text_layers": self.num_text_layers,
            "attn_implementation": {"vision": "sdpa", "text": attn_impl},
            "experts_implementation": getattr(config.text_config, "_experts_implementation", None),
            "model_notes": list(self.family.known_differences),
            "weights": "meta (no values)"
            if device == "meta"
            else "random (cheap fill)"
            if execution == "real"
            else f"parameters <= {SMALL_PARAMETER_NUMEL} elements cheap-filled, larger ones unwritten (shapes-only)",
        }
        return LoadedModel(
            backend=self.name,
            device=device,
            dtype=dtype,
            attn_impl=attn_impl,
            vision_only=vision_only,
            model=model,
            roots=roots,
            build_s=time.perf_counter() - t0,
            info=info,
        )

    def prepare_inputs(self, loaded: LoadedModel, workload: VisionWorkload) -> PreparedInputs:
        dev, dt = torch.device(loaded.device), TORCH_DTYPES[loaded.dtype]
        g = workload.global_view_size
        payload: dict[str, Any] = {"pixel_values": torch.zeros(1, 3, g, g, device=dev, dtype=dt)}
        if workload.has_crops:
            c = workload.crop_size
            payload["pixel_values_local"] = torch.zeros(workload.n_crops, 3, c, c, device=dev, dtype=dt)
            payload["num_local_patches"] = [workload.n_crops]
            grid = [[workload.w_crop, workload.h_crop]]  # (columns, rows)
            if self.family.patches_grid:
                payload["patches_grid"] = grid
            else:  # DeepSeek-OCR 2's model takes no grid (the crop count and the 144 i j token span carry it):
                payload["_grid"] = grid  # kept for the read-back only, never passed to the model
        ids = [BOS_ID] + [self.family.image_token_id] * workload.n_image_tokens
        ids += [PROMPT_TOKEN_BASE + i for i in range(workload.prompt_tokens)]
        payload["input_ids"] = torch.tensor([ids], dtype=torch.long, device="cpu" if dev.type == "meta" else dev)
        return PreparedInputs(received=self._read_back(payload, self.family.image_token_id), payload=payload)

    @staticmethod
    def _read_back(payload: dict[str, Any], image_token_id: int = IMAGE_TOKEN_ID) -> ReceivedInputs:
        """Counts taken from the tensors themselves, so a builder bug cannot hide behind the workload."""
        pv = payload["pixel_values"]
        if pv.shape[-1] != pv.shape[-2]:
            raise VendorRunError(f"global view {tuple(pv.shape)} is not square: fix prepare_inputs")
        local = payload.get("pixel_values_local")
        ids = payload["input_ids"][0]
        is_img = (ids == image_token_id).tolist()
        n_img = sum(is_img)
        last_img = max((i for i, v in enumerate(is_img) if v), default=0)
        grid = payload.get("patches_grid", payload.get("_grid"))
        w_crop, h_crop = grid[0] if local is not None else (1, 1)
        return ReceivedInputs(
            global_view_size=int(pv.shape[-1]),
            crop_size=int(local.shape[-1]) if local is not None else 0,
            w_crop=int(w_crop),
            h_crop=int(h_crop),
            n_crops=int(local.shape[0]) if local is not None else 0,
            n_image_tokens=int(n_img),
            prompt_tokens=int(len(is_img) - 1 - last_img),
            prefill_len=len(is_img),
        )

    def run_vision(self, loaded: LoadedModel, inputs: PreparedInputs) -> None:
        p = {k: v for k, v in inputs.payload.items() if k != "input_ids" and not k.startswith("_")}
        loaded.model.model.get_image_features(**p)

    def supports_preencoded_vision(self) -> bool:
        return True

    def run_generation_preencoded(
        self, loaded: LoadedModel, inputs: PreparedInputs, decode_tokens: int, lm_head_scope: str
    ) -> GenerationResult:
        """generate() with ``mm_encoder_outputs`` (what generate() builds itself before prefill), zeros of the
        projector's output shape: one row per image-token position, hidden 1280."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        p = inputs.payload
        ids = p["input_ids"]
        n_img = int((ids == self.family.image_token_id).sum())
        hidden = loaded.model.config.text_config.hidden_size
        feats = torch.zeros(n_img, hidden, device=ids.device, dtype=TORCH_DTYPES[loaded.dtype])
        encoded = {"image": BaseModelOutputWithPooling(pooler_output=[feats])}
        stub = PreparedInputs(inputs.received, {"input_ids": ids, "mm_encoder_outputs": encoded})
        result = self.run_generation(loaded, stub, decode_tokens, lm_head_scope)
        return GenerationResult(result.lm_head_scope, result.new_tokens, result.path + " with mm_encoder_outputs")

    def run_generation(
        self, loaded: LoadedModel, inputs: PreparedInputs, decode_tokens: int, lm_head_scope: str
    ) -> GenerationResult:
        if loaded.vision_only:
            raise VendorRunError("model was built vision-only: rebuild with vision_only=False to run the decoder")
        if lm_head_scope not in LM_HEAD_SCOPES:
            raise VendorInputError(f"lm_head_scope {lm_head_scope!r} unknown: use one of {', '.join(LM_HEAD_SCOPES)}")
        p = {k: v for k, v in inputs.payload.items() if not k.startswith("_")}
        input_ids = p.pop("input_ids")
        new = decode_tokens + 1  # the first new token comes from the prefill logits
        out = loaded.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **p,
            max_new_tokens=new,
            min_new_tokens=new,  # no early stop on EOS
            do_sample=False,
            num_beams=1,
            use_cache=True,
            logits_to_keep=0 if lm_head_scope == "all" else 1,
            pad_token_id=BOS_ID,
        )
        produced = int(out.shape[1] - input_ids.shape[1])
        if produced != new:
            raise VendorRunError(f"generate() produced {produced} tokens, expected {new}: it stopped early")
        return GenerationResult(
            lm_head_scope=lm_head_scope,
            new_tokens=produced,
            path=f"GenerationMixin.generate(greedy, min_new_tokens=max_new_tokens={new}, logits_to_keep="
            f"{0 if lm_head_scope == 'all' else 1}, DynamicCache)",
        )

    def environment(self) -> dict[str, Any]:
        import transformers

        # the modeling file is hashed, not imported: a run served from the trace cache never builds the model, and
        # importing it (torch.distributed and all) is seconds of a warm run
        try:
            spec = importlib.util.find_spec(self.family.module)
        except ImportError:  # a parent package missing: an older transformers
            spec = None
        if spec is None or spec.origin is None:
            raise VendorInputError(
                f"backend 'hf' needs transformers with {self.family.module} for --model {self.family.family}: "
                "pip install -e '.[vendor]'"
            )
        rel = "transformers/" + self.family.module.split(".", 1)[1].replace(".", "/") + ".py"
        return {
            "python": platform.python_version(),
            "python_impl": sys.implementation.name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "family": self.family.family,
            "code_hashes": {rel: _file_sha256(spec.origin)},
            "model_notes": list(self.family.known_differences),
        }
