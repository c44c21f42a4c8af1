"""The published dimensions of each model component, stated once (core/published/<component>/<name>.yaml).

The analytic configs compose them with Hydra (``/published/<component>@...: <name>`` in their defaults); the
backends read the same files here, without building the cost model.  A file may start from another of its
component (``defaults: [<name>, _self_]``), as Hydra reads it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"


@cache
def _load(component: str, name: str) -> dict[str, Any]:
    path = PUBLISHED_DIR / component / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no published dimensions {path}: add it, or name one of its folder")
    cfg = OmegaConf.load(path)
    bases = [_load(component, base) for base in cfg.pop("defaults", []) if base != "_self_"]
    return OmegaConf.to_container(OmegaConf.merge(*bases, cfg)) if bases else OmegaConf.to_container(cfg)


def dims(component: str, name: str) -> dict[str, Any]:
    """The published dimensions ``core/published/<component>/<name>.yaml`` (a fresh dict: callers may edit it)."""
    return dict(_load(component, name))


def max_positions(decoder: str) -> int:
    """The positions the published decoder ``decoder`` has: prefill plus decode steps must fit."""
    return int(_load("decoder", decoder)["max_position_embeddings"])
