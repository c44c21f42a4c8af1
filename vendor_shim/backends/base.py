"""The contract between the counting harness and a vendor backend.

A backend knows how to build one real implementation of DeepSeek-OCR and drive it;
the harness (`vendor_shim.harness`) knows how to count what it executes.  The harness
never imports transformers: it sees only `torch.nn.Module` objects and the dataclasses
below, so the remote-code backend can run the very same harness inside a subprocess
that has its own pinned transformers.

What a backend provides (`VendorBackend`):

- ``build(device=, dtype=, attn_impl=, vision_only=, execution=) -> LoadedModel``: the model on
  ``device`` ("cpu", "cuda" or "meta"; meta only for vision-only counting) in ``dtype``
  ("float32" | "bfloat16" | "float16"), decoder attention ``attn_impl`` ("eager" |
  "sdpa"), plus its `StageRoots`.  Building must be cheap (meta + cheap fill), and
  must not keep global state.  ``execution="shapes"`` means the run will be hollow
  (`vendor_shim.hollow`): parameters above ``SMALL_PARAMETER_NUMEL`` need not be written,
  since nothing that reads them computes.  The caller may hold the `LoadedModel` (see
  `vendor_shim.cache.ModelCache`) and reuse it for many workloads.
- ``prepare_inputs(loaded, workload) -> PreparedInputs``: the model inputs for one
  `analytic.VisionWorkload`, built with DeepSeek-OCR's own crop policy and token
  layout, together with `ReceivedInputs`: the grid and token counts read back from
  the tensors actually handed to the model (not copied from the workload).  The
  harness compares them with the workload and fails loudly on any difference.
- ``run_vision(loaded, inputs)``: the vision stack only (SAM, CLIP, projector for the
  crops and the global view), in the order the implementation runs them.
- ``run_generation(loaded, inputs, decode_tokens, lm_head_scope) -> GenerationResult``:
  prefill plus exactly ``decode_tokens`` single-token decoder forwards through the
  implementation's real cached generation path (no early stop).  ``lm_head_scope``
  "last" keeps only the last prefill position through lm_head (what `generate()` does
  in transformers 5), "all" projects every prefill position (the official code).
- optional ``run_generation_preencoded(...)``: the same generation, but with the vision
  stack's output supplied as same-shaped placeholders (the path `generate()` itself takes
  with pre-encoded features), so the harness can count the vision stack on the meta
  device and the decoder on a real one (``measure(..., vision_device="meta")``).
- ``environment() -> dict``: python/torch/transformers versions and, for remote code,
  ``code_hashes`` {relative file path: sha256} of every code file executed.

Harness entry (what an in-process caller, or a backend's subprocess, runs):
``vendor_shim.harness.run_counted(backend, loaded, workload, *, vision_only, fvcore=True) -> Trace``.
It depends on torch only.

Stage roots (`StageRoots`): one module per stage whose forward calls the harness hooks.
``vision``: the family's vision stages (`core.schema.family_vision_stages`: ``sam``, ``clip``,
``projector`` for DeepSeek-OCR; ``sam``, ``qwen2_encoder``, ``projector`` for DeepSeek-OCR 2), each called
once per branch, ``decoder``
(everything of the language model except lm_head), ``lm_head``, and ``top``: the
module whose forward runs once per generation step (call 0 = prefill, calls 1..K =
decode steps).  Roots may nest (the official decoder module runs the vision stack
inside its forward); FLOPs go to the innermost active root.  Ops outside every root
land in an explicit ``unattributed`` bucket; if they carry counted FLOPs the run fails.

Branch attribution (global vs crops) is decided by the harness from the input of a vision root that
receives the pixels (the first vision stage always does): batch 1 at the workload's global view size is
``global``, batch ``n_crops`` at the crop size is ``crops``; anything else is an error.  A root whose input
is not an image takes the branch of the call that decided last (and their batch must agree).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from vendor_shim.errors import WorkloadMismatchError
from vendor_shim.trace import DEVICES  # the devices a backend builds on are those a trace may name
from vendor_shim.versions import library_versions

if TYPE_CHECKING:  # the harness needs torch; this module must stay importable for typing tools
    import torch

    from core.workload import VisionWorkload
    from vendor_shim.foreign_ops import ForeignOps

# How the counted ops run: "shapes" = hollow (vendor_shim.hollow: zeros of the right shape, no arithmetic,
# balanced routing), "real" = the arithmetic itself (the reference).  "auto": shapes on cpu, real on cuda.
EXECUTIONS = ("shapes", "real")
EXECUTION_CHOICES = ("auto", *EXECUTIONS)


def resolve_execution(requested: str, device: str) -> str:
    """``auto`` -> "real" on cuda (fast, and its allocator statistics are real), "shapes" elsewhere."""
    if requested not in EXECUTION_CHOICES:
        raise ValueError(f"execution {requested!r} unknown: use one of {', '.join(EXECUTION_CHOICES)}")
    if requested != "auto":
        return requested
    return "real" if device == "cuda" else "shapes"


VISION_DEVICE_CHOICES = ("auto", "meta", "same")


def resolve_vision_device(requested: str, *, device: str, splits_vision: bool, vision_only: bool) -> str | None:
    """Where the vision stack is counted in a full run (None: on ``device``).  ``auto``: meta when the model
    runs on cpu and the backend can split (`BackendSpec.splits_vision`; identical counts, tested), else on
    ``device``."""
    if vision_only or requested == "same":
        return None
    if requested == "auto":
        return "meta" if device == "cpu" and splits_vision else None
    return requested


def device_refusal(device: str, vision_only: bool) -> str | None:
    """Why no backend can count this request on ``device`` (unknown, or meta for a full run), else None."""
    if device not in DEVICES:
        return f"device {device!r} unknown: use one of {', '.join(DEVICES)}"
    if device == "meta" and not vision_only:
        return "device 'meta' counts only the vision stack (MoE routing needs data): add --vision-only or use cpu"
    return None


@dataclass
class StageRoots:
    """The modules whose forward calls delimit the stages (see module docstring)."""

    vision: dict[str, torch.nn.Module]  # vision stage -> root, in the family's pipeline order (schema)
    decoder: torch.nn.Module | None = None  # None when built vision-only
    lm_head: torch.nn.Module | None = None
    top: torch.nn.Module | None = None  # one forward per generation step

    def named(self) -> dict[str, torch.nn.Module]:
        """Stage name -> module, for the stages that exist (``top`` is not a stage)."""
        out = dict(self.vision)
        if self.decoder is not None:
            out["decoder"] = self.decoder
        if self.lm_head is not None:
            out["lm_head"] = self.lm_head
        return out


@dataclass
class LoadedModel:
    """A built model plus what the harness needs to count it."""

    backend: str
    device: str
    dtype: str
    attn_impl: str
    vision_only: bool
    model: Any  # torch.nn.Module (or a backend-specific wrapper)
    roots: StageRoots
    build_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # config summary, known differences, ...


@dataclass(frozen=True)
class ReceivedInputs:
    """Grid and token counts read back from the tensors the model actually received."""

    global_view_size: int
    crop_size: int  # 0 without crops
    w_crop: int
    h_crop: int
    n_crops: int
    n_image_tokens: int  # image-token positions in input_ids
    prompt_tokens: int  # text tokens after the image tokens (BOS excluded)
    prefill_len: int  # len(input_ids)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def check_against(self, workload: VisionWorkload) -> None:
        """Raise `WorkloadMismatchError` naming every field that differs from the workload."""
        expected = {
            "global_view_size": workload.global_view_size,
            "crop_size": workload.crop_size if workload.has_crops else 0,
            "w_crop": workload.w_crop,
            "h_crop": workload.h_crop,
            "n_crops": workload.n_crops,
            "n_image_tokens": workload.n_image_tokens,
            "prompt_tokens": workload.prompt_tokens,
            "prefill_len": workload.prefill_len,
        }
        got = self.to_dict()
        bad = [f"{k}: model got {got[k]}, workload says {v}" for k, v in expected.items() if got[k] != v]
        if bad:
            raise WorkloadMismatchError(
                "vendor inputs disagree with the workload (" + "; ".join(bad) + "): fix the backend's input builder"
            )


@dataclass
class PreparedInputs:
    """Backend-specific model inputs plus what they contain."""

    received: ReceivedInputs
    payload: dict[str, Any]  # e.g. input_ids, pixel_values, ... (opaque to the harness)


@dataclass(frozen=True)
class GenerationResult:
    """What the generation loop did, as observed by the backend."""

    lm_head_scope: str  # "all" | "last": the scope really used in prefill
    new_tokens: int  # tokens produced (decode_tokens + 1: the first comes from the prefill logits)
    path: str  # e.g. "transformers.GenerationMixin.generate(greedy, min_new_tokens=max_new_tokens)"


class BackendBase(ABC):
    """What every backend tells the verifier, in-process or not: its name, environment, and what beyond the
    workload changes its counts (code hashes, library versions: both go into cache keys)."""

    name: ClassVar[str]

    @abstractmethod
    def environment(self) -> dict[str, Any]: ...

    def signature(self) -> dict[str, Any]:
        """Backend name and sha256 of the code it executes, {relative file: sha256}."""
        return {"backend": self.name, "code_hashes": dict(self.environment().get("code_hashes", {}))}

    def cache_versions(self) -> dict[str, str | None]:
        """Library versions the counts depend on (the ones the backend really runs with)."""
        return library_versions()


class VendorBackend(BackendBase):
    """One real implementation of DeepSeek-OCR, driven for counting in this process (see module docstring)."""

    @abstractmethod
    def build(
        self, *, device: str, dtype: str, attn_impl: str, vision_only: bool, execution: str = "real"
    ) -> LoadedModel: ...

    @abstractmethod
    def prepare_inputs(self, loaded: LoadedModel, workload: VisionWorkload) -> PreparedInputs: ...

    @abstractmethod
    def run_vision(self, loaded: LoadedModel, inputs: PreparedInputs) -> None: ...

    @abstractmethod
    def run_generation(
        self, loaded: LoadedModel, inputs: PreparedInputs, decode_tokens: int, lm_head_scope: str
    ) -> GenerationResult: ...

    def foreign_ops(self) -> ForeignOps:
        """The ops outside aten its code calls, each with its complete charge (`vendor_shim.foreign_ops`); none for
        code that runs on aten alone."""
        from vendor_shim.foreign_ops import NO_FOREIGN_OPS

        return NO_FOREIGN_OPS

    def supports_preencoded_vision(self) -> bool:
        """True if `run_generation_preencoded` is implemented."""
        return False

    def run_generation_preencoded(
        self, loaded: LoadedModel, inputs: PreparedInputs, decode_tokens: int, lm_head_scope: str
    ) -> GenerationResult:
        """`run_generation` with placeholder image features instead of running the vision stack (optional)."""
        raise NotImplementedError(f"backend {self.name!r} cannot run the decoder on pre-encoded vision features")

    def model_key(
        self, *, device: str, dtype: str, attn_impl: str, vision_only: bool, execution: str = "real"
    ) -> tuple[Any, ...]:
        """Identity of a built model for `ModelCache`; include code hashes if the code can change."""
        return (self.name, device, dtype, attn_impl, vision_only, execution)

    def supports_device(self, device: str, vision_only: bool) -> str | None:
        """None if the device is usable, else a one-line reason (the CLI exits 2 with it)."""
        return device_refusal(device, vision_only)


class OutOfProcessBackend(BackendBase):
    """A backend that runs the harness elsewhere (e.g. a pinned-environment subprocess).

    `vendor_shim.measure()` hands it the whole request and expects a trace document back
    (`Trace.to_dict()` form, validated by the caller); the verifier hands it every distinct workload of a run at
    once (`measure_dicts`), so one worker and one model build serve the run.
    """

    @abstractmethod
    def measure_dicts(self, workloads: Sequence[VisionWorkload], **options: Any) -> list[dict[str, Any] | Exception]:
        """One trace document or the exception of its failure per workload; request-wide problems raise.

        The keyword options (``device``, ``vision_only``, ``timeout_s``, ``execution``, ``dtype_reason``) are the
        implementation's to declare: `RemoteCodeBackend.measure_dicts`."""

    def measure_dict(self, workload: VisionWorkload, **options: Any) -> dict[str, Any]:
        """The trace document of one workload (`measure_dicts` options); its failure raises."""
        result = self.measure_dicts([workload], **options)[0]
        if isinstance(result, Exception):
            raise result
        return result
