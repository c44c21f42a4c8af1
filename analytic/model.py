"""The cost model: Hydra config -> layer graph (built once) -> per-workload estimate.

`build_cost_model(["decoder.num_layers=2"])` composes analytic/configs/model.yaml with the
overrides and instantiates the `_target_` nodes; `CostModel.estimate(workload)` is then plain
arithmetic on the workload's shapes, memoised per (component, shape) signature.
`build_cost_model(family="deepseek-ocr-2")` composes that family's config instead (FAMILY_CONFIGS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analytic.composites import Decode, Prefill, VisionBranch
from analytic.costs import Cost
from analytic.layers.clip import ClipEncoder
from analytic.layers.common import ConfigError
from analytic.layers.decoder import Decoder
from analytic.layers.projector import MlpProjector
from analytic.layers.sam import SamEncoder
from core.families import DEFAULT_FAMILY, FAMILIES, FAMILY_TABLE
from core.metrics import combine
from core.profiles import ImplProfile, ProfileError, at_release, profile_configs
from core.schema import LM_PARTS, VISION_BRANCHES, family_vision_stages
from core.workload import VisionWorkload, family_rules

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# One Hydra primary config per model family (analytic/configs/<name>.yaml), named by the family registry.
FAMILY_CONFIGS = {f.name: f.analytic_config for f in FAMILY_TABLE}
_MEMO_LIMIT = 50_000
# Hydra keys that name or shape the code `instantiate` runs: an --override may never set them
CODE_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


def _leaf(c: Cost, causal: bool) -> dict[str, int]:
    d = c.metrics()  # every metric, then causal_tensor_flops
    if not causal:
        del d["causal_tensor_flops"]
    return d


def _zero_leaf(causal: bool) -> dict[str, int]:
    return _leaf(Cost(), causal)


def _sum_leaves(leaves: list[dict[str, int]], causal: bool) -> dict[str, int]:
    """Decode stage from its steps: work adds up, peaks take the maximum (`core.metrics.combine`)."""
    return {k: combine(k, [leaf[k] for leaf in leaves]) for k in _zero_leaf(causal)}


@dataclass
class Estimate:
    """Analytic cost of one workload: `stages[stage][part][metric]`, per-family FLOPs, op records."""

    workload: VisionWorkload
    stages: dict[str, Any]
    families: dict[str, dict[str, dict[str, int]]]
    model: dict[str, Any]
    records: list[dict[str, Any]] | None = None
    memory: dict[str, Any] | None = None  # resident weights and KV cache (`CostModel.resident`)

    @property
    def total_tensor_flops(self) -> int:
        return sum(self.stages[s][p]["tensor_flops"] for s in self.stages for p in self.stages[s] if p != "steps")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "workload": self.workload.to_dict(),
            "stages": self.stages,
            "families": self.families,
            "model": self.model,
        }
        if self.memory is not None:
            d["memory"] = self.memory
        if self.records is not None:
            d["records"] = self.records
        return d


@dataclass
class CostModel:
    """The instantiated layer graph; evaluate many workloads against it."""

    vision: dict[str, Any]
    projector: MlpProjector
    decoder: Decoder
    profiles: dict[str, ImplProfile]
    composites: dict[str, Any]
    family: str = DEFAULT_FAMILY
    config: dict[str, Any] = field(default_factory=dict)
    _memo: dict[tuple, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r} unknown: use one of {', '.join(FAMILIES)}")
        self.vision_stages = family_vision_stages(self.family)
        expected = {s for s in self.vision_stages if s != "projector"}
        if set(self.vision) != expected:
            raise ConfigError(
                f"family {self.family} has vision stages {', '.join(self.vision_stages)}: its config needs "
                f"vision.{{{', '.join(sorted(expected))}}}, not vision.{{{', '.join(sorted(self.vision))}}}"
            )
        for name in ("vision_global", "vision_crops", "prefill", "decode"):
            if name not in self.composites:
                raise ConfigError(f"config has no composites.{name}: restore it in analytic/configs/model.yaml")
        self.sam: SamEncoder = self.vision["sam"]
        if "clip" in self.vision:
            self._check_clip()
        else:
            self._check_query_encoder()
        if self.projector.output_dim != self.decoder.hidden_size:
            raise ConfigError(
                f"projector output {self.projector.output_dim} != decoder.hidden_size={self.decoder.hidden_size}: "
                "override projector.n_embed to match"
            )
        for key, prof in self.profiles.items():
            if key != prof.name:
                raise ConfigError(f"profiles.{key}.name={prof.name!r} must equal its key {key!r}")

    def _check_query_encoder(self) -> None:
        """DeepSeek-OCR 2: SAM's map is the encoder's token embedding; the projector reads its outputs."""
        enc = self.vision[self.vision_stages[1]]
        if self.sam.out_channels != enc.hidden_size:
            raise ConfigError(
                f"vision.sam.downsample_channels[-1]={self.sam.out_channels} must equal vision.{self.vision_stages[1]}"
                f".hidden_size={enc.hidden_size} (SAM's map is the encoder's token embedding)"
            )
        if self.projector.projector_type != "identity" and self.projector.total_input_dim != enc.hidden_size:
            raise ConfigError(
                f"projector.input_dim={self.projector.input_dim} does not match the encoder's {enc.hidden_size}: "
                f"override projector.input_dim={enc.hidden_size}"
            )

    def _check_clip(self) -> None:
        self.clip: ClipEncoder = self.vision["clip"]
        feat = self.clip.hidden_size + self.sam.out_channels
        single_input = ("linear", "mlp_gelu", "downsample_mlp_gelu", "normlayer_downsample_mlp_gelu")
        checked = self.projector.projector_type in (*single_input, "hybrid_split_feature_mlp_gelu")
        if checked and self.projector.total_input_dim != feat:
            raise ConfigError(
                f"projector.input_dim={self.projector.input_dim} does not match CLIP {self.clip.hidden_size} + "
                f"SAM {self.sam.out_channels} = {feat}: override projector.input_dim={feat}"
            )
        if self.sam.out_channels != self.clip.hidden_size:
            raise ConfigError(
                f"vision.sam.downsample_channels[-1]={self.sam.out_channels} must equal vision.clip.hidden_size="
                f"{self.clip.hidden_size} (SAM's map is CLIP's patch embedding)"
            )

    # --- public -----------------------------------------------------------------------------
    def profile(self, impl: str, version: str | None = None) -> ImplProfile:
        """Profile ``impl`` as its library's release ``version`` executes it (None: the newest verified release)."""
        try:
            base = self.profiles[impl]
        except KeyError:
            raise ProfileError(f"no profile {impl!r}: use one of {', '.join(self.profiles)}") from None
        return self._memoised(("profile", impl, version), lambda: at_release(base, version))

    def estimate(self, workload: VisionWorkload, records: bool = False) -> Estimate:
        """All stages of one workload; `records=True` also lists every op with its shapes and FLOPs."""
        if workload.model != self.family:
            raise ConfigError(
                f"the workload is for {workload.model} but this cost model is {self.family}: "
                f"build it with build_cost_model(family={workload.model!r})"
            )
        prof = self.profile(workload.impl, workload.impl_version)
        db = workload.dtype_bytes
        stages: dict[str, Any] = {}
        families: dict[str, dict[str, dict[str, int]]] = {}
        recs: list[dict[str, Any]] | None = [] if records else None

        vision = {b: self._vision(self.composites[f"vision_{b}"], workload, prof, db, records) for b in VISION_BRANCHES}
        for part in self.vision_stages:
            stages[part] = {b: _leaf(vision[b][part], False) for b in VISION_BRANCHES}
            families[part] = {b: dict(vision[b][part].families) for b in VISION_BRANCHES}
            if recs is not None:
                for b in VISION_BRANCHES:
                    recs.extend({"stage": part, "part": b, **r} for r in vision[b][part].records or [])

        dec, head = self._prefill(workload, prof, records)
        stages["prefill"] = {"decoder": _leaf(dec, True), "lm_head": _leaf(head, True)}
        families["prefill"] = {"decoder": dict(dec.families), "lm_head": dict(head.families)}
        if recs is not None:
            recs.extend({"stage": "prefill", "part": "decoder", **r} for r in dec.records or [])
            recs.extend({"stage": "prefill", "part": "lm_head", **r} for r in head.records or [])

        steps, sums, fams = self._decode(workload, prof, recs)
        stages["decode"] = {p: dict(sums[p]) for p in LM_PARTS}
        stages["decode"]["steps"] = list(steps)
        families["decode"] = {p: dict(fams[p]) for p in LM_PARTS}
        return Estimate(workload, stages, families, self.summary(prof), recs, self.resident(workload, prof))

    def _decode(
        self, w: VisionWorkload, prof: ImplProfile, recs: list[dict[str, Any]] | None
    ) -> tuple[list[Any], dict[str, Any], dict[str, dict[str, int]]]:
        """The decode stage: its K step entries, their sums per part and op families per part.  Memoised by what
        each step is keyed by (`_step_key`) plus K: the page's second estimate (on the vendor's prefill routing)
        and every page of that prefill length and decode length need no second walk over their steps."""

        def run() -> tuple[list[Any], dict[str, Any], dict[str, dict[str, int]]]:
            steps = []
            fams: dict[str, dict[str, int]] = {p: {} for p in LM_PARTS}
            for t in range(1, w.decode_tokens + 1):
                sdec, shead = self._decode_step(w, t, prof, recs is not None)
                steps.append(self._step_leaves(w, t, prof, sdec, shead, recs is not None))
                for fam, src in ((fams["decoder"], sdec), (fams["lm_head"], shead)):
                    for k, v in src.families.items():
                        fam[k] = fam.get(k, 0) + v
                if recs is not None:
                    recs.extend({"stage": "decode", "part": "decoder", "step": t, **r} for r in sdec.records or [])
                    recs.extend({"stage": "decode", "part": "lm_head", "step": t, **r} for r in shead.records or [])
            return steps, {p: _sum_leaves([s[p] for s in steps], True) for p in LM_PARTS}, fams

        key = ("decode-stage", w.prefill_len, w.decode_tokens, prof.key, w.attn_impl, w.dtype_bytes)
        return run() if recs is not None else self._memoised(key, run)

    def resident(self, workload: VisionWorkload, prof: ImplProfile) -> dict[str, Any] | None:
        """What the model keeps in memory besides a stage's transients: its weights (parameters at the workload's
        dtype, plus buffers) and the KV cache after the prefill and after each decode step."""
        enc_stage = self.vision_stages[1]
        encoder = self.vision[enc_stage]
        views = 1 + family_rules(self.family).newlines  # the view separator (and DeepSeek-OCR's image_newline)
        params = {
            "sam": self.sam.params(),
            enc_stage: encoder.params(),
            "projector": self.projector.params(),
            "view_embeddings": views * self.projector.output_dim,
            "decoder": self.decoder.params(),
        }
        # buffers: the encoder's (CLIP's int64 position ids; the Qwen2 encoder's rotary tables) and the decoder's
        buffers = encoder.buffer_bytes(prof) + self.decoder.rotary_buffer_bytes(prof)
        per_token = self.decoder.cache_bytes_per_token(workload.dtype_bytes)
        return {
            "parameters": params,
            # parameters at the workload's dtype, those the implementation keeps in float32 at 4 bytes
            "weight_resident_bytes": sum(params.values()) * workload.dtype_bytes
            + self.decoder.float32_params(prof) * (4 - workload.dtype_bytes)
            + buffers,
            "kv_cache_resident_bytes": [
                per_token * (workload.prefill_len + t) for t in range(workload.decode_tokens + 1)
            ],
        }

    def summary(self, prof: ImplProfile | None = None) -> dict[str, Any]:
        d = self._summary(prof)
        if "clip" not in self.vision:  # DeepSeek-OCR 2: the query encoder in CLIP's place
            enc = self.vision_stages[1]
            d = {(enc if k == "clip" else k): (self.vision[enc].summary() if k == "clip" else v) for k, v in d.items()}
            d["family"] = self.family
        return d

    def _summary(self, prof: ImplProfile | None) -> dict[str, Any]:
        clip = self.vision.get("clip")
        return {
            "sam": {
                "embed_dim": self.sam.embed_dim,
                "depth": self.sam.depth,
                "num_heads": self.sam.num_heads,
                "window_size": self.sam.window_size,
                "global_attn_indexes": list(self.sam.global_attn_indexes),
                "downsample_channels": list(self.sam.downsample_channels),
            },
            "clip": None
            if clip is None
            else {
                "hidden_size": clip.hidden_size,
                "num_layers": clip.num_layers,
                "num_heads": clip.num_heads,
                "ffn_hidden_size": clip.ffn_hidden_size,
            },
            "projector": {
                "projector_type": self.projector.projector_type,
                "input_dim": self.projector.input_dim,
                "n_embed": self.projector.n_embed,
            },
            "decoder": self.decoder.summary(),
            "profile": prof.summary() if prof is not None else None,
            "overrides": list(self.config.get("overrides", [])),
        }

    # --- memoised pieces ----------------------------------------------------------------------
    def _memoised(self, key: tuple, fn: Any) -> Any:
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            hit = self._memo[key] = fn()
        return hit

    def _vision(
        self, comp: VisionBranch, w: VisionWorkload, prof: ImplProfile, db: int, records: bool
    ) -> dict[str, Cost]:
        size, batch = comp.views(w)
        previous = comp.previous_tokens(w)

        def run() -> dict[str, Cost]:
            return comp.run(self, size, batch, prof, db, records, previous)

        return run() if records else self._memoised(("vision", size, batch, prof.key, db, previous), run)

    def _prefill(self, w: VisionWorkload, prof: ImplProfile, records: bool) -> tuple[Cost, Cost]:
        comp: Prefill = self.composites["prefill"]

        def run() -> tuple[Cost, Cost]:
            encoder = self.vision[self.vision_stages[1]]
            fused = self.projector.total_input_dim if encoder.projector_reads_sam_features() else 0
            return comp.evaluate(self.decoder, w, prof, records, self._vision_bound(w, prof), fused)

        views = (w.model, w.global_view_size, w.crop_size, w.w_crop, w.h_crop, w.base_size)  # image-dependent terms
        key = ("prefill", w.prefill_len, w.lm_head_scope, prof.key, w.attn_impl, w.dtype_bytes, w.prefill_experts_hit)
        key += views
        return run() if records else self._memoised(key, run)

    def _vision_bound(self, w: VisionWorkload, prof: ImplProfile) -> tuple[int, int]:
        """Bytes the (crops, global) vision calls leave bound to the caller's locals: SAM's output and what the
        encoder leaves (the global view runs last)."""
        encoder = self.vision[self.vision_stages[1]]
        db = w.dtype_bytes
        out = []
        for comp in (self.composites["vision_crops"], self.composites["vision_global"]):
            size, batch = comp.views(w)
            if not batch:
                out.append(0)
                continue
            grid = self.sam.output_grid(size)
            last = comp.branch == "global"
            out.append(self.sam.output_bytes(batch, size, db) + encoder.bound_output_bytes(batch, grid, prof, db, last))
        return out[0], out[1]

    def _decode_step(self, w: VisionWorkload, t: int, prof: ImplProfile, records: bool) -> tuple[Cost, Cost]:
        comp: Decode = self.composites["decode"]

        def run() -> tuple[Cost, Cost]:
            return comp.step(self.decoder, w, t, prof, records)

        return run() if records else self._memoised(self._step_key(w, t, prof), run)

    @staticmethod
    def _step_key(w: VisionWorkload, t: int, prof: ImplProfile) -> tuple:
        return ("decode", w.prefill_len + t, prof.key, w.attn_impl, w.dtype_bytes)

    def _step_leaves(
        self, w: VisionWorkload, t: int, prof: ImplProfile, sdec: Cost, shead: Cost, records: bool
    ) -> dict[str, dict[str, int]]:
        """A decode step's entry in ``stages.decode.steps``: one dict per key count, shared by every page that
        decodes past it (a page of 4,000 tokens would otherwise build 8,000 metric dicts; readers never write)."""

        def run() -> dict[str, dict[str, int]]:
            return {"decoder": _leaf(sdec, True), "lm_head": _leaf(shead, True)}

        return run() if records else self._memoised(("leaves", *self._step_key(w, t, prof)), run)


def build_cost_model(overrides: list[str] | None = None, family: str = DEFAULT_FAMILY) -> CostModel:
    """Compose the family's config (analytic/configs/model.yaml for DeepSeek-OCR) with Hydra overrides and
    instantiate the layer graph once."""
    if family not in FAMILY_CONFIGS:
        raise ConfigError(f"unknown model family {family!r}: use one of {', '.join(FAMILY_CONFIGS)} (--model)")
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides or [])
    refuse_code_overrides(overrides)
    gh = GlobalHydra.instance()
    outer = gh.hydra if gh.is_initialized() else None  # a caller's own Hydra app: park it, restore it after
    gh.clear()
    ConfigStore.instance().store(group="profile_set", name="all", node=profile_configs())  # the profiles on disk now
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = compose(config_name=FAMILY_CONFIGS[family], overrides=overrides)
            if overrides:  # however a value was built (interpolation, oc.decode), it must not name code
                _same_code(compose(config_name=FAMILY_CONFIGS[family]), cfg, overrides)
        model = instantiate(cfg, _convert_="all")
    except (HydraException, OmegaConfBaseException, TypeError, ValueError) as exc:
        raise ConfigError(_one_line(exc, overrides)) from exc
    finally:
        gh = GlobalHydra.instance()  # the context manager may have swapped the singleton: fetch it again
        gh.clear()
        if outer is not None:
            gh.initialize(outer)
    if model.family != family:
        raise ConfigError(
            f"analytic/configs/{FAMILY_CONFIGS[family]}.yaml says family={model.family!r}, not {family!r}: "
            "fix its family key"
        )
    model.config = {"overrides": overrides, "resolved": OmegaConf.to_container(cfg, resolve=True)}
    return model


def refuse_code_overrides(overrides: list[str]) -> None:
    """`--override` changes values only: one naming a Hydra key that selects or calls code is a ConfigError."""
    for text in overrides:
        named = next((key for key in CODE_KEYS if key in text), None)
        if named:
            shown = text if len(text) <= 120 else text[:120] + "..."
            raise ConfigError(
                f"--override {shown!r} names code ({named}): overrides change values only, never which code runs; "
                "drop it"
            )


def _same_code(base: Any, cfg: Any, overrides: list[str]) -> None:
    """The composed config names exactly the code the unmodified one does (`CODE_KEYS` and their values)."""
    from omegaconf import OmegaConf

    before = _code_nodes(OmegaConf.to_container(base, resolve=True))
    after = _code_nodes(OmegaConf.to_container(cfg, resolve=True))
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        raise ConfigError(
            f"--override {', '.join(overrides)} changes which code the config names ({changed[0][0]}): "
            "overrides change values only; drop it"
        )


def _code_nodes(node: Any, path: str = "") -> dict[str, str]:
    """Every Hydra code key of a resolved config: dotted path -> its value's repr (no recursion limit issue:
    the config is a few levels deep)."""
    found: dict[str, str] = {}
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        if key in CODE_KEYS:
            found[where] = repr(value)
        found.update(_code_nodes(value, where))
    return found


def _one_line(exc: BaseException, overrides: list[str]) -> str:
    """The innermost useful message of a Hydra/instantiate error, on one line."""
    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    msg = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    if isinstance(inner, (ConfigError, ProfileError)):
        return msg
    return (
        f"bad analytic config (overrides {overrides}): {msg}; "
        "check each override names a key of analytic/configs/model.yaml with a value of the right type"
    )


def estimate(workload: VisionWorkload, overrides: list[str] | None = None, records: bool = False) -> Estimate:
    """Convenience: build the workload's family model (once per call) and estimate one workload."""
    return build_cost_model(overrides, family=workload.model).estimate(workload, records=records)
