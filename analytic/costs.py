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
  their scaling per table element, bicubic resize 32 per output element, linear resize 4.
  Each is the sum of the per-aten-op conventions of `analytic.op_conventions` over the ops
  the module runs (that table is what the vendor side measures with).
- io_bytes: every op's inputs read + outputs written + weights read.
- weight_bytes: parameters an op reads (once per call).
- activation_bytes: output elements an op writes.
- kv_cache_bytes: K/V cache bytes the decoder attention reads in one forward.
- peak_bytes: the largest output one tensor op allocates (exact for a one-op stage such as the
  linear projector; a lower bound for the others until a liveness model exists).
All bytes are elements x workload dtype bytes (the MoE router runs in fp32: 4).
"""

from __future__ import annotations

from typing import Any

from analytic.schema import METRICS

METRIC_FIELDS = METRICS  # one list of metric names: analytic.schema

# Module-level conventions, each the sum of the per-aten-op conventions (`analytic.op_conventions`) over the ops
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
    "linear_resize": 4,
}


class Cost:
    """Mutable accumulator of metrics, per-family tensor FLOPs and (optionally) op records."""

    __slots__ = (
        "activation_bytes",
        "causal_tensor_flops",
        "elementwise_flops",
        "families",
        "io_bytes",
        "kv_cache_bytes",
        "peak_bytes",
        "records",
        "tensor_flops",
        "weight_bytes",
    )

    def __init__(self, records: bool = False) -> None:
        self.tensor_flops = 0
        self.causal_tensor_flops = 0
        self.elementwise_flops = 0
        self.io_bytes = 0
        self.weight_bytes = 0
        self.activation_bytes = 0
        self.kv_cache_bytes = 0
        self.peak_bytes = 0
        self.families: dict[str, int] = {}
        self.records: list[dict[str, Any]] | None = [] if records else None

    @property
    def want_records(self) -> bool:
        return self.records is not None

    # --- accumulation -------------------------------------------------------------------------
    def add(self, other: Cost, times: int = 1) -> None:
        """Add `other` `times` times (a stack of identical layers costs N x one layer)."""
        self.tensor_flops += other.tensor_flops * times
        self.causal_tensor_flops += other.causal_tensor_flops * times
        self.elementwise_flops += other.elementwise_flops * times
        self.io_bytes += other.io_bytes * times
        self.weight_bytes += other.weight_bytes * times
        self.activation_bytes += other.activation_bytes * times
        self.kv_cache_bytes += other.kv_cache_bytes * times
        self.peak_bytes = max(self.peak_bytes, other.peak_bytes)  # layers run one after another
        fam = self.families
        for k, v in other.families.items():
            fam[k] = fam.get(k, 0) + v * times
        if self.records is not None and other.records is not None:
            if times != 1:
                raise ValueError("records cannot be scaled: evaluate each layer separately when records are asked")
            self.records.extend(other.records)

    def metrics(self) -> dict[str, int]:
        d = {f: getattr(self, f) for f in METRIC_FIELDS}
        d["causal_tensor_flops"] = self.causal_tensor_flops
        return d

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
        self.io_bytes += (read_elems + write_elems) * db + weight_elems * wdb
        self.weight_bytes += weight_elems * wdb
        self.activation_bytes += write_elems * db
        # peak_bytes, for now: the largest single output a tensor op allocates -- exact for a one-op stage (the
        # projector), a lower bound elsewhere until the liveness model exists (issue 11)
        self.peak_bytes = max(self.peak_bytes, write_elems * db)
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
            self.io_bytes += (elems * reads + elems) * db + weight_elems * db
            self.activation_bytes += elems * db
        else:
            self.io_bytes += traffic[0] + traffic[1] + weight_elems * db
            self.activation_bytes += traffic[1]
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
        self.io_bytes += elems * db
        if self.records is not None:
            self.records.append(
                {"path": path, "op": op, "aten": "weight_read", "family": "other", "shapes": {"elements": elems},
                 "tensor_flops": 0, "causal_tensor_flops": 0, "elementwise_flops": 0}
            )  # fmt: skip

    def copy(self, path: str | None, op: str, elems: int, db: int, read_db: int | None = None) -> None:
        """Data movement that writes `elems` new elements from as many read (cat, contiguous, clone; a cast when
        ``read_db`` differs): bytes only."""
        self.io_bytes += elems * (db + (db if read_db is None else read_db))
        self.activation_bytes += elems * db
        if self.records is not None:
            self.records.append(
                {"path": path, "op": op, "aten": op, "family": "other", "shapes": {"elements": elems},
                 "tensor_flops": 0, "causal_tensor_flops": 0, "elementwise_flops": 0}
            )  # fmt: skip

    def traffic(self, path: str | None, op: str, read_bytes: int, write_bytes: int) -> None:
        """Bookkeeping ops with no FLOPs under the conventions (sort, index arithmetic, histograms): bytes only."""
        self.io_bytes += read_bytes + write_bytes
        self.activation_bytes += write_bytes
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
    ) -> None:
        """F.scaled_dot_product_attention: 2*B*H*Sq*Sk*Dq + 2*B*H*Sq*Sk*Dv, whatever the mask."""
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
        self.elementwise_flops += b * h * sq * sk * EW["softmax"]


def sub(path: str | None, name: str) -> str | None:
    """Child path, or None when records are off (no string work on the fast path)."""
    return None if path is None else f"{path}.{name}" if path else name


def causal_pairs(q_len: int, past: int) -> int:
    """Query-key pairs a causal mask keeps: query i (0-based) sees past + i + 1 keys."""
    return q_len * past + q_len * (q_len + 1) // 2
