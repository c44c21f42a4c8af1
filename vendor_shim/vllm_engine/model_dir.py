"""The model folder vLLM loads: config.json and a tokenizer, written by the project from the published dims.

vLLM builds DeepSeek-OCR from a Hugging Face style folder.  With ``load_format="dummy"`` it needs no weights, but it
does need the official config.json layout (``language_config``, ``projector_config``, the architecture naming the
family) and a tokenizer: its processor refuses to run without one and the model reads ``tokenizer.vocab["<image>"]``.
The real tokenizer is not ours to ship, and the counts do not depend on it beyond the prompt's length, so the folder
gets a byte-level tokenizer (one token per UTF-8 byte) whose special tokens sit at DeepSeek's ids
(`core.families.DEEPSEEK_TOKENS`: ``<｜begin▁of▁sentence｜>`` 0, ``<｜end▁of▁sentence｜>`` 1, ``<image>`` 128815) and
which, like DeepSeek's, prepends BOS when the engine encodes a prompt.  A prompt of N ASCII characters after the
``<image>`` tag is then exactly N text tokens.

Everything is derived from `core.published` (the decoder's dims) and `core.families`; the folder's name hashes its
files, so a change of dims writes a new one.  `tokenizers` is imported here, inside the vLLM worker's environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from core.families import FAMILY_TABLE, TokenIds
from core.published import dims

BOS_TEXT = "<｜begin▁of▁sentence｜>"
EOS_TEXT = "<｜end▁of▁sentence｜>"
PAD_TEXT = "<｜▁pad▁｜>"  # the pad token vLLM's DeepseekOCRProcessor adds when the tokenizer has none
IMAGE_TEXT = "<image>"
PAD_ID = 2  # DeepSeek's <｜▁pad▁｜>

# The config.json architecture vLLM dispatches on, per family (vLLM's model registry names)
ARCHITECTURES = {"deepseek-ocr": "DeepseekOCRForCausalLM", "deepseek-ocr-2": "DeepseekOCR2ForCausalLM"}
# projector_config of the official config.json: linear from the vision features to the decoder width
PROJECTOR_INPUT = {"deepseek-ocr": 2048, "deepseek-ocr-2": 896}  # CLIP 1024 + SAM 1024; the Qwen2 encoder's 896


def language_config(decoder: str, num_layers: int | None) -> dict[str, Any]:
    """The official ``language_config`` (DeepseekV2Config keys) from the published decoder dims; ``num_layers``
    builds a shallower decoder (reduced-depth runs), None the published depth."""
    d = dims("decoder", decoder)
    return {
        "vocab_size": d["vocab_size"],
        "hidden_size": d["hidden_size"],
        "intermediate_size": d["intermediate_size"],
        "moe_intermediate_size": d["moe_intermediate_size"],
        "num_hidden_layers": d["num_layers"] if num_layers is None else num_layers,
        "num_attention_heads": d["num_heads"],
        "num_key_value_heads": d["num_kv_heads"],
        "n_shared_experts": d["n_shared_experts"],
        "n_routed_experts": d["n_routed_experts"],
        "num_experts_per_tok": d["num_experts_per_tok"],
        "first_k_dense_replace": d["first_k_dense_replace"],
        "moe_layer_freq": d["moe_layer_freq"],
        "topk_method": "greedy",
        "n_group": 1,
        "topk_group": 1,
        "norm_topk_prob": False,
        "scoring_func": "softmax",
        "routed_scaling_factor": 1.0,
        "use_mla": d["use_mla"],
        "kv_lora_rank": None,
        "q_lora_rank": d["q_lora_rank"],
        "qk_nope_head_dim": 0,
        "qk_rope_head_dim": 0,
        "v_head_dim": 0,
        "max_position_embeddings": d["max_position_embeddings"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
    }


def config_json(family: str, num_layers: int | None) -> dict[str, Any]:
    """The official config.json layout of ``family`` (vLLM's DeepseekVLV2Config reads it)."""
    fam = next(f for f in FAMILY_TABLE if f.name == family)
    return {
        "architectures": [ARCHITECTURES[family]],
        "model_type": "deepseek_vl_v2",
        "candidate_resolutions": [[1024, 1024]],
        "global_view_pos": "head",
        "tile_tag": "2D",
        "projector_config": {
            "input_dim": PROJECTOR_INPUT[family],
            "model_type": "mlp_projector",
            "n_embed": dims("decoder", fam.decoder)["hidden_size"],
            "projector_type": "linear",
        },
        "language_config": language_config(fam.decoder, num_layers),
        # vLLM's OCR-2 model checks the global view against vision_config.image_size (its default is 384)
        "vision_config": {"image_size": fam.rules.modes["gundam"].base_size},
        "bos_token_id": fam.tokens.bos,
        "eos_token_id": fam.tokens.eos,
        "torch_dtype": "bfloat16",
    }


def _specials(tokens: TokenIds) -> dict[int, str]:
    return {tokens.bos: BOS_TEXT, tokens.eos: EOS_TEXT, PAD_ID: PAD_TEXT, tokens.image: IMAGE_TEXT}


def tokenizer_json(vocab_size: int, tokens: TokenIds) -> str:
    """A byte-level BPE tokenizer without merges: the 256 byte symbols after the specials' ids, the special tokens
    at DeepSeek's ids, every other id a reserved placeholder (the vocabulary has the model's size)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    specials = _specials(tokens)
    vocab: dict[str, int] = {text: i for i, text in specials.items()}
    free = (i for i in range(vocab_size) if i not in specials)
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = next(free)
    for i in free:
        vocab[f"<|reserved_{i}|>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TEXT} $A", pair=f"{BOS_TEXT} $A $B", special_tokens=[(BOS_TEXT, tokens.bos)]
    )
    tok.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in specials.values()])
    return tok.to_str()


def write_model_dir(root: Path, family: str, num_layers: int | None = None) -> Path:
    """``root/<family>-<hash>``: config.json, tokenizer.json, tokenizer_config.json (reused when present)."""
    fam = next(f for f in FAMILY_TABLE if f.name == family)
    config = config_json(family, num_layers)
    files = {
        "config.json": json.dumps(config, indent=1, sort_keys=True),
        "tokenizer_config.json": json.dumps(
            {
                "tokenizer_class": "LlamaTokenizerFast",
                "bos_token": BOS_TEXT,
                "eos_token": EOS_TEXT,
                "pad_token": PAD_TEXT,
                "add_bos_token": True,
                "add_eos_token": False,
                "model_max_length": config["language_config"]["max_position_embeddings"],
            },
            sort_keys=True,
        ),
    }
    key = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / f"{family}-{key}"
    if (folder / "tokenizer.json").is_file():
        return folder
    tmp = root / f".{folder.name}.partial"
    tmp.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (tmp / name).write_text(text, encoding="utf-8")
    (tmp / "tokenizer.json").write_text(tokenizer_json(config["language_config"]["vocab_size"], fam.tokens), "utf-8")
    with contextlib.suppress(OSError):  # another worker wrote it first
        tmp.rename(folder)
    return folder
