"""``cdp bench`` attributes CPU to the right process over the measured window (its ``cpu_us_per_event``)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from bench.pipeline import CpuSampler

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def burn(cpu_s: float) -> None:
    end = time.process_time() + cpu_s
    while time.process_time() < end:
        pass


def test_the_window_holds_the_cpu_used_in_it_and_not_before():
    with CpuSampler({"me": os.getpid(), "gone": lambda: None}) as sampler:
        burn(0.3)  # before the window
        time.sleep(0.1)
        start = time.time()
        burn(0.4)
        end = time.time()
        time.sleep(0.1)
    used = sampler.used(start, end)
    assert set(used) == {"me"}  # a process with no pid is left out, not counted as zero
    assert 0.3 <= used["me"] <= 0.55
