"""The collector's pacing for a process holding connections (collector.py)."""
from __future__ import annotations

import gc

from connmix_py.collector import YOUNG_THRESHOLD, pace_for_connections


def test_the_young_generation_is_collected_less_often_and_the_others_as_before():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 11, 12)
        pace_for_connections()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 11, 12)
    finally:
        gc.set_threshold(*before)
