"""Every projector type of the official deepencoder.py `MlpProjector` (DeepSeek-OCR uses `linear`:
one Linear(2048, 1280) with bias; transformers `multi_modal_projector` is the same Linear).

Input per view: `tokens` rows of `input_dim` features (CLIP rows without CLS, concatenated with
SAM's flattened map). Types that take a pair of feature maps (`low_high_*`,
`conv_fusion_high_low_features`) see two such inputs of `tokens` rows each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import ConfigError

_Term = Callable[["MlpProjector", Cost, int, int, int, "str | None", bool], int]


def _identity(p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, strided: bool) -> int:
    """No op: the features pass through."""
    return tokens


def _linear(p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, strided: bool) -> int:
    """One Linear(input_dim, n_embed): addmm, or on a strided input a clone, mm and the bias add into a new tensor
    (mm's output and the sum alive together)."""
    rows, cin, n, lp = batch * tokens, p.total_input_dim, p.n_embed, sub(path, "layers")
    if not strided:
        c.linear(lp, rows, cin, n, bias=True, db=db)
        return tokens
    c.copy(sub(lp, "input_clone"), "clone", rows * cin, db)
    c.linear(lp, rows, cin, n, bias=False, db=db)
    c.elementwise(sub(lp, "bias_add"), "add", rows * n, EW["add"], db, weight_elems=n)
    c.peak_bytes = max(c.peak_bytes, 2 * rows * n * db)  # mm's output and the add's output
    return tokens


def _mlp_gelu(p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, strided: bool) -> int:
    """Linear(input_dim, n_embed), then (depth - 1) x (GELU, Linear(n_embed, n_embed))."""
    rows, n, lp = batch * tokens, p.n_embed, sub(path, "layers")
    c.linear(sub(lp, "0"), rows, p.total_input_dim, n, bias=True, db=db)
    p._gelu_stack(c, rows, n, n, p.depth - 1, db, lp, start=1)
    return tokens


def _downsample(p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, norm: bool) -> int:
    """Pad to a multiple of the ratio r, unfold r x r (input_dim x r^2 features), an optional LayerNorm, then
    Linear(din, hidden), (depth - 2) x (GELU, Linear(hidden, hidden)), GELU, Linear(hidden, n_embed)."""
    r, lp = p.downsample_ratio, sub(path, "layers")
    side = math.isqrt(tokens)
    out_side = -(-side // r)  # padded to a multiple of r, then unfold r x r
    tokens = out_side * out_side
    rows = batch * tokens
    din = p.total_input_dim * r * r
    hidden = p.n_embed * p.mlp_ratio
    idx = 0
    if norm:
        c.elementwise(sub(lp, "0"), "layernorm", rows * din, EW["layernorm"], db, weight_elems=2 * din)
        idx = 1
    c.linear(sub(lp, str(idx)), rows, din, hidden, bias=True, db=db)
    idx = p._gelu_stack(c, rows, hidden, hidden, max(p.depth - 2, 0), db, lp, start=idx + 1)
    c.elementwise(sub(lp, str(idx)), "gelu", rows * hidden, EW["gelu"], db)
    c.linear(sub(lp, str(idx + 1)), rows, hidden, p.n_embed, bias=True, db=db)
    return tokens


def _downsample_mlp(p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, strided: bool) -> int:
    """downsample_mlp_gelu: no norm before the MLP."""
    return _downsample(p, c, batch, tokens, db, path, norm=False)


def _norm_downsample_mlp(
    p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, strided: bool
) -> int:
    """normlayer_downsample_mlp_gelu: a LayerNorm of the unfolded features first."""
    return _downsample(p, c, batch, tokens, db, path, norm=True)


def _low_high_hybrid(
    p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, strided: bool
) -> int:
    """x = (high, low), each (B, T, input_dim): two Linear(input_dim, n_embed / 2), then the GELU stack."""
    rows, cin, n = batch * tokens, p.total_input_dim, p.n_embed
    c.linear(sub(path, "high_up_proj"), rows, cin, n // 2, bias=True, db=db)
    c.linear(sub(path, "low_up_proj"), rows, cin, n // 2, bias=True, db=db)
    p._gelu_stack(c, rows, n, n, p.depth - 1, db, sub(path, "layers"), start=0)
    return tokens


def _hybrid_split(p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, strided: bool) -> int:
    """input_dim = (high, low) features: split by channel_div into two up projections, then the GELU stack."""
    rows, n = batch * tokens, p.n_embed
    c0, c1 = p.input_dim  # type: ignore[misc]
    high = int(n * p.channel_div)
    c.linear(sub(path, "high_up_proj"), rows, c0, high, bias=True, db=db)
    c.linear(sub(path, "low_up_proj"), rows, c1, n - high, bias=True, db=db)
    p._gelu_stack(c, rows, n, n, p.depth - 1, db, sub(path, "layers"), start=0)
    return tokens


def _low_high_split(p: MlpProjector, c: Cost, batch: int, tokens: int, db: int, path: str | None, strided: bool) -> int:
    """x = (high, low), each (B, T, n/2): two stacks of (depth - 1) Linear(n/2, n/2)."""
    rows, half = batch * tokens, p.n_embed // 2
    p._gelu_stack(c, rows, half, half, p.depth - 1, db, sub(path, "high_layers"), start=0)
    p._gelu_stack(c, rows, half, half, p.depth - 1, db, sub(path, "low_layers"), start=0)
    return tokens


# projector_type -> its layers after the optional token pooling and fusion; returns the output rows per view
_PROJECTORS: dict[str, _Term] = {
    "identity": _identity,
    "linear": _linear,
    "mlp_gelu": _mlp_gelu,
    "normlayer_downsample_mlp_gelu": _norm_downsample_mlp,
    "downsample_mlp_gelu": _downsample_mlp,
    "low_high_hybrid_split_mlp_gelu": _low_high_hybrid,
    "hybrid_split_feature_mlp_gelu": _hybrid_split,
    "low_high_split_mlp_gelu": _low_high_split,
}
PROJECTOR_TYPES = tuple(_PROJECTORS)


@dataclass(frozen=True)
class MlpProjector:
    projector_type: str = "linear"
    input_dim: int | tuple[int, int] = 2048
    n_embed: int = 1280
    depth: int = 1
    mlp_ratio: int = 1
    downsample_ratio: int = 2
    channel_div: float = 0.5
    token_pooling: bool = False
    conv_fusion_high_low_features: bool = False

    def __post_init__(self) -> None:
        if self.projector_type not in PROJECTOR_TYPES:
            raise ConfigError(
                f"projector.projector_type={self.projector_type!r} unknown; use one of {', '.join(PROJECTOR_TYPES)}"
            )
        if isinstance(self.input_dim, (list, tuple)):
            object.__setattr__(self, "input_dim", tuple(int(x) for x in self.input_dim))
            if self.projector_type != "hybrid_split_feature_mlp_gelu":
                raise ConfigError("projector.input_dim is a pair only for hybrid_split_feature_mlp_gelu")
        elif self.projector_type == "hybrid_split_feature_mlp_gelu":
            raise ConfigError("hybrid_split_feature_mlp_gelu needs projector.input_dim=[high_dim,low_dim]")
        if self.depth < 1 or self.n_embed <= 0:
            raise ConfigError("projector.depth must be >= 1 and projector.n_embed positive")

    @property
    def total_input_dim(self) -> int:
        return sum(self.input_dim) if isinstance(self.input_dim, tuple) else self.input_dim

    @property
    def output_dim(self) -> int:
        return self.total_input_dim if self.projector_type == "identity" else self.n_embed

    def params(self) -> int:
        """Parameter count: a call reads every projector weight exactly once, so it is the weight bytes of one call
        on a 2 x 2 map at one byte per element."""
        c = Cost()
        self.evaluate(c, 1, 4, 1, None)
        return c.weight_bytes

    def evaluate(
        self, c: Cost, batch: int, tokens: int, db: int, path: str | None = "projector", strided_input: bool = False
    ) -> int:
        """Adds one projector call; returns the output rows per view.  ``strided_input``: the (batch, tokens, C)
        input cannot be flattened to rows without a copy (DeepSeek-OCR 2's query slice ``[:, n:, :]`` when batch >
        1), so F.linear runs as matmul: a clone of the input, mm, then the bias add into a new tensor (mm's output
        and the sum alive together) instead of one addmm."""
        cin = self.total_input_dim
        if self.token_pooling:  # 2x2 unfold then Linear(4C, C)
            side = math.isqrt(tokens)
            tokens = (side // 2) ** 2
            c.linear(sub(path, "token_pooling_layer"), batch * tokens, 4 * cin, cin, bias=True, db=db)
        if self.conv_fusion_high_low_features:  # fusion_layer(x[:, 0]) + x[:, 1]
            c.linear(sub(path, "fusion_layer"), batch * tokens, cin, cin, bias=True, db=db)
            c.elementwise(sub(path, "fusion_add"), "add", batch * tokens * cin, EW["add"], db, reads=2)
        return _PROJECTORS[self.projector_type](self, c, batch, tokens, db, path, strided_input)

    @staticmethod
    def _gelu_stack(c: Cost, rows: int, din: int, dout: int, count: int, db: int, path: str | None, start: int) -> int:
        """`count` x (GELU, Linear(din, dout)); returns the next module index."""
        idx = start
        for _ in range(count):
            c.elementwise(sub(path, str(idx)), "gelu", rows * din, EW["gelu"], db)
            c.linear(sub(path, str(idx + 1)), rows, din, dout, bias=True, db=db)
            idx += 2
        return idx
