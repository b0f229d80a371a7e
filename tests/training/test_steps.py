"""Each training step reports its own time and peak memory."""

from __future__ import annotations

import time

import numpy as np

from engine.training.steps import StepMeter
from engine.training.train import step_lines


def test_each_step_reports_its_own_peak_memory() -> None:
    meter = StepMeter()
    big = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    big[::512] = 2.0
    del big
    meter.step("allocates")
    time.sleep(0.05)
    meter.step("sleeps")
    assert meter.seconds["sleeps"] >= 0.05
    assert meter.peak_mb["allocates"] >= 400
    if meter.per_step_peak:  # Linux: the high-water mark is reset between steps
        assert meter.peak_mb["sleeps"] < meter.peak_mb["allocates"] - 300
    lines = step_lines({"steps": meter.to_dict()})
    assert lines[1].split()[0] == "allocates" and lines[-1].split()[0] == "total"
