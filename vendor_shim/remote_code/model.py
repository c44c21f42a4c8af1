"""The in-worker `VendorBackend` for a DeepSeek-OCR or DeepSeek-OCR 2 snapshot (runs under the pinned env).

It drives the snapshot's own classes and helpers, the way the official ``infer()`` does:
inputs come from the snapshot's ``dynamic_preprocess``, ``BasicImageTransform`` and
``format_messages`` (and its tokenizer, when the snapshot ships one); generation is the
snapshot model's own ``generate()`` with its ``prepare_inputs_for_generation``; the
official forward projects every prefill position through lm_head, so the scope is "all".
The family (``Snapshot.family``) picks the model module, the vision stage roots, the vision
call chain and the ``infer()`` input rules; the decoder, lm_head and generation are shared.
Only `vendor_shim.remote_code.worker` imports this module, after `compat` is applied.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.families import FAMILY_BY_NAME
from vendor_shim.backends.base import GenerationResult, LoadedModel, PreparedInputs, StageRoots, VendorBackend
from vendor_shim.errors import VendorInputError, VendorRunError
from vendor_shim.hollow import small_parameters
from vendor_shim.remote_code import compat
from vendor_shim.remote_code.inputs import INPUT_RULES, OfficialInputs
from vendor_shim.remote_code.snapshot import Snapshot, SnapshotError

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# OCR-2's infer() uses no_repeat_ngram_size 20 in eval mode, 35 when streaming: the eval value, as for OCR-1
GENERATION_PATH = "snapshot GenerationMixin.generate(greedy, no_repeat_ngram_size=20, min_new_tokens=max_new_tokens)"


def import_snapshot(snapshot: Snapshot) -> Any:
    """Import the snapshot's model module as a package (trust-remote-code semantics).

    The directory becomes package ``dsocr_snapshot_<hash>`` so its relative imports
    (``from .deepencoder import ...``) resolve inside it; a file importing a sibling by its
    bare name (``from configuration_deepseek_v2 import ...``, as several public copies do)
    gets the same module object.  The files are run as given; no bytecode is written into it.
    """
    digest = "".join(v[:4] for v in snapshot.code_hashes.values())[:16]
    pkg_name = f"dsocr_snapshot_{digest}"
    if pkg_name not in sys.modules:
        spec = importlib.machinery.ModuleSpec(pkg_name, None, is_package=True)
        spec.submodule_search_locations = [str(snapshot.root)]
        sys.modules[pkg_name] = importlib.util.module_from_spec(spec)
        hashed = (Path(n).stem for n in snapshot.code_hashes if n.endswith(".py"))  # the files load_snapshot hashed
        siblings = frozenset(stem for stem in hashed if stem.isidentifier())
        sys.meta_path.append(_SiblingFinder(pkg_name, siblings))  # last: never shadows an installed module
    sys.dont_write_bytecode = True
    try:
        return importlib.import_module(f"{pkg_name}.{snapshot.model_module}")
    except Exception as exc:
        raise SnapshotError(_import_error_line(snapshot.root, exc, snapshot.model_module)) from exc


class _SiblingFinder(importlib.abc.MetaPathFinder):
    """Resolves a snapshot file's bare-name import of a sibling to that sibling in the snapshot package."""

    def __init__(self, package: str, names: frozenset[str]) -> None:
        self.package, self.names = package, names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if path is not None or fullname not in self.names:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(f"{self.package}.{fullname}"))


class _AliasLoader(importlib.abc.Loader):
    """Loads `name` as the already importable `target`: one module object under both names."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: Any) -> None:
        # the import system hands back whatever sys.modules holds under the name after this returns
        sys.modules[module.__name__] = importlib.import_module(self.target)


def _import_error_line(root: Path, exc: BaseException, model_module: str) -> str:
    """One line naming the snapshot file (and line) where importing failed."""
    where = root / f"{model_module}.py"
    lineno: int | None = None
    if isinstance(exc, SyntaxError) and exc.filename:
        where, lineno = Path(exc.filename), exc.lineno
    else:
        for frame in traceback.extract_tb(exc.__traceback__):
            if Path(frame.filename).resolve().parent == root:
                where, lineno = Path(frame.filename), frame.lineno
    loc = f"{where}:{lineno}" if lineno else str(where)
    msg = str(exc).splitlines()[0] if str(exc) else ""
    return f"{loc}: importing the snapshot failed ({type(exc).__name__}: {msg}): fix or restore that file"


@dataclass
class _Module:
    """The snapshot's model module and the classes/helpers we use from it."""

    mod: Any
    model_cls: Any
    config_cls: Any

    def helper(self, name: str) -> Any:
        fn = getattr(self.mod, name, None)
        if fn is None:
            raise SnapshotError(f"{self.mod.__file__}: has no {name}(): the snapshot is not DeepSeek-OCR-shaped")
        return fn


class RemoteCodeModelBackend(VendorBackend):
    """A DeepSeek-OCR snapshot driven through its own classes (see module docstring)."""

    name = "remote-code"

    def __init__(self, snapshot: Snapshot, env_info: dict[str, Any] | None = None):
        self.snapshot = snapshot
        self.env_info = dict(env_info or {})
        self._module: _Module | None = None
        self._tokenizer: Any = None

    # -- loading ---------------------------------------------------------------------------
    def module(self) -> _Module:
        if self._module is None:
            mod = import_snapshot(self.snapshot)
            classes = []
            for ref in (self.snapshot.model_class, self.snapshot.config_class):
                cls = getattr(mod, ref.split(".", 1)[1], None)
                if cls is None:
                    raise SnapshotError(
                        f"{self.snapshot.root / 'config.json'}: auto_map names {ref} but "
                        f"{self.snapshot.model_module}.py defines no such class: restore the snapshot"
                    )
                classes.append(cls)
            self._module = _Module(mod, classes[0], classes[1])
        return self._module

    def tokenizer(self) -> Any:
        if self._tokenizer is None and self.snapshot.has_tokenizer:
            from transformers import AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(str(self.snapshot.root), local_files_only=True)
            except Exception as exc:
                raise SnapshotError(
                    f"{self.snapshot.root}: tokenizer files present but not loadable ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}): remove or restore them"
                ) from exc
        return self._tokenizer

    def build(
        self, *, device: str, dtype: str, attn_impl: str, vision_only: bool, execution: str = "real"
    ) -> LoadedModel:
        if attn_impl != "eager":
            raise VendorInputError(
                f"attention {attn_impl!r}: the official decoder supports only eager (and flash-attn 2): use eager"
            )
        if dtype not in TORCH_DTYPES:
            raise VendorInputError(f"dtype {dtype!r} unknown: use one of {', '.join(TORCH_DTYPES)}")
        t0 = time.perf_counter()
        model = self._instantiate(device, dtype)
        inner = model.get_model() if hasattr(model, "get_model") else model.model
        layout = FAMILY_BY_NAME[self.snapshot.family].snapshot
        vision_roots = {stage: getattr(inner, attr) for stage, attr in layout.vision_roots}
        weights = "meta (no values)"
        if device != "meta":
            weights = self._fill(model, inner, list(vision_roots.values()), vision_only, execution)
        roots = StageRoots(vision_roots)
        if not vision_only:
            roots.decoder, roots.lm_head, roots.top = inner, model.lm_head, model
        info = {
            "model_class": self.snapshot.model_class,
            "weights": weights,
            "attn_implementation": "eager",
            "family": self.snapshot.family,
            "num_parameters": sum(p.numel() for p in model.parameters()),
        }
        return LoadedModel(
            backend=self.name,
            device=device,
            dtype=dtype,
            attn_impl="eager",
            vision_only=vision_only,
            model=model,
            roots=roots,
            build_s=time.perf_counter() - t0,
            info=info,
        )

    def _instantiate(self, device: str, dtype: str) -> Any:
        """The snapshot's model class on ``device`` in ``dtype``, eager attention, weights left uninitialised."""
        m = self.module()
        config = m.config_cls.from_dict(dict(self.snapshot.config))
        config._attn_implementation = "eager"
        from transformers.modeling_utils import no_init_weights

        saved_dtype = torch.get_default_dtype()
        torch.set_default_dtype(TORCH_DTYPES[dtype])
        try:
            with torch.device(device), compat.no_init(), no_init_weights():
                model = m.model_cls(config)
        finally:
            torch.set_default_dtype(saved_dtype)
        model.eval()
        return model

    def _fill(self, model: Any, inner: Any, vision: list[Any], vision_only: bool, execution: str) -> str:
        """Write the parameters a run reads (cheap fill, then the snapshot's weight files); says what they hold."""
        # Decoder pages are never touched in a vision-only run: no fill, no memory.
        targets = vision if vision_only else [model]
        for part in targets:
            # a shapes-only run never reads the large matrices (vendor_shim.hollow): leave them unwritten
            compat.fill_parameters(small_parameters(part) if execution == "shapes" else part)
        for name in ("image_newline", "view_seperator"):
            p = getattr(inner, name, None)
            if isinstance(p, torch.nn.Parameter):
                compat.fill_parameters(torch.nn.ParameterList([p]))
        weights = "random (cheap fill)" if execution == "real" else "small parameters cheap-filled (shapes-only)"
        if self.snapshot.weight_files:
            weights = self._load_weights(model)
        return weights

    def _load_weights(self, model: Any) -> str:
        loaded, missing = 0, set(model.state_dict())
        for name in self.snapshot.weight_files:
            path = self.snapshot.root / name
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            result = model.load_state_dict(sd, strict=False)
            loaded += len(sd) - len(result.unexpected_keys)
            missing -= set(sd)
        return f"loaded {loaded} tensors from {len(self.snapshot.weight_files)} files ({len(missing)} left random)"

    # -- inputs ----------------------------------------------------------------------------
    def prepare_inputs(self, loaded: LoadedModel, workload: Any) -> PreparedInputs:
        """The official infer() input pipeline on a synthetic page of the workload's size."""
        builder = OfficialInputs(self.module().helper, self.tokenizer(), rules=INPUT_RULES[self.snapshot.family])
        return builder.build(workload, dtype=TORCH_DTYPES[loaded.dtype], device=loaded.device)

    # -- running ---------------------------------------------------------------------------
    def run_vision(self, loaded: LoadedModel, inputs: PreparedInputs) -> None:
        """The vision block of the family's model forward (`VISION_FORWARDS`): crops first, then the global view."""
        images_crop, images_ori = inputs.payload["images"][0]
        views = (images_crop, images_ori) if inputs.payload["has_crops"] else (images_ori,)
        forward = VISION_FORWARDS[self.snapshot.family]
        with torch.no_grad():
            for view in views:
                forward(loaded.roots.vision, view)

    def run_generation(
        self, loaded: LoadedModel, inputs: PreparedInputs, decode_tokens: int, lm_head_scope: str
    ) -> GenerationResult:
        if lm_head_scope != "all":
            raise VendorInputError(
                "lm_head scope 'last': the official forward projects every prefill position; use --lm-head all"
            )
        p = inputs.payload
        n_new = decode_tokens + 1  # the first new token comes from the prefill logits
        eos = getattr(loaded.model.config, "eos_token_id", None)
        eos = 1 if eos is None else eos
        with torch.no_grad():
            out = loaded.model.generate(
                p["input_ids"],
                images=p["images"],
                images_seq_mask=p["images_seq_mask"],
                images_spatial_crop=p["images_spatial_crop"],
                do_sample=False,
                num_beams=1,
                eos_token_id=eos,
                pad_token_id=eos,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                no_repeat_ngram_size=20,
                use_cache=True,
            )
        produced = int(out.shape[1] - p["input_ids"].shape[1])
        if produced != n_new:
            raise VendorRunError(f"generate() produced {produced} tokens, expected {n_new}: early stop in the snapshot")
        return GenerationResult(lm_head_scope="all", new_tokens=produced, path=GENERATION_PATH)

    def environment(self) -> dict[str, Any]:
        import platform

        import transformers

        env = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "backend": self.name,
            "vendor_dir": str(self.snapshot.root),
            "family": self.snapshot.family,
            "code_hashes": dict(self.snapshot.code_hashes),
            "tokenizer": "snapshot" if self.snapshot.has_tokenizer else "none (workload prompt token count)",
            "weights": list(self.snapshot.weight_files) or "none (random init)",
        }
        env.update(self.env_info)
        return env

    def model_key(
        self, *, device: str, dtype: str, attn_impl: str, vision_only: bool, execution: str = "real"
    ) -> tuple[Any, ...]:
        hashes = json.dumps(self.snapshot.code_hashes, sort_keys=True)
        return (self.name, hashes, device, dtype, attn_impl, vision_only, execution)


def _vision_ocr1(roots: dict[str, Any], view: torch.Tensor) -> None:
    """DeepseekOCRModel.forward's vision block on one view: projector([clip(x, sam(x))[:, 1:]; sam(x)])."""
    sam_out = roots["sam"](view)
    clip_out = roots["clip"](view, sam_out)
    roots["projector"](torch.cat((clip_out[:, 1:], sam_out.flatten(2).permute(0, 2, 1)), dim=-1))


def _vision_ocr2(roots: dict[str, Any], view: torch.Tensor) -> None:
    """DeepseekOCR2Model.forward's vision block on one view: projector(qwen2_model(sam(x)))."""
    roots["projector"](roots["qwen2_encoder"](roots["sam"](view)))


# Per family: its official forward's vision block on one view (the roots are core.families' snapshot layout).
VISION_FORWARDS = {"deepseek-ocr": _vision_ocr1, "deepseek-ocr-2": _vision_ocr2}
