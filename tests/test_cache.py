"""Trace cache: keyed by everything that changes a count, written atomically, corrupt = miss."""

import errno
import json
import os

import pytest

from core.workload import VisionWorkload
from verify import cache as cache_mod
from verify.cache import TraceCache, default_cache_root

VERSIONS = {"torch": "2.13.0", "transformers": "5.23.0"}
TRACE = {"schema_version": 1, "stages": {"sam": {"global": {"tensor_flops": 123}}}}


def _key(**over):
    args = {
        "backend": "hf",
        "workload": VisionWorkload.from_page(1654, 2339, "gundam"),
        "device": "cpu",
        "vision_only": False,
        "schema_version": 1,
        "code_hashes": {},
        "versions": VERSIONS,
    }
    return TraceCache.key_for(**{**args, **over})


def test_key_is_stable_and_covers_what_changes_a_count():
    base = _key()
    assert base == _key() and len(base) == 64
    # same crop grid (2x3) from another page size: same signature, same key
    assert _key(workload=VisionWorkload.from_page(1240, 1754, "gundam")) == base
    # a VisionWorkload and its signature() dict give the same key
    assert _key(workload=VisionWorkload.from_page(1654, 2339, "gundam").signature()) == base
    changed = [
        _key(backend="remote-code"),
        _key(device="cuda"),
        _key(vision_only=True),
        _key(schema_version=2),
        _key(code_hashes={"deepencoder.py": "ab" * 32}),
        _key(versions={**VERSIONS, "torch": "2.14.0"}),
        _key(workload=VisionWorkload.from_page(1654, 2339, "gundam", dtype="bfloat16")),
        _key(workload=VisionWorkload.from_page(2339, 1654, "gundam")),  # 3x2 grid
        _key(workload=VisionWorkload.from_page(1654, 2339, "gundam", decode_tokens=4)),
        _key(workload=VisionWorkload.from_page(1654, 2339, "gundam", lm_head_scope="last")),
        _key(workload=VisionWorkload.from_page(1654, 2339, "gundam", attn_impl="sdpa")),
    ]
    assert len({base, *changed}) == len(changed) + 1


def test_default_versions_come_from_installed_packages():
    material = cache_mod.key_material(
        backend="hf", workload_signature={}, device="cpu", vision_only=True, schema_version=1
    )
    assert set(material["versions"]) == {"torch", "transformers"}


def test_round_trip_leaves_no_temporary_files(tmp_path):
    cache = TraceCache(tmp_path)
    key = _key()
    assert cache.get(key) is None
    path = cache.put(key, TRACE, material={"backend": "hf"})
    assert cache.get(key) == TRACE
    assert path.parent.parent == tmp_path and path.name == f"{key}.json"
    assert os.listdir(path.parent) == [path.name]


def test_failed_write_keeps_old_entry_and_no_temporary(tmp_path, monkeypatch):
    cache = TraceCache(tmp_path)
    key = _key()
    path = cache.put(key, TRACE)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        cache.put(key, {"stages": {}})
    monkeypatch.undo()
    assert cache.get(key) == TRACE
    assert os.listdir(path.parent) == [path.name]


def test_unserialisable_trace_writes_nothing(tmp_path):
    cache = TraceCache(tmp_path)
    with pytest.raises(ValueError):
        cache.put(_key(), {"x": float("nan")})
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


@pytest.mark.parametrize(
    "content",
    ['{"cache_format": 1, "key": "trunc', "[]", '{"cache_format": 1, "key": "other", "trace": {}}', "\xff"],
)
def test_corrupt_entry_is_a_miss_and_removed(tmp_path, content):
    cache = TraceCache(tmp_path)
    key = _key()
    path = cache.put(key, TRACE)
    path.write_text(content, encoding="latin-1")
    assert cache.get(key) is None
    assert not path.exists()


def test_bad_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sha256"):
        TraceCache(tmp_path).get("../../etc/passwd")


def test_default_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DSOCR_CACHE_DIR", str(tmp_path))
    assert default_cache_root() == tmp_path / "traces"
    assert TraceCache().root == tmp_path / "traces"
    monkeypatch.delenv("DSOCR_CACHE_DIR")
    assert default_cache_root().parts[-3:] == (".cache", "dsocr-flopcheck", "traces")


def test_entry_records_key_material(tmp_path):
    cache = TraceCache(tmp_path)
    key = _key()
    cache.put(key, TRACE, material={"backend": "hf"})
    entry = json.loads(cache.path_for(key).read_text())
    assert entry["material"] == {"backend": "hf"} and entry["key"] == key


# ---- entries that are not what they seem, and folders that cannot take entries ------------------------


def _must_have_stages(trace):
    if "stages" not in trace:
        raise ValueError("not a trace")


def test_valid_json_that_is_not_a_valid_trace_is_a_miss_and_replaced(tmp_path):
    cache = TraceCache(tmp_path, validate=_must_have_stages)
    key = _key()
    path = cache.put(key, {"complete": True})  # the entry layout is right, the trace is not
    assert cache.get(key) is None and not path.exists()
    cache.put(key, TRACE)
    assert cache.get(key) == TRACE


def test_entry_that_is_a_directory_is_a_miss_and_replaced(tmp_path):
    cache = TraceCache(tmp_path)
    key = _key()
    path = cache.path_for(key)
    (path / "junk").mkdir(parents=True)
    assert cache.get(key) is None and not path.exists()
    cache.put(key, TRACE)
    assert cache.get(key) == TRACE


def test_entry_that_is_a_link_is_never_followed(tmp_path):
    outside = tmp_path / "outside.json"
    cache = TraceCache(tmp_path / "cache")
    key = _key()
    path = cache.put(key, TRACE)
    os.replace(path, outside)  # a well-formed entry, but outside the cache
    path.symlink_to(outside)
    assert cache.get(key) is None
    assert not path.is_symlink() and outside.exists()  # the link is gone, its target untouched


def test_entry_that_is_a_fifo_is_a_miss_without_blocking(tmp_path):
    cache = TraceCache(tmp_path)
    key = _key()
    path = cache.path_for(key)
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    assert cache.get(key) is None and not path.exists()


def test_truncated_entry_is_a_miss(tmp_path):
    cache = TraceCache(tmp_path)
    key = _key()
    path = cache.put(key, TRACE)
    path.write_bytes(path.read_bytes()[:-7])
    assert cache.get(key) is None and not path.exists()


def test_probe_names_a_file_in_the_way_and_an_unwritable_folder(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    assert TraceCache(tmp_path / "file").probe() == "is a file, not a folder"
    assert TraceCache(tmp_path / "new" / "traces").probe() is None and (tmp_path / "new" / "traces").is_dir()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_mod.tempfile, "mkstemp", read_only)
    assert TraceCache(tmp_path / "new" / "traces").probe() == "not writable (Read-only file system)"


def test_disk_full_while_writing_leaves_no_temporary(tmp_path, monkeypatch):
    cache = TraceCache(tmp_path)

    def full(fd, text):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "_write_fd", full)
    with pytest.raises(OSError, match="No space left"):
        cache.put(_key(), TRACE)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
