"""The `remote-code` backend's machinery: run a local DeepSeek-OCR snapshot (the official
remote code or a look-alike) in an isolated, pinned environment and count it.

- `snapshot`: check a snapshot directory and hash its code files (no torch needed);
- `env`: the pinned environment (transformers 4.46.x) created on demand under the cache;
- `worker`: the subprocess entry that imports the snapshot and runs the counting harness;
- `model`: the in-worker `VendorBackend` driving the snapshot's own classes;
- `compat`: the process-wide patches the official code needs (worker only).
"""
