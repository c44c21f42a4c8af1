"""Every projector type of the official deepencoder.py `MlpProjector` (DeepSeek-OCR uses `linear`:
one Linear(2048, 1280) with bias; transformers `multi_modal_projector` is the same Linear).

Input per view: `tokens` rows of `input_dim` features (CLIP rows without CLS, concatenated with
SAM's flattened map). Types that take a pair of feature maps (`low_high_*`,
`conv_fusion_high_low_features`) see two such inputs of `tokens` rows each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analytic.costs import EW, Cost, sub
from analytic.layers.common import ConfigError

PROJECTOR_TYPES = (
    "identity",
    "linear",
    "mlp_gelu",
    "normlayer_downsample_mlp_gelu",
    "downsample_mlp_gelu",
    "low_high_hybrid_split_mlp_gelu",
    "hybrid_split_feature_mlp_gelu",
    "low_high_split_mlp_gelu",
)


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
        t = self.projector_type
        cin = self.total_input_dim
        n = self.n_embed
        if self.token_pooling:  # 2x2 unfold then Linear(4C, C)
            side = math.isqrt(tokens)
            tokens = (side // 2) ** 2
            c.linear(sub(path, "token_pooling_layer"), batch * tokens, 4 * cin, cin, bias=True, db=db)
        if self.conv_fusion_high_low_features:  # fusion_layer(x[:, 0]) + x[:, 1]
            c.linear(sub(path, "fusion_layer"), batch * tokens, cin, cin, bias=True, db=db)
            c.elementwise(sub(path, "fusion_add"), "add", batch * tokens * cin, EW["add"], db, reads=2)
        rows = batch * tokens
        lp = sub(path, "layers")
        if t == "identity":
            return tokens
        if t == "linear" and strided_input:
            c.copy(sub(lp, "input_clone"), "clone", rows * cin, db)
            c.linear(lp, rows, cin, n, bias=False, db=db)
            c.elementwise(sub(lp, "bias_add"), "add", rows * n, EW["add"], db, weight_elems=n)
            c.peak_bytes = max(c.peak_bytes, 2 * rows * n * db)  # mm's output and the add's output
            return tokens
        if t == "linear":
            c.linear(lp, rows, cin, n, bias=True, db=db)
            return tokens
        if t == "mlp_gelu":
            c.linear(sub(lp, "0"), rows, cin, n, bias=True, db=db)
            self._gelu_stack(c, rows, n, n, self.depth - 1, db, lp, start=1)
            return tokens
        if t in ("downsample_mlp_gelu", "normlayer_downsample_mlp_gelu"):
            r = self.downsample_ratio
            side = math.isqrt(tokens)
            out_side = -(-side // r)  # padded to a multiple of r, then unfold r x r
            tokens = out_side * out_side
            rows = batch * tokens
            din = cin * r * r
            hidden = n * self.mlp_ratio
            idx = 0
            if t == "normlayer_downsample_mlp_gelu":
                c.elementwise(sub(lp, "0"), "layernorm", rows * din, EW["layernorm"], db, weight_elems=2 * din)
                idx = 1
            c.linear(sub(lp, str(idx)), rows, din, hidden, bias=True, db=db)
            idx = self._gelu_stack(c, rows, hidden, hidden, max(self.depth - 2, 0), db, lp, start=idx + 1)
            c.elementwise(sub(lp, str(idx)), "gelu", rows * hidden, EW["gelu"], db)
            c.linear(sub(lp, str(idx + 1)), rows, hidden, n, bias=True, db=db)
            return tokens
        if t == "low_high_hybrid_split_mlp_gelu":  # x = (high, low), each (B, T, input_dim)
            c.linear(sub(path, "high_up_proj"), rows, cin, n // 2, bias=True, db=db)
            c.linear(sub(path, "low_up_proj"), rows, cin, n // 2, bias=True, db=db)
            self._gelu_stack(c, rows, n, n, self.depth - 1, db, lp, start=0)
            return tokens
        if t == "hybrid_split_feature_mlp_gelu":
            c0, c1 = self.input_dim  # type: ignore[misc]
            high = int(n * self.channel_div)
            c.linear(sub(path, "high_up_proj"), rows, c0, high, bias=True, db=db)
            c.linear(sub(path, "low_up_proj"), rows, c1, n - high, bias=True, db=db)
            self._gelu_stack(c, rows, n, n, self.depth - 1, db, lp, start=0)
            return tokens
        # low_high_split_mlp_gelu: x = (high, low), each (B, T, n/2), two stacks of (depth-1) Linear(n/2, n/2)
        self._gelu_stack(c, rows, n // 2, n // 2, self.depth - 1, db, sub(path, "high_layers"), start=0)
        self._gelu_stack(c, rows, n // 2, n // 2, self.depth - 1, db, sub(path, "low_layers"), start=0)
        return tokens

    @staticmethod
    def _gelu_stack(c: Cost, rows: int, din: int, dout: int, count: int, db: int, path: str | None, start: int) -> int:
        """`count` x (GELU, Linear(din, dout)); returns the next module index."""
        idx = start
        for _ in range(count):
            c.elementwise(sub(path, str(idx)), "gelu", rows * din, EW["gelu"], db)
            c.linear(sub(path, str(idx + 1)), rows, din, dout, bias=True, db=db)
            idx += 2
        return idx
