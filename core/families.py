"""The model families, each declared once: its stages, its workload rules, the analytic config that models it and
what an official snapshot of it looks like.

Every per-family table elsewhere (the stage lists, the workload rules, the analytic config names, the remote-code
snapshot rules, the `--model` choices, the families each backend runs) is read from `FAMILY_TABLE`.  A family's
torch-side pieces (transformers classes, stage roots) live with the backend that runs them; the entry names them
(`hf_family`, a ``module:attribute`` string: core imports nothing of them).
Facts: docs/deepseek-ocr-facts.md, docs/deepseek-ocr2-facts.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModePreset:
    base_size: int
    image_size: int
    crop_mode: bool


@dataclass(frozen=True)
class FamilyRules:
    """The workload rules of one model family: data, read by `core.workload`."""

    modes: dict[str, ModePreset]
    crop_size: int  # side of one crop; pages with both sides <= it get no crops
    crop_min: int  # fewest crops of a grid (dynamic_preprocess min_num)
    crop_max: int  # most crops of a grid (dynamic_preprocess max_num)
    view_sizes: tuple[int, ...] | None  # the only view sides that can run; None: any multiple of 64
    newlines: bool  # one newline token after each row of queries (OCR-1) or none (OCR-2)


@dataclass(frozen=True)
class SnapshotLayout:
    """What one family's official Hugging Face snapshot looks like (backend remote-code)."""

    architecture: str  # config.json architectures[...] entry
    model_module: str  # the module auto_map points into
    code_files: tuple[str, ...]  # the files the official remote code consists of
    vision_roots: tuple[tuple[str, str], ...]  # (vision stage, attribute of the inner model), in pipeline order


@dataclass(frozen=True)
class TokenIds:
    """The special token ids the model's prompt is built from."""

    bos: int
    eos: int
    image: int  # <image>: one per image embedding the vision stack scatters into the prompt


# DeepSeek's tokenizer (both families): <｜begin▁of▁sentence｜> 0, <｜end▁of▁sentence｜> 1, <image> 128815
DEEPSEEK_TOKENS = TokenIds(bos=0, eos=1, image=128815)


@dataclass(frozen=True)
class Family:
    """One model family: everything the torch-free side knows of it."""

    name: str  # the --model value
    title: str  # for messages
    vision_stages: tuple[str, ...]  # in pipeline order (each has a global and a crops branch)
    analytic_config: str  # analytic/configs/<name>.yaml
    decoder: str  # its published decoder, core/published/decoder/<name>.yaml (the config composes the same file)
    rules: FamilyRules
    snapshot: SnapshotLayout | None  # None: no official snapshot layout known (backend remote-code cannot run it)
    hf_family: str | None  # its `HfFamily` for backend hf, "module:attribute"; None: backend hf cannot run it
    tokens: TokenIds = DEEPSEEK_TOKENS


# DeepSeek-OCR's modes (docs/deepseek-ocr-facts.md, "Modes"); dynamic_preprocess is called with its own defaults in
# the official infer(): crops of 640, 2..9 of them.
MODES: dict[str, ModePreset] = {
    "tiny": ModePreset(512, 512, False),
    "small": ModePreset(640, 640, False),
    "base": ModePreset(1024, 1024, False),
    "large": ModePreset(1280, 1280, False),
    "gundam": ModePreset(1024, 640, True),
}
CROP_SIZE = 640
CROP_MIN_NUM = 2
CROP_MAX_NUM = 9

# DeepSeek-OCR 2 (docs/deepseek-ocr2-facts.md, "Modes"): the official README's one mode is global 1024 + 0 or
# 2..6 crops of 768 (named gundam here, as OCR-1's crop mode); one 1024 or one 768 view without crops.
MODES_OCR2: dict[str, ModePreset] = {
    "small": ModePreset(768, 768, False),
    "base": ModePreset(1024, 1024, False),
    "gundam": ModePreset(1024, 768, True),
}

_SHARED_CODE = ("modeling_deepseekv2.py", "configuration_deepseek_v2.py", "conversation.py")

FAMILY_TABLE: tuple[Family, ...] = (
    Family(
        name="deepseek-ocr",
        title="DeepSeek-OCR",
        vision_stages=("sam", "clip", "projector"),
        analytic_config="model",
        decoder="deepseek_v2_3b",
        rules=FamilyRules(MODES, CROP_SIZE, CROP_MIN_NUM, CROP_MAX_NUM, None, True),
        snapshot=SnapshotLayout(
            "DeepseekOCRForCausalLM",
            "modeling_deepseekocr",
            ("modeling_deepseekocr.py", "deepencoder.py", *_SHARED_CODE),
            (("sam", "sam_model"), ("clip", "vision_model"), ("projector", "projector")),
        ),
        hf_family="vendor_shim.backends.hf:OCR1",
    ),
    Family(
        name="deepseek-ocr-2",
        title="DeepSeek-OCR 2",
        vision_stages=("sam", "qwen2_encoder", "projector"),  # DeepEncoder V2: Qwen2-shaped encoder + queries
        analytic_config="model_ocr2",
        decoder="deepseek_v2_3b",  # DeepSeek-OCR's
        rules=FamilyRules(MODES_OCR2, 768, 2, 6, (768, 1024), False),
        snapshot=SnapshotLayout(
            "DeepseekOCR2ForCausalLM",
            "modeling_deepseekocr2",
            ("modeling_deepseekocr2.py", "deepencoderv2.py", *_SHARED_CODE),
            (("sam", "sam_model"), ("qwen2_encoder", "qwen2_model"), ("projector", "projector")),
        ),
        hf_family="vendor_shim.backends.hf_ocr2:FAMILY",
    ),
)
FAMILY_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILY_TABLE}
FAMILIES: tuple[str, ...] = tuple(FAMILY_BY_NAME)
DEFAULT_FAMILY = FAMILIES[0]  # every name without a family is DeepSeek-OCR's
HF_FAMILIES: tuple[str, ...] = tuple(f.name for f in FAMILY_TABLE if f.hf_family)  # what backend hf runs
SNAPSHOT_FAMILIES: tuple[str, ...] = tuple(f.name for f in FAMILY_TABLE if f.snapshot)  # what remote-code runs


def family(name: str) -> Family:
    """The family called ``name``, or a one-line error naming the families that exist."""
    try:
        return FAMILY_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}: use one of {', '.join(FAMILIES)} (--model)") from None
