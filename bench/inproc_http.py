"""In-process cost of one HTTP publish through the apiServer's lean front
(api/front.py), and of the pieces of it, without sockets or a load generator.

A real Hub, Mesh and one subscribed Connection; the front's connection gets
a stand-in transport that keeps no bytes. Each request is one
``data_received`` of a whole keep-alive ``POST /v1/mesh/publish`` (the
bench's 4-header head and a small JSON body), as the load generator sends
it; the delivery to the subscriber is a real frame written to its stand-in.

Run from the repository (uvloop, as the engine):

    PYTHONPATH=$PWD .venv/bin/python bench/inproc_http.py [--requests 20000] [--repeat 7]

Prints microseconds per request (best of the repeats) for the whole request
and for each piece measured alone. The machine's noise is large: compare
two builds in one sitting, e.g. with PYTHONPATH pointing at an export of the
other commit.
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Callable

import orjson
import uvloop

from connmix_py.api.front import ACTIONS, ApiConnection, ApiFront
from connmix_py.api.http import answer
from connmix_py.config import AccessSettings
from connmix_py.conn import Connection
from connmix_py.eager import at_once_or_handle
from connmix_py.hub import Hub
from connmix_py.mesh import Mesh
from connmix_py.servers.http_limits import HttpLimits, head_parser, reply
from stand_in import StandInTransport

BODY = orjson.dumps({"c": "room", "d": "x" * 16})
HEAD = (b"POST /v1/mesh/publish HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(BODY))
REQUEST = HEAD + BODY


def best(run: Callable[[], None], count: int, repeat: int) -> float:
    """Microseconds per call of ``run``: the best of ``repeat`` rounds of ``count`` calls."""
    fastest = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(count):
            run()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest / count * 1e6


async def measure(count: int, repeat: int) -> dict[str, float]:
    hub = Hub()
    mesh = Mesh(hub)
    subscriber = Connection("1", None, "127.0.0.1", 0, 0, 0)
    subscriber_transport = StandInTransport()
    subscriber.open(subscriber_transport, lambda code: None)  # type: ignore[arg-type]
    mesh.subscribe(subscriber, "room")
    front = ApiFront(None, mesh, HttpLimits(10.0), AccessSettings)  # type: ignore[arg-type]
    connection = ApiConnection(front)
    transport = StandInTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]

    def request() -> None:
        connection.data_received(REQUEST)

    request()
    assert transport.written and not transport.closing, "the front did not answer the publish"
    assert subscriber_transport.written, "the publish did not reach the subscriber"
    action = ACTIONS["/v1/mesh/publish"]
    loop = asyncio.get_running_loop()
    pieces: dict[str, Callable[[], None]] = {
        "whole request (data_received)": request,
        "C parser made and fed the head": lambda: head_parser(connection).feed_data(HEAD),
        "answer() through at_once_or_handle": lambda: at_once_or_handle(answer(action, mesh, BODY)),
        "reply() of a 200": lambda: reply(200, b'{"E":null,"r":{"s":1,"f":0}}', "1.1", False),
        "loop.call_later + cancel": lambda: loop.call_later(10, request).cancel(),
    }
    try:
        from connmix_py.servers.lean_head import read_head
        pieces["lean_head.read_head"] = lambda: read_head(HEAD)
    except ImportError:  # a build from before the lean reader
        pass
    return {name: best(run, count, repeat) for name, run in pieces.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the best is kept")
    args = parser.parse_args()
    for name, micros in uvloop.run(measure(args.requests, args.repeat)).items():
        print(f"{micros:7.2f} us  {name}")


if __name__ == "__main__":
    main()
