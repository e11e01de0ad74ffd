"""Per-stage accounting: seconds, counts, the lines a log gets, and each stage's own peak memory."""

import sys

import numpy as np
import pytest

from solo_poisoncam.timing import StageClock, peak_rss_mb, reset_peak_rss


def test_clock_counts_nested_parts_and_logs_outermost_ones_at_start_and_end():
    lines = []
    clock = StageClock(log=lines.append)
    with clock("masking", 10):
        with clock("forward", 490):
            pass
    with clock("masking", 5):
        pass
    assert clock.counts == {"masking": 15, "forward": 490}
    assert set(clock.seconds) == {"masking", "forward"}
    assert [line.split(":")[0].split(" ")[0] for line in lines] == ["masking"] * 4  # nested parts: counted only
    assert lines[0] == "masking ... (10 images)" and lines[1].startswith("masking: ") and "(10 images)" in lines[1]


@pytest.mark.skipif(not sys.platform.startswith("linux") or not reset_peak_rss(), reason="needs Linux clear_refs")
def test_each_stage_reports_its_own_peak_not_an_earlier_stages():
    """A 400 MiB array lives only in the first stage: the second's peak is well below the first's."""
    clock = StageClock()
    with clock("big"):
        a = np.ones(400 * 2 ** 20 // 8)
        a[::512] = 2.0  # touch every page
        del a
    with clock("small"):
        np.ones(1000).sum()
    assert clock.peak_rss_mb["big"] - clock.peak_rss_mb["small"] > 300
    assert peak_rss_mb() < clock.peak_rss_mb["big"]
