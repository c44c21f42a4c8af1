"""`dsocr-diff`: what changed between two runs or two traces (library versions, devices, dtypes, backends)."""
