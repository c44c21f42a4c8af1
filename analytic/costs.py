"""The one table of cost formulas: every layer reports its work through `Cost`.

Tensor FLOPs reproduce `torch.utils.flop_counter` term by term (2 per multiply-add):

| primitive | counted FLOPs | aten op it mirrors |
|---|---|---|
| linear / matmul  | 2*B*M*K*N (bias add not counted) | mm, addmm, bmm, _grouped_mm |
| convolution      | 2*prod(out_shape)*(Cin/groups)*kh*kw | convolution |
| attention (SDPA) | 2*B*H*Sq*Sk*Dq + 2*B*H*Sq*Sk*Dv (mask ignored) | scaled_dot_product_* |

Everything else is reported, not gated, under simple per-element conventions
(chosen here, documented once, never fitted):

- elementwise_flops: LayerNorm 5/elem, RMSNorm 4/elem + 2/row, GELU 8, QuickGELU 5, SiLU 4,
  gate product / residual add / bias add / mask add / scale 1, softmax 5/score,
  RoPE 3.5 per rotated q/k element (the neg of rotate_half on half of them) plus cos, sin and
  their scaling per table element, bicubic resize 32 per output element, linear (1-D) resize 2.
  Each is the sum of the per-aten-op conventions of `core.op_rules` over the ops
  the module runs (that table is what the vendor side measures with).
- io_bytes: every op's inputs read + outputs written + weights read.
- weight_bytes: parameters an op reads (once per call).
- activation_bytes: output elements an op writes.
- kv_cache_bytes: K/V cache bytes the decoder attention reads in one forward.
- peak_bytes: the high-water mark of live tensor bytes above the level at the stage's entry, from a
  liveness model: each layer says which tensors it allocates and keeps (`Cost.hold`), drops
  (`Cost.release`) or allocates and drops within (`Cost.spike`), in the order the implementation
  runs; composition (`Cost.add`) keeps the running level, so a stack of layers peaks where the
  retained tensors plus one layer's transients are largest. Every tensor op's output is at least a
  transient of its own (a floor for any layer that states nothing more).
All bytes are elements x workload dtype bytes (the MoE router runs in fp32: 4).
"""

from __future__ import annotations

from typing import Any

from core.metrics import METRIC_BY_NAME, METRICS, TRAFFIC, op_metrics

# Module-level conventions, each the sum of the per-aten-op conventions (`core.op_rules`) over the ops
# the module executes, so the analytic figure and the measured one count the same way.
EW = {
    "layernorm": 5,  # native_layer_norm
    "rmsnorm": 4,  # pow, mean, x * rsqrt, weight * x (per element; eps add and rsqrt add 2 per row)
    "gelu": 8,
    "quick_gelu": 5,  # x * sigmoid(1.702 * x): mul 1 + sigmoid 3 + mul 1
    "silu": 4,
    "mul": 1,
    "add": 1,
    "softmax": 5,
    "rope": 3,  # q * cos + rotate_half(q) * sin: 2 mul + 1 add per element (the neg of rotate_half: 1 per half)
    "sincos": 2,
    "bicubic": 32,
    "linear_resize": 2,  # upsample_linear1d: two taps per output element
}


class Cost:
    """Mutable accumulator of metrics, per-family tensor FLOPs and (optionally) op records."""

    # the ops' traffic (core.metrics.TRAFFIC: every per-op metric is a function of it), plus what is not traffic
    __slots__ = (*TRAFFIC, "causal_tensor_flops", "families", "live", "peak_bytes", "records")

    def __init__(self, records: bool = False) -> None:
        self.tensor_flops = 0
        self.causal_tensor_flops = 0
        self.elementwise_flops = 0
        self.read_bytes = 0  # tensor inputs read, weights included
        self.write_bytes = 0  # outputs written
        self.weight_bytes = 0  # the part of the reads on parameters and buffers
        self.kv_cache_bytes = 0  # K/V cache reads by the decoder attention
        self.peak_bytes = 0  # high-water mark of live bytes above the entry level
        self.live = 0  # live bytes above the entry level now (what the cost's tensors leave allocated)
        self.families: dict[str, int] = {}
        self.records: list[dict[str, Any]] | None = [] if records else None

    @property
    def want_records(self) -> bool:
        return self.records is not None

    def __getattr__(self, name: str) -> int:
        """A per-op metric (``io_bytes``, ``activation_bytes``, ...) of the traffic so far (core.metrics)."""
        metric = METRIC_BY_NAME.get(name)
        if metric is None or metric.of is None:
            raise AttributeError(name)
        return metric.of(self.totals())

    def totals(self) -> dict[str, int]:
        """The traffic so far (core.metrics.TRAFFIC)."""
        return {k: getattr(self, k) for k in TRAFFIC}

    # --- accumulation -------------------------------------------------------------------------
    def add(self, other: Cost, times: int = 1) -> None:
        """Add `other` `times` times (a stack of identical layers costs N x one layer)."""
        self.tensor_flops += other.tensor_flops * times
        self.causal_tensor_flops += other.causal_tensor_flops * times
        self.elementwise_flops += other.elementwise_flops * times
        self.read_bytes += other.read_bytes * times
        self.write_bytes += other.write_bytes * times
        self.weight_bytes += other.weight_bytes * times
        self.kv_cache_bytes += other.kv_cache_bytes * times
        # `other` runs `times` times on top of what is live now; each run leaves `other.live` more (or less)
        grown = (times - 1) * max(other.live, 0)
        self.peak_bytes = max(self.peak_bytes, self.live + grown + other.peak_bytes)
        self.live += other.live * times
        fam = self.families
        for k, v in other.families.items():
            fam[k] = fam.get(k, 0) + v * times
        if self.records is not None and other.records is not None:
            if times != 1:
                raise ValueError("records cannot be scaled: evaluate each layer separately when records are asked")
            self.records.extend(other.records)

    def metrics(self) -> dict[str, int]:
        """Every metric (`METRICS` order), then ``causal_tensor_flops``."""
        per_op = op_metrics(self.totals())
        d = {m: per_op[m] if m in per_op else getattr(self, m) for m in METRICS}
        d["causal_tensor_flops"] = self.causal_tensor_flops
        return d

    # --- liveness (peak_bytes) -----------------------------------------------------------------
    def hold(self, nbytes: int) -> None:
        """A tensor of ``nbytes`` is allocated and stays live (until a `release`)."""
        self.live += nbytes
        if self.live > self.peak_bytes:
            self.peak_bytes = self.live

    def release(self, nbytes: int) -> None:
        """A tensor held earlier (here or by an enclosing layer) is freed."""
        self.live -= nbytes

    def spike(self, nbytes: int) -> None:
        """Tensors of ``nbytes`` in all are live together on top of the current level, then freed."""
        if self.live + nbytes > self.peak_bytes:
            self.peak_bytes = self.live + nbytes

    # --- primitives ---------------------------------------------------------------------------
    def tensor(
        self,
        path: str | None,
        op: str,
        aten: str,
        family: str,
        flops: int,
        shapes: dict[str, Any] | None,
        *,
        causal_flops: int | None = None,
        read_elems: int = 0,
        write_elems: int = 0,
        weight_elems: int = 0,
        db: int = 2,
        wdb: int | None = None,
    ) -> None:
        """One FLOP-bearing op as the counter sees it."""
        wdb = db if wdb is None else wdb
        self.tensor_flops += flops
        self.causal_tensor_flops += flops if causal_flops is None else causal_flops
        self.families[family] = self.families.get(family, 0) + flops
        self.read_bytes += read_elems * db + weight_elems * wdb
        self.write_bytes += write_elems * db
        self.weight_bytes += weight_elems * wdb
        self.spike(write_elems * db)  # its output is live at least while it is written (the liveness floor)
        if self.records is not None:
            self.records.append(
                {
                    "path": path,
                    "op": op,
                    "aten": aten,
                    "family": family,
                    "shapes": shapes or {},
                    "tensor_flops": flops,
                    "causal_tensor_flops": flops if causal_flops is None else causal_flops,
                    "elementwise_flops": 0,
                }
            )

    def elementwise(
        self,
        path: str | None,
        op: str,
        elems: int,
        per_elem: int,
        db: int = 2,
        weight_elems: int = 0,
        reads: int = 1,
        *,
        traffic: tuple[int, int] | None = None,
    ) -> None:
        """Elementwise work: not counted by the FLOP counter, reported under our convention.  Bytes: ``reads``
        inputs of ``elems`` and one output at ``db``, or ``traffic`` = (bytes read, bytes written) of the ops the
        implementation really runs for it (casts and intermediate tensors included)."""
        flops = elems * per_elem
        self.elementwise_flops += flops
        if traffic is None:
            self.read_bytes += elems * reads * db + weight_elems * db
            self.write_bytes += elems * db
        else:
            self.read_bytes += traffic[0] + weight_elems * db
            self.write_bytes += traffic[1]
        self.weight_bytes += weight_elems * db
        if self.records is not None:
            self.records.append(
                {
                    "path": path,
                    "op": op,
                    "aten": "elementwise",
                    "family": "other",
                    "shapes": {"elements": elems},
                    "tensor_flops": 0,
                    "causal_tensor_flops": 0,
                    "elementwise_flops": flops,
                }
            )

    def weight_read(self, path: str | None, op: str, elems: int, db: int) -> None:
        """A parameter or buffer read by an op that is not a layer's own matmul (a gather from a table, a cast
        before an interpolation, a broadcast add of a position table): bytes only."""
        self.weight_bytes += elems * db
        self.read_bytes += elems * db
        if self.records is not None:
            self.records.append(
                {"path": path, "op": op, "aten": "weight_read", "family": "other", "shapes": {"elements": elems},
                 "tensor_flops": 0, "causal_tensor_flops": 0, "elementwise_flops": 0}
            )  # fmt: skip

    def copy(self, path: str | None, op: str, elems: int, db: int, read_db: int | None = None) -> None:
        """Data movement that writes `elems` new elements from as many read (cat, contiguous, clone; a cast when
        ``read_db`` differs): bytes only."""
        self.read_bytes += elems * (db if read_db is None else read_db)
        self.write_bytes += elems * db
        if self.records is not None:
            self.records.append(
                {"path": path, "op": op, "aten": op, "family": "other", "shapes": {"elements": elems},
                 "tensor_flops": 0, "causal_tensor_flops": 0, "elementwise_flops": 0}
            )  # fmt: skip

    def traffic(self, path: str | None, op: str, read_bytes: int, write_bytes: int) -> None:
        """Bookkeeping ops with no FLOPs under the conventions (sort, index arithmetic, histograms): bytes only."""
        self.read_bytes += read_bytes
        self.write_bytes += write_bytes
        if self.records is not None:
            self.records.append(
                {"path": path, "op": op, "aten": op, "family": "other", "shapes": {"bytes": read_bytes + write_bytes},
                 "tensor_flops": 0, "causal_tensor_flops": 0, "elementwise_flops": 0}
            )  # fmt: skip

    def kv_read(self, elems: int, db: int) -> None:
        self.kv_cache_bytes += elems * db

    def linear(
        self,
        path: str | None,
        rows: int,
        in_f: int,
        out_f: int,
        *,
        bias: bool,
        db: int,
        op: str = "linear",
        aten: str | None = None,
        family: str = "mm",
        wdb: int | None = None,
    ) -> None:
        """nn.Linear / F.linear on `rows` tokens: mm/addmm 2*rows*in*out; bias add is elementwise."""
        flops = 2 * rows * in_f * out_f
        shapes = {"M": rows, "K": in_f, "N": out_f} if self.records is not None else None
        self.tensor(
            path,
            op,
            aten or ("addmm" if bias else "mm"),
            family,
            flops,
            shapes,
            read_elems=rows * in_f,
            write_elems=rows * out_f,
            weight_elems=in_f * out_f + (out_f if bias else 0),
            db=db,
            wdb=wdb,
        )
        if bias:
            self.elementwise_flops += rows * out_f

    def bmm(
        self,
        path: str | None,
        op: str,
        b: int,
        m: int,
        k: int,
        n: int,
        *,
        db: int,
        causal_flops: int | None = None,
        family: str = "bmm",
        aten: str = "bmm",
    ) -> None:
        """A batched matmul between activations (einsum, matmul on 3D/4D tensors): 2*B*M*K*N."""
        shapes = {"B": b, "M": m, "K": k, "N": n} if self.records is not None else None
        self.tensor(
            path,
            op,
            aten,
            family,
            2 * b * m * k * n,
            shapes,
            causal_flops=causal_flops,
            read_elems=b * (m * k + k * n),
            write_elems=b * m * n,
            db=db,
        )

    def conv2d(
        self,
        path: str | None,
        batch: int,
        c_in: int,
        h_in: int,
        w_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        *,
        bias: bool,
        db: int,
        groups: int = 1,
    ) -> tuple[int, int]:
        """Conv2d: 2*prod(out_shape)*(Cin/groups)*kh*kw. Returns the output spatial size."""
        h_out = (h_in + 2 * padding - kernel) // stride + 1
        w_out = (w_in + 2 * padding - kernel) // stride + 1
        flops = 2 * batch * c_out * h_out * w_out * (c_in // groups) * kernel * kernel
        shapes = (
            {
                "x": [batch, c_in, h_in, w_in],
                "w": [c_out, c_in // groups, kernel, kernel],
                "out": [batch, c_out, h_out, w_out],
            }
            if self.records is not None
            else None
        )
        out_elems = batch * c_out * h_out * w_out
        self.tensor(
            path,
            "conv2d",
            "convolution",
            "conv",
            flops,
            shapes,
            read_elems=batch * c_in * h_in * w_in,
            write_elems=out_elems,
            weight_elems=c_out * (c_in // groups) * kernel * kernel + (c_out if bias else 0),
            db=db,
        )
        if bias:
            self.elementwise_flops += out_elems
        return h_out, w_out

    def sdpa(
        self,
        path: str | None,
        b: int,
        h: int,
        sq: int,
        sk: int,
        dq: int,
        dv: int,
        *,
        db: int,
        causal_pairs: int | None = None,
        masked: bool = False,
        mask_bytes: int = 0,
    ) -> None:
        """F.scaled_dot_product_attention: 2*B*H*Sq*Sk*Dq + 2*B*H*Sq*Sk*Dv, whatever the mask.  ``masked``: a mask
        (a tensor of ``mask_bytes``, read by the kernel, or is_causal) applies, 1 per score more."""
        flops = 2 * b * h * sq * sk * dq + 2 * b * h * sq * sk * dv
        causal = None if causal_pairs is None else 2 * b * h * causal_pairs * (dq + dv)
        shapes = {"q": [b, h, sq, dq], "k": [b, h, sk, dq], "v": [b, h, sk, dv]} if self.records is not None else None
        self.tensor(
            path,
            "sdpa",
            "scaled_dot_product_attention",
            "sdpa",
            flops,
            shapes,
            causal_flops=causal,
            read_elems=b * h * (sq * dq + sk * dq + sk * dv),
            write_elems=b * h * sq * dv,
            db=db,
        )
        self.read_bytes += mask_bytes
        self.elementwise_flops += b * h * sq * sk * (EW["softmax"] + (EW["add"] if masked else 0))


def sub(path: str | None, name: str) -> str | None:
    """Child path, or None when records are off (no string work on the fast path)."""
    return None if path is None else f"{path}.{name}" if path else name


def causal_pairs(q_len: int, past: int) -> int:
    """Query-key pairs a causal mask keeps: query i (0-based) sees past + i + 1 keys."""
    return q_len * past + q_len * (q_len + 1) // 2


def add_stack(c: Cost, layers: list[tuple[Cost, int]], first_input: int) -> None:
    """A stack of layers in order (identical neighbours grouped with their count), each of whose costs ends by
    holding its output and releasing its input (the caller's loop variable moves on).  The first layer's input
    (``first_input`` bytes) is not the stack's to free -- its owner keeps it, or it predates the stage -- so it is
    held back after the first layer."""
    first = True
    for one, n in layers:
        if first:
            c.add(one)
            c.hold(first_input)
            n -= 1
            first = False
        if n:
            c.add(one, n)
