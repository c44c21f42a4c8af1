"""Backend `vllm`, inside its worker: vLLM's own DeepSeek-OCR / DeepSeek-OCR 2 code, driven by vLLM's engine.

`VllmEngineBackend` is a `VendorBackend` the harness counts like any other (`vendor_shim.harness.run_counted`): the
model is what vLLM itself builds (``LLM(load_format="dummy", enforce_eager=True)``, in-process), the pages go through
vLLM's own processor and scheduler, and generation is ``LLM.generate``.  What the harness needs is read off vLLM's
module tree:

- vision roots: the model's ``sam_model``, ``vision_model`` (CLIP) or ``qwen2_model`` (OCR-2), ``projector``;
- ``decoder``: ``language_model`` (layers and final norm; its inner ``model`` is wrapped by vLLM's compile
  decorator, which calls ``forward`` directly, so no hook on it would ever fire); the prompt's embedding lookup runs
  before it, in the runner (a gather: no tensor FLOPs; its bytes are unattributed); ``lm_head``:
  ``language_model.logits_processor`` (vLLM projects only the positions it samples: the last prefill row, then one
  per step);
- ``top``: one engine step, a module wrapped around the model runner's ``execute_model`` (the vision encoder, the
  forward and the logits all run inside it), entered only for steps that schedule tokens.

Every page image carries a distinct pixel (the counts do not depend on pixel values) and prefix caching and the
processor cache are off, so vLLM can never serve a page's vision or prefill from an earlier page.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from core.families import FAMILY_TABLE
from core.published import dims
from core.workload import VisionWorkload
from vendor_shim.backends.base import (
    GenerationResult,
    LoadedModel,
    PreparedInputs,
    ReceivedInputs,
    StageRoots,
    VendorBackend,
)
from vendor_shim.errors import VendorInputError, VendorRunError, WorkloadMismatchError
from vendor_shim.foreign_ops import ForeignOps
from vendor_shim.vllm_engine.model_dir import IMAGE_TEXT, write_model_dir
from vendor_shim.vllm_engine.ops import VLLM_OPS

# The vision roots on vLLM's model classes (vllm/model_executor/models/deepseek_ocr.py, deepseek_ocr2.py)
VISION_ATTRS = {
    "deepseek-ocr": (("sam", "sam_model"), ("clip", "vision_model"), ("projector", "projector")),
    "deepseek-ocr-2": (("sam", "sam_model"), ("qwen2_encoder", "qwen2_model"), ("projector", "projector")),
}
PROCESSOR_STRATEGY = {"deepseek-ocr": "v1", "deepseek-ocr-2": "v2"}  # vLLM's token layout per family
KV_CACHE_GIB = 1  # VLLM_CPU_KVCACHE_SPACE: a page needs a few MiB of paged cache per layer
PROMPT_FILLER = "Convert the document to markdown. "  # ASCII: one byte-level token per character


class _EngineStep(torch.nn.Module):
    """One engine step as a module, so the harness's ``top`` hooks see it (vLLM's runner is not a module)."""

    def __init__(self, execute: Any) -> None:
        super().__init__()
        self._execute = execute

    def forward(self, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        return self._execute(scheduler_output, *args, **kwargs)


@dataclass
class _Page:
    """One page as vLLM receives it: the prompt, the image and what vLLM's processor made of them."""

    prompt: str
    image: Any  # PIL.Image
    prefill_len: int


def _model_runner(llm: Any) -> Any:
    """The in-process engine's model runner (vLLM 0.32 with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``)."""
    core = llm.llm_engine.engine_core
    core = getattr(core, "engine_core", core)
    worker = core.model_executor.driver_worker
    worker = getattr(worker, "worker", worker)
    return worker.model_runner


class VllmEngineBackend(VendorBackend):
    """vLLM's implementation of one family (module docstring); built once per dtype."""

    name: ClassVar[str] = "vllm"

    def __init__(self, family: str, work_dir: Path, *, decoder_layers: int | None = None) -> None:
        self.family = family
        self.work_dir = work_dir
        self.decoder_layers = decoder_layers
        self._pages = 0

    # ---- what the harness asks ---------------------------------------------------------------
    def environment(self) -> dict[str, Any]:
        import transformers
        import vllm

        return {
            "vllm": vllm.__version__,
            "transformers": transformers.__version__,
            "family": self.family,
            "decoder_layers": self.decoder_layers,
            "torch_cpu_capability": _cpu_capability(),
        }

    def foreign_ops(self) -> ForeignOps:
        return VLLM_OPS

    def supports_device(self, device: str, vision_only: bool) -> str | None:
        if vision_only:
            return "the vllm backend counts whole pages (vLLM runs vision inside its first step): drop --vision-only"
        if device != "cpu":
            return f"device {device!r}: the vllm backend runs vLLM's CPU build here; use --device cpu"
        return None

    def build(
        self, *, device: str, dtype: str, attn_impl: str, vision_only: bool, execution: str = "real"
    ) -> LoadedModel:
        reason = self.supports_device(device, vision_only)
        if reason:
            raise VendorInputError(reason)
        if execution != "real":
            raise VendorInputError(
                "the vllm backend executes for real (vLLM's kernels have no hollow mode): use --execution real"
            )
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(KV_CACHE_GIB))
        from vllm import LLM

        folder = write_model_dir(self.work_dir, self.family, self.decoder_layers)
        t0 = time.perf_counter()
        llm = LLM(
            model=str(folder),
            load_format="dummy",
            enforce_eager=True,
            dtype=dtype,
            max_model_len=int(dims("decoder", _family(self.family).decoder)["max_position_embeddings"]),
            max_num_seqs=1,
            max_num_batched_tokens=16384,  # a whole page's prefill in one step
            enable_prefix_caching=False,
            mm_processor_cache_gb=0,
            limit_mm_per_prompt={"image": 1},
            skip_mm_profiling=True,
            disable_log_stats=True,
            seed=0,
        )
        runner = _model_runner(llm)
        model = runner.model
        step = _EngineStep(runner.execute_model)
        runner.execute_model = _counted_steps(step, runner.execute_model)
        vision = {stage: getattr(model, attr) for stage, attr in VISION_ATTRS[self.family]}
        roots = StageRoots(
            vision=vision,
            decoder=model.language_model,
            lm_head=model.language_model.logits_processor,
            top=step,
        )
        info = {"model_dir": str(folder), "decoder_layers": self.decoder_layers, "runner": type(runner).__name__}
        return LoadedModel(
            backend=self.name,
            device=device,
            dtype=dtype,
            attn_impl=attn_impl,
            vision_only=False,
            model=_Handle(model, llm),
            roots=roots,
            build_s=time.perf_counter() - t0,
            info=info,
        )

    def prepare_inputs(self, loaded: LoadedModel, workload: VisionWorkload) -> PreparedInputs:
        """The page through vLLM's own DeepSeek-OCR processor (what the engine runs on it), read back."""
        from PIL import Image
        from vllm.transformers_utils.processors.deepseek_ocr import DeepseekOCRProcessor

        if workload.mode != "gundam":
            raise VendorInputError(
                f"--mode {workload.mode}: vLLM's DeepSeek-OCR processor fixes gundam's views (1024 global, 640 crops); "
                "use --mode gundam"
            )
        self._pages += 1
        image = Image.new("RGB", (workload.width, workload.height), "white")
        image.putpixel((self._pages % workload.width, 0), (self._pages % 251, 0, 0))  # no two pages alike
        prompt = (
            IMAGE_TEXT + (PROMPT_FILLER * (workload.prompt_tokens // len(PROMPT_FILLER) + 1))[: workload.prompt_tokens]
        )
        tokenizer = loaded.model.llm.get_tokenizer()
        processor = DeepseekOCRProcessor(
            tokenizer,
            image_size=workload.image_size,
            base_size=workload.base_size,
            strategy=PROCESSOR_STRATEGY[self.family],
        )
        out = processor(prompt=prompt, images=[image], crop_mode=workload.crop_mode)
        ids = out["input_ids"][0]
        image_id = _family(self.family).tokens.image
        positions = (ids == image_id).nonzero().flatten()
        crops = out["images_crop"]
        w_crop, h_crop = (int(x) for x in out["images_spatial_crop"][0])
        n_crops = int(crops.shape[0])
        received = ReceivedInputs(
            global_view_size=int(out["pixel_values"].shape[-1]),
            crop_size=int(crops.shape[-1]) if n_crops else 0,
            w_crop=w_crop if n_crops else 1,
            h_crop=h_crop if n_crops else 1,
            n_crops=n_crops,
            n_image_tokens=int(positions.numel()),
            prompt_tokens=int(ids.numel() - 1 - int(positions[-1])) if positions.numel() else int(ids.numel() - 1),
            prefill_len=int(ids.numel()),
        )
        return PreparedInputs(received, {"page": _Page(prompt, image, int(ids.numel()))})

    def run_vision(self, loaded: LoadedModel, inputs: PreparedInputs) -> None:
        raise VendorInputError("the vllm backend counts whole pages: drop --vision-only")

    def run_generation(
        self, loaded: LoadedModel, inputs: PreparedInputs, decode_tokens: int, lm_head_scope: str
    ) -> GenerationResult:
        from vllm import SamplingParams

        if lm_head_scope != "last":
            raise VendorInputError(
                "--lm-head all: vLLM computes logits for the sampled positions only; use --lm-head last"
            )
        page: _Page = inputs.payload["page"]
        params = SamplingParams(
            max_tokens=decode_tokens + 1,
            min_tokens=decode_tokens + 1,
            ignore_eos=True,
            temperature=0.0,
            detokenize=False,
        )
        request = {"prompt": page.prompt, "multi_modal_data": {"image": page.image}}
        (result,) = loaded.model.llm.generate([request], params, use_tqdm=False)
        if len(result.prompt_token_ids) != page.prefill_len:
            raise WorkloadMismatchError(
                f"vLLM's engine prompt has {len(result.prompt_token_ids)} tokens, its processor {page.prefill_len}: "
                "the engine's prompt handling changed; fix vendor_shim/vllm_engine/engine.py"
            )
        produced = len(result.outputs[0].token_ids)
        if produced != decode_tokens + 1:
            raise VendorRunError(f"vLLM produced {produced} tokens, expected {decode_tokens + 1}")
        return GenerationResult(
            lm_head_scope="last",
            new_tokens=produced,
            path="vllm.LLM.generate(greedy, ignore_eos, min_tokens=max_tokens=K+1, eager, prefix caching off)",
        )


@dataclass
class _Handle:
    """The model the harness walks (parameters, module names) plus the engine that drives it."""

    module: torch.nn.Module
    llm: Any

    def named_modules(self) -> Any:
        return self.module.named_modules()

    def parameters(self) -> Any:
        return self.module.parameters()

    def buffers(self) -> Any:
        return self.module.buffers()


def _counted_steps(step: _EngineStep, execute: Any) -> Any:
    """``execute_model`` that enters the step module only when the step schedules tokens (an empty step runs no
    model code and is not a generation step)."""

    def execute_model(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(scheduler_output, "total_num_scheduled_tokens", 0):
            return step(scheduler_output, *args, **kwargs)
        return execute(scheduler_output, *args, **kwargs)

    return execute_model


def _family(name: str) -> Any:
    return next(f for f in FAMILY_TABLE if f.name == name)


def _cpu_capability() -> str:
    """torch's CPU capability: vLLM's CPU build picks its kernels by the CPU (AVX2 and AVX512 op sets differ)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:
        return "unknown"
