"""The four composites the stages are made of: vision_global, vision_crops, prefill, decode.

The global view and the crops are separate explicit calls (batch 1 at global_view_size; batch
n_crops at crop_size), exactly as the vendor runs them; no "effective views" multiplier.
`VisionBranch` runs SAM -> the family's encoder (DeepSeek-OCR: CLIP; DeepSeek-OCR 2: the Qwen2
encoder with learnable queries) -> projector, with the family's stage names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from analytic.costs import Cost, sub
from analytic.layers.clip import ClipEncoder
from analytic.layers.common import ConfigError
from analytic.layers.decoder import Decoder
from analytic.layers.projector import MlpProjector
from analytic.layers.qwen2_encoder import Qwen2QueryEncoder
from analytic.layers.sam import SamEncoder
from core.profiles import ImplProfile
from core.workload import VisionWorkload


@dataclass(frozen=True)
class VisionBranch:
    """SAM -> encoder -> projector on one batch of equal-size views."""

    branch: str

    def __post_init__(self) -> None:
        if self.branch not in ("global", "crops"):
            raise ConfigError(f"composites: vision branch {self.branch!r} unknown; use 'global' or 'crops'")

    def views(self, w: VisionWorkload) -> tuple[int, int]:
        """(image side in px, batch) of this branch's call; batch 0 when it does not run."""
        if self.branch == "global":
            return w.global_view_size, 1
        return (w.crop_size, w.n_crops) if w.has_crops else (0, 0)

    def evaluate(
        self,
        stages: tuple[str, ...],
        sam: SamEncoder,
        encoder: ClipEncoder | Qwen2QueryEncoder,
        projector: MlpProjector,
        size: int,
        batch: int,
        profile: ImplProfile,
        db: int,
        records: bool,
        previous_tokens: int = 0,
    ) -> dict[str, Cost]:
        """``stages`` = (sam, the family's encoder stage, projector); the encoder says which rows reach the
        projector (CLIP drops its CLS row, the query encoder keeps only the query outputs).  ``previous_tokens``:
        the encoder tokens of the branch that ran before this one in the same image (state an encoder keeps across
        calls dies here)."""
        sam_stage, enc_stage, proj_stage = stages
        out = {part: Cost(records) for part in stages}
        if batch == 0:
            return out
        grid = sam.evaluate(out[sam_stage], batch, size, profile, db, sam_stage if records else None)
        seq = encoder.evaluate(
            out[enc_stage], batch, grid, profile, db, enc_stage if records else None, previous_tokens=previous_tokens
        )
        projector.evaluate(
            out[proj_stage],
            batch,
            encoder.projector_rows(seq),
            db,
            proj_stage if records else None,
            strided_input=encoder.projector_input_strided(batch),
        )
        return out

    def previous_tokens(self, w: VisionWorkload) -> int:
        """Encoder tokens of the branch that ran before this one (the official code runs the crops first: the
        global view follows them; 0 when nothing did)."""
        return w.n_crops * w.crop_queries**2 if self.branch == "global" and w.has_crops else 0

    def run(
        self, model: Any, size: int, batch: int, profile: ImplProfile, db: int, records: bool, previous_tokens: int = 0
    ) -> dict[str, Cost]:
        """This branch on a CostModel's layers, with the stages of the model's family."""
        stages = model.vision_stages
        encoder = model.vision[stages[1]]
        return self.evaluate(
            stages, model.sam, encoder, model.projector, size, batch, profile, db, records, previous_tokens
        )


@dataclass(frozen=True)
class Prefill:
    """One decoder forward over prefill_len positions, then lm_head over all of them or the last."""

    def evaluate(
        self,
        decoder: Decoder,
        w: VisionWorkload,
        profile: ImplProfile,
        records: bool,
        vision_bound: tuple[int, int] = (0, 0),
        fused_dim: int = 0,
    ) -> tuple[Cost, Cost]:
        """For the official layout (the vision stack nested in the decoder stage): ``vision_bound``: the bytes the
        (crops, global) vision calls leave bound to the forward's locals (SAM's and the encoder's outputs, and
        what the encoder keeps); ``fused_dim``: the width of the SAM + CLIP feature cat the forward builds before
        the projector (DeepSeek-OCR), 0 when the projector reads the encoder's output itself (DeepSeek-OCR 2)."""
        db = w.dtype_bytes
        dec, head = Cost(records), Cost(records)
        merged = profile.image_merge_in_decoder
        kept = image_locals(dec, w, decoder.hidden_size, vision_bound, fused_dim, db) if merged else 0
        decoder.forward(
            dec, w.prefill_len, 0, profile, w.attn_impl, db, "decoder" if records else None, w.prefill_experts_hit
        )
        dec.release(kept)  # DeepseekOCRModel.forward's locals die when it returns
        if profile.image_presence_sums:  # torch.sum(images[0][1]) and torch.sum(patches): 1 per pixel value
            # without crops, `patches` is infer()'s zero placeholder of 1 x 3 x base_size x base_size; each sum
            # writes one value that .item() reads
            crops = w.n_crops * w.crop_size**2 if w.n_crops else w.base_size**2
            pixels = 3 * (w.global_view_size**2 + crops)
            sums = (pixels * db + 2 * db, 2 * db)
            dec.elementwise("decoder.image_presence" if records else None, "sum", pixels, 1, db, traffic=sums)
        if merged:
            image_layout(dec, w, decoder.hidden_size, fused_dim, db, "decoder.image_layout" if records else None)
        rows = w.prefill_len if w.lm_head_scope == "all" else 1
        decoder.lm_head(head, rows, db, "lm_head" if records else None)
        return dec, head


def image_locals(c: Cost, w: VisionWorkload, h: int, vision_bound: tuple[int, int], fused_dim: int, db: int) -> int:
    """Liveness of the official `DeepseekOCRModel.forward` / `DeepseekOCR2Model.forward` before it calls the
    decoder layers (`super().forward(...)`), for one image; returns the bytes its locals keep alive through the
    whole decoder forward.  The vision stack runs nested in this stage: what it leaves bound counts here
    (``vision_bound``, per branch: crops first, then the global view).

    DeepSeek-OCR (``fused_dim`` > 0): the fused SAM + CLIP cat lives next to the projector's output until the
    projector's output replaces it; the projector's output (or, for more than one crop column, its grid permute
    copy) lives next to the newline cat, which stays bound (`local_features` / `global_features`, viewed).
    DeepSeek-OCR 2: the projector's output stays bound (viewed to rows).  Then the views cat
    (`global_local_features`) and the one-image list's cat (`images_in_this_batch`) stay bound too;
    masked_scatter_ writes in place."""
    gq = w.global_queries
    crops_bound, global_bound = vision_bound
    branches = [(w.n_crops, w.n_crops * w.crop_queries**2, w.crops_image_tokens, crops_bound)] if w.has_crops else []
    branches.append((1, gq * gq, gq * (gq + 1), global_bound))
    kept = 0
    for views, rows, with_newlines, bound in branches:
        c.hold(bound)
        kept += bound
        if not fused_dim:
            c.hold(rows * h * db)  # the projector's output
            kept += rows * h * db
            continue
        c.spike(rows * (fused_dim + h) * db)  # the fused cat and the projector's output
        if views > 1 and w.w_crop > 1:
            c.spike(2 * rows * h * db)  # the projector's output and its permuted copy
        c.spike((rows + with_newlines) * h * db)  # the grid and its newline cat
        c.hold(with_newlines * h * db)
        kept += with_newlines * h * db
    tokens = w.n_image_tokens * h * db
    c.hold(2 * tokens)  # the views cat and the batch cat
    return kept + 2 * tokens


def image_layout(c: Cost, w: VisionWorkload, h: int, fused_dim: int, db: int, path: str | None) -> None:
    """The official forward between the vision calls and the decoder layers (charged to the decoder stage root),
    for one image:

    - DeepSeek-OCR (``fused_dim`` > 0): torch.cat((clip[:, 1:], sam.flatten(2).permute(0, 2, 1)), dim=-1) per
      branch (the projector's input rows); the global view: view(h, w, n) and cat with image_newline expanded
      over the rows (the newline read once); the crops: view(rows, cols, h2, w2, n).permute(0, 2, 1, 3, 4)
      .reshape(...) (a copy unless one column), the newline cat;
    - DeepSeek-OCR 2: the projector's outputs viewed to rows (no copy);
    - torch.cat([crops, global, view_seperator]) (or [global, view_seperator]), then torch.cat of the one-image
      list (a copy), then inputs_embeds[idx].masked_scatter_(images_seq_mask[idx][..., None], features): reads
      the bool mask and the image rows, writes the embeddings (an overwrite: not read).
    The int64 scalar reads of the crop grid (`.item()`, a few bytes) are left out."""
    gq, tokens = w.global_queries, w.n_image_tokens
    global_rows, crop_rows = gq * gq, w.n_crops * w.crop_queries**2
    s = w.prefill_len
    if fused_dim:
        c.copy(sub(path, "fuse_global"), "cat", global_rows * fused_dim, db)
        views_in = gq * (gq + 1)
        c.weight_read(sub(path, "image_newline"), "cat", h, db)
        c.traffic(sub(path, "global_newlines"), "cat", global_rows * h * db, views_in * h * db)
        if w.has_crops:
            c.copy(sub(path, "fuse_crops"), "cat", crop_rows * fused_dim, db)
            if w.w_crop > 1:
                c.copy(sub(path, "crop_grid"), "clone", crop_rows * h, db)
            c.weight_read(sub(path, "image_newline"), "cat", h, db)
            c.traffic(sub(path, "crop_newlines"), "cat", crop_rows * h * db, w.crops_image_tokens * h * db)
            views_in += w.crops_image_tokens
    else:
        views_in = global_rows + (crop_rows if w.has_crops else 0)
    c.weight_read(sub(path, "view_seperator"), "cat", h, db)
    c.traffic(sub(path, "views_cat"), "cat", views_in * h * db, tokens * h * db)
    c.copy(sub(path, "batch_cat"), "cat", tokens * h, db)
    c.traffic(sub(path, "masked_scatter"), "masked_scatter_", s + tokens * h * db, s * h * db)


@dataclass(frozen=True)
class Decode:
    """K single-token forwards; step t (1-based) attends over prefill_len + t keys."""

    def step(
        self, decoder: Decoder, w: VisionWorkload, t: int, profile: ImplProfile, records: bool
    ) -> tuple[Cost, Cost]:
        db = w.dtype_bytes
        dec, head = Cost(records), Cost(records)
        decoder.forward(dec, 1, w.prefill_len + t - 1, profile, w.attn_impl, db, "decoder" if records else None)
        decoder.lm_head(head, 1, db, "lm_head" if records else None)
        return dec, head
