"""connmix_py.queue without sockets: a consumer here is a list that can be
told to refuse (like a websocket consumer with a full send buffer)."""
from __future__ import annotations

import pytest

from connmix_py.queue import QueueFull, QueueItem, Queues


class ListConsumer:
    def __init__(self) -> None:
        self.topics: set[str] = set()
        self.got: list[tuple[str, object]] = []
        self.can_take = True

    def ready(self) -> bool:
        return self.can_take

    def deliver(self, topic: str, item: QueueItem) -> None:
        assert self.can_take, "delivered to a consumer that was not ready"
        self.got.append((topic, item.data))


def data(consumer: ListConsumer) -> list:
    return [d for _, d in consumer.got]


def test_round_robin_one_consumer_per_item():
    queues = Queues(10, 10)
    a, b, c = ListConsumer(), ListConsumer(), ListConsumer()
    for consumer in (a, b, c):
        queues.attach(consumer, ["t"])
    for i in range(7):
        assert queues.push("t", i, "cid") == 0
    assert (data(a), data(b), data(c)) == ([0, 3, 6], [1, 4], [2, 5])


def test_items_wait_in_order_and_go_out_on_attach():
    queues = Queues(10, 10)
    assert [queues.push("t", i) for i in range(3)] == [1, 2, 3]
    consumer = ListConsumer()
    queues.attach(consumer, ["t", "other"])
    assert data(consumer) == [0, 1, 2] and queues.size("t") == 0 and "t" not in queues.topics


def test_a_consumer_that_is_not_ready_is_skipped_then_resumed():
    queues = Queues(10, 10)
    busy, free = ListConsumer(), ListConsumer()
    queues.attach(busy, ["t"])
    queues.attach(free, ["t"])
    busy.can_take = False
    for i in range(4):
        queues.push("t", i)
    assert (data(busy), data(free)) == ([], [0, 1, 2, 3])
    free.can_take = False
    assert queues.push("t", 4) == 1 and queues.push("t", 5) == 2  # nobody ready: they wait
    busy.can_take = True
    queues.resume(busy)
    assert data(busy) == [4, 5] and queues.size("t") == 0


def test_detach_keeps_the_items_for_the_next_consumer():
    queues = Queues(10, 10)
    leaving = ListConsumer()
    queues.attach(leaving, ["t"])
    leaving.can_take = False
    queues.push("t", "kept")
    queues.detach(leaving)
    assert leaving.topics == set() and "t" not in queues.consumers and queues.size("t") == 1
    queues.push("t", "also kept")
    later = ListConsumer()
    queues.attach(later, ["t"])
    assert data(later) == ["kept", "also kept"]


def test_detach_hands_waiting_items_to_a_consumer_that_can_take_them():
    queues = Queues(10, 10)
    first, second = ListConsumer(), ListConsumer()
    queues.attach(first, ["t"])
    first.can_take = False
    queues.push("t", 1)
    queues.attach(second, ["t"])
    assert data(second) == [1]


def test_bounds_count_only_waiting_items():
    queues = Queues(2, 1)
    queues.push("a", 1)
    queues.push("a", 2)
    with pytest.raises(QueueFull, match="topicSize"):
        queues.push("a", 3)
    with pytest.raises(QueueFull, match="maxTopics"):
        queues.push("b", 1)
    consumer = ListConsumer()
    queues.attach(consumer, ["a", "b"])
    for i in range(10):  # straight through to a ready consumer: no bound applies
        queues.push("b", i)
    assert data(consumer) == [1, 2] + list(range(10))


def test_pop_takes_the_oldest_data():
    queues = Queues(5, 5)
    queues.push("t", "one", "1")
    queues.push("t", {"k": 2}, "2")
    assert [queues.pop("t"), queues.pop("t")] == ["one", {"k": 2}]
    with pytest.raises(IndexError):
        queues.pop("t")
