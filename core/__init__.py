"""Torch-free kernel shared by every package: names, workload, options, op rules."""
