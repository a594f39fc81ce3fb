"""The engine's Prometheus metrics (GET /metrics on the apiServer).

Counting happens where the thing happens, into plain Python ints of one
Metrics object handed to the hub, the servers, the Lua VMs and the queues;
nothing is allocated for it per delivery. prometheus_client's own Counter
and Histogram take a lock per update, so they are not used on those paths:
a custom collector reads the ints, and computes the gauges (connections,
channels, queue depth) from the live state, only when /metrics is scraped.
Each engine has its own CollectorRegistry, so engines in one process do not
clash.

Names follow CONNMIX's where it has one (SPEC 8: connmix_engine_servers_*);
the rest are ours, under connmix_. Every label has a small bounded set of
values: servers (their protocol and port), scripts (one per server), close
reasons (CLOSE_REASONS), queue topics (at most luavm.queue.maxTopics).
"""
from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .conn import Connection
    from .hub import Hub
    from .queue import Queues

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Why a connection ended: the label values of connmix_connections_closed_total,
# picked from the close reason's text by its first words (CLOSE_REASON_PREFIXES).
CLOSE_REASONS = ("client", "server", "refused", "slow_client", "read_timeout", "protocol_error",
                 "lua_error", "lost", "shutdown", "other")
CLOSE_REASON_PREFIXES = (
    ("slow client", "slow_client"),
    ("read timeout", "read_timeout"),
    ("lua error", "lua_error"),
    ("connection lost", "lost"),
    ("server shutting down", "shutdown"),
    ("handshake refused", "refused"),
    ("disconnected by protocol_input", "server"),
    ("protocol error", "protocol_error"),
    ("invalid utf-8", "protocol_error"),
    ("message too big", "protocol_error"),
    ("packet too big", "protocol_error"),
    ("packet timeout", "protocol_error"),
    ("connection closed by the client inside a packet", "protocol_error"),
)
HANDSHAKE_REFUSED = "handshake refused"

# What the budgets' stops say (prelude.lua; "not enough memory": the hard cap),
# told apart from a script's own error that happens to mention a budget.
BUDGET_STOP_MESSAGES = ("exceeded its Lua CPU budget", "Lua memory exceeded its budget", "not enough memory")

# Seconds; a callback that returns at once takes a few microseconds.
CALLBACK_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
_FIRST_BOUND = CALLBACK_BUCKETS[0]


def close_reason(conn: Connection) -> str:
    """The label for why conn ended, from its close error and code."""
    err = conn.close_err
    if err is None:
        # No error: the client closed (a close frame, or a socket's EOF), or
        # the server did (conn:close, the API) and the code says so.
        session = conn.session
        if conn.close_code is None or (session is not None and getattr(session, "eof", False)):
            return "client"
        return "server"
    lowered = err.lower()
    for prefix, reason in CLOSE_REASON_PREFIXES:
        if lowered.startswith(prefix):
            return reason
    return "other"


class Traffic:
    """Messages and bytes of one protocol (CONNMIX's {protocol} label), in and out.

    In: added by the servers as messages arrive (a socket server counts its
    reads: packets are framed by the script). Out: publishes are added by the
    hub once per encoder group; messages to one connection and all bytes are
    counted on the Connection (frames_sent, sent_total) and folded in here
    when it ends."""

    __slots__ = ("messages_in", "bytes_in", "messages_out", "bytes_out", "send_errors")

    def __init__(self) -> None:
        self.messages_in = 0
        self.bytes_in = 0
        self.messages_out = 0
        self.bytes_out = 0
        self.send_errors = 0


class ServerCounters:
    """One server's connections: accepted, and ended by reason."""

    __slots__ = ("server", "accepted", "closed", "traffic")

    def __init__(self, server: Any, traffic: Traffic) -> None:
        self.server = server  # read for its protocol, port and open connections at scrape time
        self.accepted = 0
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)
        self.traffic = traffic


class ScriptCounters:
    """One entry script's Lua errors, budget stops and callback durations."""

    __slots__ = ("errors", "budget_stops", "buckets", "seconds")

    def __init__(self) -> None:
        self.errors = 0
        self.budget_stops = 0
        self.buckets = [0] * (len(CALLBACK_BUCKETS) + 1)  # the last one is +Inf
        self.seconds = 0.0

    def observe(self, seconds: float) -> None:
        # On every callback run: kept to a bucket and a sum (the count is summed at scrape time).
        # Most runs take under the first bound: no search for those.
        self.buckets[0 if seconds <= _FIRST_BOUND else bisect_left(CALLBACK_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def observe_many(self, seconds: float, count: int) -> None:
        """``count`` callback runs timed together (the messages of one read,
        run in one call into Lua): each is kept in the bucket of their mean."""
        if count:
            mean = seconds / count
            self.buckets[0 if mean <= _FIRST_BOUND else bisect_left(CALLBACK_BUCKETS, mean)] += count
            self.seconds += seconds

    def failed(self, message: str) -> None:
        """A callback ended with an error: a budget stop or a Lua error."""
        if any(stop in message for stop in BUDGET_STOP_MESSAGES):
            self.budget_stops += 1
        else:
            self.errors += 1


class Metrics:
    """The engine's counters. Connections reach their server's counters
    through conn.server (getattr: a Connection made outside a server, in a
    test, has none and is not counted)."""

    def __init__(self) -> None:
        self.servers: list[ServerCounters] = []
        self.traffic: dict[str, Traffic] = {}
        self.scripts: dict[str, ScriptCounters] = {}
        self.publishes = 0
        self.deliveries = 0
        self.delivery_failures = 0
        self.queue_pushes = 0
        self.queue_refused = 0
        self.hub: Hub | None = None
        self.queues: Queues | None = None
        # A broker (issue 10) reports here: () -> 1 connected, 0 not.
        self.broker_state: Callable[[], float] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def watch(self, hub: Hub, queues: Queues) -> None:
        """The live state the gauges are computed from at scrape time."""
        self.hub, self.queues = hub, queues

    def server(self, server: Any) -> ServerCounters:
        protocol = server.settings.protocol
        traffic = self.traffic.get(protocol)
        if traffic is None:
            traffic = self.traffic[protocol] = Traffic()
        counters = ServerCounters(server, traffic)
        self.servers.append(counters)
        return counters

    def script(self, name: str) -> ScriptCounters:
        counters = self.scripts.get(name)
        if counters is None:
            counters = self.scripts[name] = ScriptCounters()
        return counters

    def connection_opened(self, conn: Connection) -> None:
        counters = getattr(conn.server, "counters", None)
        if counters is not None:
            counters.accepted += 1

    def connection_closed(self, conn: Connection) -> None:
        """Count conn's end and fold its out-traffic into its server's totals."""
        counters = getattr(conn.server, "counters", None)
        if counters is None:
            return
        counters.closed[close_reason(conn)] += 1
        traffic = counters.traffic
        traffic.messages_out += conn.frames_sent
        traffic.bytes_out += conn.sent_total
        traffic.send_errors += conn.send_errors

    @staticmethod
    def group_sent(member: Connection, sent: int, failed: int) -> None:
        """A publish wrote to ``sent`` connections of member's encoder group
        and failed for ``failed`` of them."""
        counters = getattr(member.server, "counters", None)
        if counters is not None:
            counters.traffic.messages_out += sent
            counters.traffic.send_errors += failed

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    """Turns the Metrics ints and the live state into metric families."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        yield from self._servers()
        yield from self._hub()
        yield from self._scripts()
        yield from self._queues()
        state = self.metrics.broker_state
        if state is not None:
            yield GaugeMetricFamily("connmix_broker_connected", "1 when the broker is connected, else 0",
                                    value=state())

    def _servers(self) -> Iterator[Any]:
        labels = ["protocol", "port"]
        clients = GaugeMetricFamily("connmix_engine_servers_clients", "Open client connections", labels=labels)
        accepted = CounterMetricFamily("connmix_connections_accepted", "Client connections accepted",
                                       labels=labels)
        closed = CounterMetricFamily("connmix_connections_closed", "Client connections ended, by reason",
                                     labels=labels + ["reason"])
        live_out: dict[str, list[int]] = {}  # protocol -> [messages, bytes, errors] of open connections
        for counters in self.metrics.servers:
            server = counters.server
            server_labels = [server.settings.protocol, str(server.port)]
            live = tuple(server.conns)
            clients.add_metric(server_labels, len(live))
            accepted.add_metric(server_labels, counters.accepted)
            for reason, count in counters.closed.items():
                closed.add_metric(server_labels + [reason], count)
            out = live_out.setdefault(server.settings.protocol, [0, 0, 0])
            for conn in live:
                out[0] += conn.frames_sent
                out[1] += conn.sent_total
                out[2] += conn.send_errors
        yield from (clients, accepted, closed)
        yield from self._traffic(live_out)

    def _traffic(self, live_out: dict[str, list[int]]) -> Iterator[Any]:
        read = CounterMetricFamily("connmix_engine_servers_read_messages", "Messages received from clients "
                                   "(websocket messages; socket reads)", labels=["protocol"])
        read_bytes = CounterMetricFamily("connmix_engine_servers_read_bytes", "Payload bytes received from "
                                         "clients", labels=["protocol"])
        sent = CounterMetricFamily("connmix_engine_servers_send_messages", "Messages written to clients",
                                   labels=["protocol"])
        sent_bytes = CounterMetricFamily("connmix_engine_servers_send_bytes", "Wire bytes written to clients",
                                         labels=["protocol"])
        errors = CounterMetricFamily("connmix_engine_servers_send_errors", "Messages that could not be written "
                                     "to a client (closing, dropped, encoding failed)", labels=["protocol"])
        for protocol, traffic in self.metrics.traffic.items():
            live_messages, live_bytes, live_errors = live_out.get(protocol, (0, 0, 0))
            read.add_metric([protocol], traffic.messages_in)
            read_bytes.add_metric([protocol], traffic.bytes_in)
            sent.add_metric([protocol], traffic.messages_out + live_messages)
            sent_bytes.add_metric([protocol], traffic.bytes_out + live_bytes)
            errors.add_metric([protocol], traffic.send_errors + live_errors)
        return iter((read, read_bytes, sent, sent_bytes, errors))

    def _hub(self) -> Iterator[Any]:
        metrics, hub = self.metrics, self.metrics.hub
        if hub is not None:
            yield GaugeMetricFamily("connmix_channels", "Channels with at least one subscriber",
                                    value=len(hub.channels))
            yield GaugeMetricFamily("connmix_subscriptions", "Subscriptions (connection, channel)",
                                    value=hub.subscriptions)
        yield CounterMetricFamily("connmix_publishes", "Publishes (mesh.publish, the APIs)",
                                  value=metrics.publishes)
        yield CounterMetricFamily("connmix_deliveries", "Publish deliveries written to subscribers",
                                  value=metrics.deliveries)
        yield CounterMetricFamily("connmix_delivery_failures", "Publish deliveries that failed "
                                  "(closed or slow subscriber, encoding failed)", value=metrics.delivery_failures)

    def _scripts(self) -> Iterator[Any]:
        errors = CounterMetricFamily("connmix_lua_errors", "Lua callbacks that failed with an error",
                                     labels=["script"])
        stops = CounterMetricFamily("connmix_lua_budget_stops", "Lua callbacks stopped by the CPU or "
                                    "memory budget", labels=["script"])
        duration = HistogramMetricFamily("connmix_lua_callback_duration_seconds", "Time in Lua per callback run "
                                         "(a waiting callback: each run between its waits)", labels=["script"])
        bounds = [repr(b) for b in CALLBACK_BUCKETS] + ["+Inf"]
        for name, counters in self.metrics.scripts.items():
            errors.add_metric([name], counters.errors)
            stops.add_metric([name], counters.budget_stops)
            cumulative, running = [], 0
            for bound, count in zip(bounds, counters.buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            duration.add_metric([name], cumulative, counters.seconds)
        return iter((errors, stops, duration))

    def _queues(self) -> Iterator[Any]:
        metrics, queues = self.metrics, self.metrics.queues
        if queues is not None:
            depth = GaugeMetricFamily("connmix_queue_items", "Items waiting in a mix.queue topic "
                                      "(topics holding items, at most luavm.queue.maxTopics)", labels=["topic"])
            for topic, items in list(queues.topics.items()):
                depth.add_metric([topic], len(items))
            yield depth
        yield CounterMetricFamily("connmix_queue_pushes", "Items pushed to mix.queue", value=metrics.queue_pushes)
        yield CounterMetricFamily("connmix_queue_refused", "Pushes refused (queue full)", value=metrics.queue_refused)
