"""How often the garbage collector runs, in a process that holds connections.

CPython collects its youngest generation after every 700 net allocations of
tracked objects, the middle one after 10 of those and everything after 10 of
those again (and only once the long-lived objects grew by a quarter). A
gateway makes a handful of long-lived objects per connection (session,
Connection, frame reader, sets, its transport) thousands of times a second:
at the default pace the full collections, which walk every object in the
process, come often and take 100+ ms each. Measured in-process with
bench/inproc_connect.py (20000 connects and subscribes, the collector's own
time): ~18 µs per connect at the default, ~5 µs with a young threshold of 5000.
The middle and old thresholds stay as they are, so garbage in cycles is
still found; it waits a few thousand allocations longer.
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 5000


def pace_for_connections() -> None:
    """Collect the youngest generation every YOUNG_THRESHOLD allocations."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
