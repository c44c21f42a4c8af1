"""Torch-free kernel every package shares: names (stages, metrics, families), the workload, options, exits,
implementation profiles and their library releases.  It imports nothing of this project outside `core`."""
