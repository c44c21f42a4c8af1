"""Torch-free kernel every package shares: names (stages, metrics, families), the op rules, the published
dimensions, the workload, options, exits, implementation profiles and their library releases.  It imports nothing
of this project outside `core`."""
