"""Layers of the cost model: each reports its per-call cost into an `analytic.costs.Cost`."""
