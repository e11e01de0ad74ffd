import pytest
import torch

from solo_poisoncam.engine.cache import StageCache


def test_cache_hit_miss_and_a_torn_file_is_recomputed_with_a_warning(tmp_path):
    cache = StageCache(tmp_path)
    calls = []
    compute = lambda: calls.append(1) or torch.arange(3)  # noqa: E731
    key = {"v": 1, "data": "abc"}
    assert cache.get_or_compute("features", key, compute).tolist() == [0, 1, 2] and len(calls) == 1
    assert cache.get_or_compute("features", key, compute).tolist() == [0, 1, 2] and len(calls) == 1  # hit
    assert cache.hits["features"] and isinstance(cache.compute_seconds["features"], float)
    cache.get_or_compute("features", {**key, "data": "other"}, compute)  # another key: a miss
    assert len(calls) == 2 and not cache.hits["features"]
    cache.path("features", key).write_bytes(b"torn")
    with pytest.warns(RuntimeWarning, match="could not be read .*recomputing 'features'"):
        assert cache.get_or_compute("features", key, compute).tolist() == [0, 1, 2]
    assert len(calls) == 3
    assert StageCache(tmp_path, enabled=False).load("features", key) is None
