"""The decoder's MLPs: the dense SwiGLU and the MoE (router, top-k routed experts, shared experts), each
expert implementation (`ImplProfile.experts`) a row of `_EXPERT_MODES`.

Code locations: official modeling_deepseekv2.py (`DeepseekV2MLP`, `MoEGate`, `DeepseekV2MoE.moe_infer`);
transformers `UnlimitedOcrTextMLP`, `UnlimitedOcrTextTopkRouter`, `UnlimitedOcrTextExperts` via
integrations/moe.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import F32
from core.profiles import ImplProfile, ProfileError

ROUTER_BYTES = 4  # MoEGate / TopkRouter run F.linear in float32 (on a float32 copy of the weight)


def swiglu_act(c: Cost, path: str | None, elems: int, db: int) -> None:
    """act(gate) * up over `elems`: SiLU then the product, 3 reads and 2 writes of `elems`."""
    c.elementwise(path, "silu", elems, EW["silu"] + EW["mul"], db, traffic=(3 * elems * db, 2 * elems * db))


@dataclass(frozen=True)
class SwiGluMlp:
    """down(act(gate(x)) * up(x)) with separate gate/up/down Linear (no bias)."""

    hidden: int
    intermediate: int

    def evaluate(self, c: Cost, rows: int, db: int, path: str | None) -> None:
        """Liveness: the output is held."""
        h, i = self.hidden, self.intermediate
        c.linear(sub(path, "gate_proj"), rows, h, i, bias=False, db=db)
        c.linear(sub(path, "up_proj"), rows, h, i, bias=False, db=db)
        swiglu_act(c, sub(path, "act_mul"), rows * i, db)
        c.spike(3 * rows * i * db)  # act(gate), up and their product (gate dies with act)
        c.linear(sub(path, "down_proj"), rows, i, h, bias=False, db=db)
        c.hold(rows * h * db)  # the output


# ImplProfile.router_weight -> whether the router's weight is kept in float32 (transformers >= 5.24)
ROUTER_WEIGHT_FLOAT32 = {"model_dtype": False, "float32": True}


@dataclass(frozen=True)
class _Routed:
    """One MoE call's routed work: ``rows`` tokens, each to top-k experts (``pairs`` token-expert rows in all,
    whatever the routing), ``hit`` experts that got rows; h hidden, i expert intermediate, e experts."""

    rows: int
    pairs: int
    hit: int
    h: int
    i: int
    e: int
    db: int


def _moegate_liveness(c: Cost, rows: int, e: int, k: int, copies: int) -> int:
    """Official MoEGate.forward: logits (float32 copies of x and the weight while F.linear runs), the softmax scores,
    top-k values and indices, the scaled weights; it returns only topk_idx and the scaled topk_weight, which
    DeepseekV2MoE.forward keeps until it returns (their bytes: returned)."""
    topk = rows * k * (8 + F32)
    c.spike(max(copies + rows * e * F32, 2 * rows * e * F32 + topk + rows * k * F32))
    routing = rows * k * (8 + F32)
    c.hold(routing)
    return routing


def _topk_router_liveness(c: Cost, rows: int, e: int, k: int, copies: int) -> int:
    """transformers' router: the float32 copies of x and of the weight live while the logits are computed; the logits
    are kept until the MoE returns (`_, topk_weights, topk_indices = self.gate(...)`), so are the top-k indices and
    the scaled weights (their bytes: returned); the scores and the unscaled weights die in the router."""
    c.spike(copies + rows * e * F32)
    routing = rows * e * F32 + rows * k * (8 + F32)
    c.hold(routing)
    c.spike(rows * e * F32 + rows * k * F32)
    return routing


def _other_hit_experts(c: Cost, r: _Routed) -> None:
    """The linears read one expert's weights; a call reads every hit expert's weights once."""
    extra = (r.hit - 1) * 3 * r.h * r.i * r.db
    c.weight_bytes += extra
    c.read_bytes += extra


def _per_expert_mlp(c: Cost, ep: str | None, r: _Routed) -> int:
    """Official moe_infer: expert(tokens) = DeepseekV2MLP per hit expert.  Its locals before the expert loop: cnts
    (rows x E int64), tokens_per_expert (E int64; its .numpy() shares the storage), idxs (the argsort: pairs int64),
    sorted_tokens (pairs rows of h), held until it returns (their bytes: returned)."""
    pairs, h, i, db = r.pairs, r.h, r.i, r.db
    infer_kept = r.rows * r.e * 8 + r.e * 8 + pairs * 8 + pairs * h * db
    c.hold(infer_kept)
    c.linear(sub(ep, "gate_proj"), pairs, h, i, bias=False, db=db, op="linear_per_expert")
    c.linear(sub(ep, "up_proj"), pairs, h, i, bias=False, db=db, op="linear_per_expert")
    c.linear(sub(ep, "down_proj"), pairs, i, h, bias=False, db=db, op="linear_per_expert")
    _other_hit_experts(c, r)
    return infer_kept


def _fused_gate_up(c: Cost, ep: str | None, r: _Routed, mode: str, aten: str) -> int:
    """transformers' experts: a fused gate_up projection and down, per hit expert (``aten``: the kernel)."""
    c.linear(sub(ep, "gate_up_proj"), r.pairs, r.h, 2 * r.i, bias=False, db=r.db, aten=aten, op=f"experts_{mode}")
    c.linear(sub(ep, "down_proj"), r.pairs, r.i, r.h, bias=False, db=r.db, aten=aten, op=f"experts_{mode}")
    _other_hit_experts(c, r)
    return 0


def _eager_experts(c: Cost, ep: str | None, r: _Routed) -> int:
    """A loop of fused gate_up F.linear + down F.linear (mm)."""
    return _fused_gate_up(c, ep, r, "eager", "mm")


def _grouped_experts(c: Cost, ep: str | None, r: _Routed) -> int:
    """Two aten._grouped_mm."""
    return _fused_gate_up(c, ep, r, "grouped_mm", "_grouped_mm")


def _batched_experts(c: Cost, ep: str | None, r: _Routed) -> int:
    """bmm over token-expert pairs, (S,1,h) @ (S,h,2i): every pair reads its expert's weights (in the bmm's io)."""
    c.bmm(sub(ep, "gate_up_proj"), "experts_batched_mm", r.pairs, 1, r.h, 2 * r.i, db=r.db)
    c.bmm(sub(ep, "down_proj"), "experts_batched_mm", r.pairs, 1, r.i, r.h, db=r.db)
    return 0


def _weighted_sum(c: Cost, ep: str | None, r: _Routed, kept: int) -> None:
    """The routing-weighted sum of each token's expert rows.  Liveness (not modelled op by op): one expert's rows,
    its SwiGLU intermediates and its output."""
    c.elementwise(sub(ep, "weighted_sum"), "mul_add", r.pairs * r.h, EW["mul"] + EW["add"], r.db)
    c.spike(r.rows * r.h * r.db + 4 * r.rows * r.i * r.db)


def _grouped_combine(c: Cost, ep: str | None, r: _Routed, kept: int) -> None:
    """grouped_mm_experts_forward's bookkeeping around its two _grouped_mm."""
    _grouped_mm_bookkeeping(c, ep, r.rows, r.pairs, r.h, r.i, r.e, r.db)


def _moe_infer_combine(c: Cost, ep: str | None, r: _Routed, kept: int) -> None:
    """moe_infer's bookkeeping; liveness after the loop: the experts' outputs (the list: pairs rows), their cat,
    new_x (empty_like) live together with the chain new_x.view(...).type(float32) (a copy unless float32).mul_(...)
    .sum(dim=1).type(dtype): the float32 copy and the float32 sum, then the sum and its cast back; moe_infer's
    locals (``kept``) die when it returns."""
    rows, h, db, cast = r.rows, r.h, r.db, r.db != F32
    _moe_infer_bookkeeping(c, ep, rows, r.pairs, h, r.e, db)
    ph = r.pairs * h * db
    c.spike(3 * ph + max(r.pairs * h * F32 * cast + rows * h * F32, rows * h * F32 + rows * h * db * cast))
    c.release(kept)


@dataclass(frozen=True)
class _ExpertMode:
    """One `ImplProfile.experts` mode: the router's liveness (returns the routing bytes kept until the MoE returns),
    the routed experts' matmuls (returns bytes they keep until the combine) and the combine of their outputs."""

    router_liveness: Callable[[Cost, int, int, int, int], int]
    experts: Callable[[Cost, str | None, _Routed], int]
    combine: Callable[[Cost, str | None, _Routed, int], None]


_EXPERT_MODES = {
    "per_expert_mlp": _ExpertMode(_moegate_liveness, _per_expert_mlp, _moe_infer_combine),
    "eager": _ExpertMode(_topk_router_liveness, _eager_experts, _weighted_sum),
    "grouped_mm": _ExpertMode(_topk_router_liveness, _grouped_experts, _grouped_combine),
    "batched_mm": _ExpertMode(_topk_router_liveness, _batched_experts, _weighted_sum),
}


@dataclass(frozen=True)
class MoeMlp:
    """Router Linear(h, E) in fp32 + top-k routed SwiGLU experts + shared experts."""

    hidden: int
    n_experts: int
    top_k: int
    expert_intermediate: int
    n_shared: int

    def evaluate(
        self, c: Cost, rows: int, profile: ImplProfile, db: int, path: str | None, hit: int | None = None
    ) -> None:
        """``hit``: experts that got rows (their weights are read); None = balanced routing."""
        h, e, k, i = self.hidden, self.n_experts, self.top_k, self.expert_intermediate
        mode = _EXPERT_MODES[profile.experts]
        routing = self._router(c, rows, profile, db, path, mode)
        # Each token goes to exactly k distinct experts, so the routed rows total rows*k whatever the routing.
        pairs = rows * k
        balanced = min(e, pairs)
        hit = balanced if hit is None else hit
        if not min(k, balanced) <= hit <= balanced:
            raise ProfileError(f"{hit} experts hit by {rows} rows x top-{k} of {e} experts is impossible")
        ep = sub(path, "experts")
        routed = _Routed(rows, pairs, hit, h, i, e, db)
        kept = mode.experts(c, ep, routed)
        swiglu_act(c, sub(ep, "act_mul"), pairs * i, db)
        mode.combine(c, ep, routed, kept)
        out = rows * h * db
        c.hold(out)  # the routed experts' output
        if self.n_shared:
            SwiGluMlp(h, i * self.n_shared).evaluate(c, rows, db, sub(path, "shared_experts"))
            c.elementwise(sub(path, "shared_add"), "add", rows * h, EW["add"], db, reads=2)
            c.hold(out)
            c.release(2 * out)  # the sum replaces the two outputs
        c.release(routing)  # the logits and top-k die when the MoE returns

    def _router(self, c: Cost, rows: int, profile: ImplProfile, db: int, path: str | None, mode: _ExpertMode) -> int:
        """The router in float32: logits, softmax, top-k, scaling; returns the routing bytes kept until the MoE
        returns.  The weight is read once: by its float32 cast at the model's dtype (the mm then reads the copy) or,
        when it is kept in float32 (profile.router_weight, or a float32 model), by the mm itself."""
        h, e, k = self.hidden, self.n_experts, self.top_k
        wdb = F32 if ROUTER_WEIGHT_FLOAT32[profile.router_weight] else db
        weight_cast = wdb != F32
        if db != F32:  # hidden.float() (and weight.float() unless it is float32): the mm reads the float32 copies
            c.copy(sub(path, "gate_cast"), "_to_copy", rows * h, F32, read_db=db)
        if weight_cast:
            c.traffic(sub(path, "gate_weight_cast"), "_to_copy", e * h * F32, e * h * F32)
        c.linear(sub(path, "gate"), rows, h, e, bias=False, db=ROUTER_BYTES, wdb=wdb)
        c.elementwise(sub(path, "gate_softmax"), "softmax", rows * e, EW["softmax"], ROUTER_BYTES)
        # 1 per score compared; writes k values (float32) and k int64 indices per row
        c.elementwise(
            sub(path, "gate_topk"), "topk", rows * e, 1, ROUTER_BYTES, traffic=(rows * e * F32, rows * k * 12)
        )
        c.elementwise(sub(path, "gate_scaling"), "mul", rows * k, EW["mul"], ROUTER_BYTES)  # x routed_scaling
        copies = (rows * h * (db != F32) + e * h * weight_cast) * F32
        return mode.router_liveness(c, rows, e, k, copies)


def _moe_infer_bookkeeping(c: Cost, path: str | None, rows: int, pairs: int, h: int, e: int, db: int) -> None:
    """Official `DeepseekV2MoE.moe_infer` around its expert loop, op by op (int64 indices: 8 bytes):
    cnts = new_zeros(rows, E); cnts.scatter_(1, topk_ids, 1); cnts.sum(0); topk_ids.view(-1).argsort() (a sort:
    values and indices); idxs // k; x[idxs // k] (gathers the pairs' rows); after the loop torch.cat(outputs);
    new_x = torch.empty_like(outs); new_x[idxs] = outs (index_put_); new_x.view(rows, k, h).type(float32) (a copy
    when the dtype is not float32); .mul_(topk_weight[..., None]) in place; .sum(dim=1); .type(dtype) back."""
    i64, cast = 8, db != F32
    ph = pairs * h
    c.traffic(sub(path, "counts"), "scatter_", rows * e * i64 + pairs * i64, 2 * rows * e * i64)  # new_zeros, scatter_
    c.traffic(sub(path, "tokens_per_expert"), "sum", rows * e * i64, e * i64)
    c.traffic(sub(path, "argsort"), "sort", pairs * i64, 2 * pairs * i64)
    c.traffic(sub(path, "floor_divide"), "floor_divide", pairs * i64, pairs * i64)
    c.traffic(sub(path, "gather_rows"), "index", ph * db + pairs * i64, ph * db)
    c.copy(sub(path, "cat_outputs"), "cat", ph, db)
    c.traffic(sub(path, "unsort"), "index_put_", ph * db + pairs * i64, 2 * ph * db)  # empty_like, index_put_
    # .type(float32), mul_ (reads the float32 rows and k weights per row, in place), sum over k, .type(dtype)
    reads = ph * db * cast + ph * F32 + pairs * F32 + ph * F32 + rows * h * F32 * cast
    writes = ph * F32 * cast + ph * F32 + rows * h * F32 + rows * h * db * cast
    c.elementwise(sub(path, "weighted_sum"), "mul_add", ph, EW["mul"] + EW["add"], db, traffic=(reads, writes))


def _grouped_mm_bookkeeping(c: Cost, path: str | None, rows: int, pairs: int, h: int, i: int, e: int, db: int) -> None:
    """transformers' grouped_mm_experts_forward around its two _grouped_mm: sort the pairs by expert, gather the
    rows and weights, histc (float on CPU) and cumsum for the offsets, weight the outputs (promoted to float32),
    undo the permutation and sum each token's k rows, cast back.  Index tensors are int64 (8 bytes).  Liveness:
    its transients (the caller holds the output)."""
    i64 = 8
    c.traffic(sub(path, "sort"), "sort", pairs * i64, 2 * pairs * i64)
    c.traffic(sub(path, "floor_divide"), "floor_divide", pairs * i64, pairs * i64)
    c.traffic(sub(path, "gather_rows"), "index", pairs * h * db + pairs * i64, pairs * h * db)
    c.traffic(sub(path, "gather_weights"), "index", pairs * F32 + pairs * i64, pairs * F32)
    c.traffic(sub(path, "histc"), "histc", pairs * i64 + pairs * F32, pairs * F32 + e * F32)  # .float(), histc
    c.traffic(sub(path, "offsets"), "cumsum", e * F32 + 2 * e * F32, e * F32)  # + both mm read offs
    c.elementwise_flops += e  # the float cumsum: 1 per element
    c.traffic(sub(path, "inverse_perm"), "index_put", 2 * pairs * i64, 3 * pairs * i64)  # empty_like, arange
    # out * weights (float32 result), out[inverse_perm], .view(rows, k, h).sum(1), .to(dtype)
    cast = db != F32
    reads = pairs * h * db + pairs * F32 + pairs * h * F32 + pairs * i64 + pairs * h * F32 + rows * h * F32 * cast
    writes = 2 * pairs * h * F32 + rows * h * F32 + rows * h * db * cast
    c.elementwise(sub(path, "weighted_sum"), "mul_add", pairs * h, EW["mul"] + EW["add"], db, traffic=(reads, writes))
    # liveness, in the function's order: everything it binds to a local lives until it returns -- the sorted ids
    # and permutation, the gathered rows and weights, the float histc input, the counts and offsets, the up
    # projection (until the gated product replaces it), the down projection, the float32 weighted rows, the
    # inverse permutation and the rows put back in token order (the high-water mark), then the float32 sum
    kept = 2 * pairs * i64 + pairs * h * db + 2 * pairs * F32 + 2 * e * F32
    c.hold(kept)
    up = pairs * 2 * i * db
    c.spike(up + 2 * pairs * i * db)  # the up projection, act(gate) and the product
    tail = pairs * i * db + pairs * h * db + pairs * h * F32 + pairs * i64  # product, down, weighted, inverse perm
    c.spike(tail - pairs * i * db + pairs * h * F32)  # (the product dies with the down projection) + gathered rows
    # the gathered rows replace the weighted ones (`weighted_out = weighted_out[inv_perm]`), then the sum and its cast
    c.spike(tail - pairs * i * db + rows * h * F32 + rows * h * db * cast)
    c.release(kept)
