#!/usr/bin/env python3
"""Is it the code or the machine? The echo path and a plain Python loop, side by side.

The full plan's echo runs for about a second of server CPU, and some runs
of the same code on this machine cost 30-50 % more than others. This
runs, in one process and alternately, slices of the in-process echo path
(bench/inproc_echo.py's ``whole``: a real LuaVM and WebSocketSession, no
sockets) and of a reference loop that touches neither Lua nor the engine
(dict stores of small strings), and prints each slice's CPU time. When
the machine has a slow spell, both slow down in the same slices; when
the code has one (its collector, a cache), only the echo does.

    .venv/bin/python bench/cpu_spells.py              # 20 s, every slice
    .venv/bin/python bench/cpu_spells.py --seconds 60 --slow-only

Both are CPU time of this process (time.process_time): another process's
turns on the core are not counted, only this one's running slower.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import inproc_echo  # noqa: E402  (beside this file)

REFERENCE_STORES = 200_000


def reference_ms() -> float:
    """The plain loop: CPU milliseconds for REFERENCE_STORES dict stores."""
    started = time.process_time()
    table: dict[int, str] = {}
    for i in range(REFERENCE_STORES):
        table[i & 1023] = str(i)
    return (time.process_time() - started) * 1e3


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    parser.add_argument("--reads", type=int, default=1000, help="reads of 8 echo frames per slice (default 1000)")
    parser.add_argument("--slow-only", action="store_true", help="print only slices 15 %% over the best")
    args = parser.parse_args()
    data = inproc_echo.reads(args.reads)
    echoes = args.reads * inproc_echo.WINDOW
    with tempfile.TemporaryDirectory() as folder:
        echo = inproc_echo.layer_runs(data, folder)["whole"][0]
        echo()  # warm up
        slices: list[tuple[float, float, float]] = []  # (wall clock, echo us, reference ms)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            started = time.process_time()
            echo()
            echo_us = (time.process_time() - started) / echoes * 1e6
            slices.append((time.time(), echo_us, reference_ms()))
    best_echo = min(s[1] for s in slices)
    best_reference = min(s[2] for s in slices)
    slow_echo = slow_both = 0
    for at, echo_us, ref_ms in slices:
        echo_slow, ref_slow = echo_us > best_echo * 1.15, ref_ms > best_reference * 1.15
        slow_echo += echo_slow
        slow_both += echo_slow and ref_slow
        if echo_slow or ref_slow or not args.slow_only:
            clock = time.strftime("%H:%M:%S", time.localtime(at))
            print(f"{clock}  echo {echo_us:5.2f} us (+{echo_us / best_echo - 1:4.0%})  "
                  f"reference {ref_ms:5.1f} ms (+{ref_ms / best_reference - 1:4.0%})")
    print(f"{len(slices)} slices; echo best {best_echo:.2f} us, reference best {best_reference:.1f} ms; "
          f"{slow_echo} echo slices 15 % over its best, {slow_both} of them with the reference slow too")


if __name__ == "__main__":
    asyncio.run(main())
