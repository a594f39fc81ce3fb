"""RedisBroker: the Mesh's Broker over a Redis-protocol server.

Publish: the publishing node fans out to its own subscribers at once (no
round trip, and local delivery goes on while the broker is down), then
PUBLISHes the envelope on the channel's topic. Every node subscribed to the
topic fans out locally and reports its counts to the publisher's inbox;
PUBLISH's reply says how many nodes got the message, so the publisher waits
for exactly that many reports (at most PUBLISH_REPORT_TIMEOUT) and logs a
shortfall. Its own copy, coming back from the broker, is one of those: it
counts as an empty report and is not delivered twice.

Send and conn.call: the client id names its node (ids.node_of); the
envelope goes to that node's inbox and the node answers with a result.
PUBLISH saying 0 receivers means the node is gone: False at once.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..conn import PayloadError
from ..hub import Hub
from ..ids import node_of
from . import wire
from .keys import channel_topic, node_inbox
from .transport import BrokerDown, PubSubTransport

if TYPE_CHECKING:
    from ..mesh import Mesh

log = logging.getLogger("connmix.grid")

# Seconds a publish waits for the reports of the nodes that received it.
PUBLISH_REPORT_TIMEOUT = 2.0
# Seconds a send or conn.call waits for the client's node to answer.
REPLY_TIMEOUT = 5.0
_CHANNEL_PREFIX = channel_topic("").encode()


class _Tally:
    """The reports of one publish: counted as they come; done once as many
    arrived as PUBLISH said nodes got the message."""

    __slots__ = ("delivered", "failed", "reports", "expected", "done")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.delivered = self.failed = self.reports = 0
        self.expected: int | None = None
        self.done = done

    def add(self, delivered: int, failed: int) -> None:
        self.delivered += delivered
        self.failed += failed
        self.reports += 1
        self._check()

    def expect(self, receivers: int) -> None:
        self.expected = receivers
        self._check()

    def _check(self) -> None:
        if self.expected is not None and self.reports >= self.expected and not self.done.done():
            self.done.set_result(None)


class RedisBroker:
    def __init__(self, hub: Hub, transport: PubSubTransport, display: str) -> None:
        self.hub = hub
        self.transport = transport
        self.display = display  # the broker's URL without its password
        self.mesh: Mesh | None = None  # set by the Mesh's owner: conn.calls run through it
        self.node_id = 0
        self.up = False
        self.down_reason = "not started"
        self._requests = itertools.count(1)
        self._tallies: dict[int, _Tally] = {}
        self._replies: dict[int, asyncio.Future[bool]] = {}
        self._answers: set[asyncio.Task] = set()
        self._inbox = b""
        transport.on_message = self._on_message
        transport.on_state = self._on_state

    def listen(self, node_id: int) -> None:
        """This node's id is known: want its inbox (the transport subscribes
        to it when it starts, before it says it is up)."""
        self.node_id = node_id
        inbox = node_inbox(node_id)
        self._inbox = inbox.encode()
        self.transport.subscribe([inbox])
        self.up, self.down_reason = True, ""

    # -- the Broker protocol ------------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        self.transport.subscribe([channel_topic(channel)])

    def unsubscribe(self, channel: str) -> None:
        self.transport.unsubscribe([channel_topic(channel)])

    async def publish(self, channel: str, data: bytes, binary: bool) -> tuple[int, int]:
        delivered, failed = self.hub.publish(channel, data, binary)
        if not self.up:
            return delivered, failed  # at most once: other nodes miss it (README, Running a grid)
        request = next(self._requests)
        tally = self._tallies[request] = _Tally(asyncio.get_running_loop().create_future())
        try:
            tally.expect(await self.transport.publish(channel_topic(channel),
                                                      wire.publish(self.node_id, request, data, binary)))
            async with asyncio.timeout(PUBLISH_REPORT_TIMEOUT):
                await tally.done
        except BrokerDown:
            pass  # the outage is logged once by _on_state
        except TimeoutError:
            log.warning("publish on %s: %d of %d nodes reported within %gs; s/f count only those",
                        channel, tally.reports, tally.expected, PUBLISH_REPORT_TIMEOUT)
        finally:
            del self._tallies[request]
        return delivered + tally.delivered, failed + tally.failed

    async def send(self, client_id: str, data: bytes, binary: bool) -> bool:
        return await self._ask(client_id, lambda request: wire.send(self.node_id, request, client_id, data, binary))

    async def call(self, client_id: str, name: str, argument: Any) -> bool:
        return await self._ask(client_id, lambda request: wire.call(self.node_id, request, client_id, name, argument))

    def _remote_node(self, client_id: str) -> int | None:
        """The other node holding client_id; None when it would be this one (the
        Mesh found no such client here) or when the grid cannot be asked."""
        node = node_of(client_id)
        return node if node is not None and node != self.node_id and self.up else None

    async def _ask(self, client_id: str, envelope: Callable[[int], bytes]) -> bool:
        """Put ``envelope(request id)`` in the inbox of the node holding client_id
        and wait for its answer: did the client take it?"""
        node = self._remote_node(client_id)
        if node is None:
            return False
        request = next(self._requests)
        answer = self._replies[request] = asyncio.get_running_loop().create_future()
        try:
            if await self.transport.publish(node_inbox(node), envelope(request)) == 0:
                return False  # no such node (any more): no waiting for a timeout
            async with asyncio.timeout(REPLY_TIMEOUT):
                return await answer
        except BrokerDown:
            return False
        except TimeoutError:
            log.warning("node %d did not answer within %gs", node, REPLY_TIMEOUT)
            return False
        finally:
            self._replies.pop(request, None)

    # -- what arrives from the broker ------------------------------------------------------

    def _on_message(self, topic: bytes, data: bytes) -> None:
        try:
            envelope = wire.decode(data)
            if topic == self._inbox:
                self._on_inbox(envelope)
            elif topic.startswith(_CHANNEL_PREFIX) and envelope.kind == wire.PUBLISH:
                self._on_publish(topic[len(_CHANNEL_PREFIX):].decode(), envelope)
            else:
                raise wire.WireError(f"a {wire.KIND_NAMES[envelope.kind]} envelope does not belong there")
        except (wire.WireError, UnicodeDecodeError) as exc:
            log.warning("broker: dropped a message on %s: %s", topic.decode(errors="replace"), exc)

    def _on_publish(self, channel: str, envelope: wire.Envelope) -> None:
        if envelope.origin == self.node_id:
            counts = (0, 0)  # delivered before it was published
        else:
            try:
                counts = self.hub.publish(channel, envelope.payload, envelope.binary)
            except PayloadError as exc:  # this node's limits are not the publisher's
                log.warning("publish from node %d on %s not delivered here: %s", envelope.origin, channel, exc)
                counts = (0, 0)
        if envelope.origin == self.node_id:
            self._count(envelope.request, *counts)
        else:
            self._answer(envelope.origin, wire.report(self.node_id, envelope.request, *counts))

    def _on_inbox(self, envelope: wire.Envelope) -> None:
        kind = envelope.kind
        if kind == wire.REPORT:
            self._count(envelope.request, envelope.delivered, envelope.failed)
        elif kind == wire.RESULT:
            answer = self._replies.get(envelope.request)
            if answer is not None and not answer.done():
                answer.set_result(envelope.ok)
        elif kind == wire.SEND:
            conn = self.hub.get(envelope.client_id)
            sent = conn is not None and conn.send(envelope.payload, envelope.binary)
            self._answer(envelope.origin, wire.result(self.node_id, envelope.request, sent))
        elif kind == wire.CALL:
            self._answer(envelope.origin, wire.result(self.node_id, envelope.request, self._run_call(envelope)))
        else:
            raise wire.WireError(f"a {wire.KIND_NAMES[kind]} envelope does not belong in a node's inbox")

    def _run_call(self, envelope: wire.Envelope) -> bool:
        from ..mesh import CALLS  # mesh imports nothing of the grid; the import is one-way at run time
        function = CALLS.get(envelope.name)
        if function is None:
            raise wire.WireError(f"unknown conn.call function {envelope.name!r}")
        conn = self.hub.get(envelope.client_id)
        if conn is None or conn.closing or self.mesh is None:
            return False
        function(self.mesh, conn, envelope.argument)
        return True

    def _count(self, request: int, delivered: int, failed: int) -> None:
        tally = self._tallies.get(request)
        if tally is not None:  # else: a report after the publish stopped waiting
            tally.add(delivered, failed)

    def _answer(self, node: int, envelope: bytes) -> None:
        task = asyncio.create_task(self._publish_quietly(node_inbox(node), envelope))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _publish_quietly(self, topic: str, envelope: bytes) -> None:
        try:
            await self.transport.publish(topic, envelope)
        except BrokerDown:
            pass  # the asking node stops waiting at its timeout

    # -- the broker's state -----------------------------------------------------------------

    def _on_state(self, up: bool, why: str) -> None:
        self.up, self.down_reason = up, why
        if up:
            log.warning("broker %s is back: grid delivery resumes", self.display)
            return
        log.error("broker %s is down (%s): serving this node's connections only, reconnecting",
                  self.display, why)
        # Nothing more will come for what is waiting: finish it now.
        for tally in self._tallies.values():
            if not tally.done.done():
                tally.done.set_result(None)
        for answer in self._replies.values():
            if not answer.done():
                answer.set_result(False)

    async def close(self) -> None:
        self.up, self.down_reason = False, "stopped"
        await self.transport.close()
        for task in list(self._answers):
            task.cancel()
