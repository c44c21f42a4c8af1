"""Crop grid and token counts, derived by hand from the vendor policy."""

import pytest

from analytic import VisionWorkload, WorkloadError, compute_num_queries


def test_num_queries():
    # ceil((size // 16) / 4): 512/16=32 -> 8; 640/16=40 -> 10; 1024/16=64 -> 16; 1280/16=80 -> 20
    assert [compute_num_queries(s) for s in (512, 640, 1024, 1280)] == [8, 10, 16, 20]


def test_inconsistent_override_rejected():
    with pytest.raises(WorkloadError, match="image_size=640"):
        VisionWorkload.from_page(1000, 1000, "gundam", image_size=1024)
