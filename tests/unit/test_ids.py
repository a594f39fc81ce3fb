"""Client ids: time-based, node-tagged decimal strings that never repeat,
within a process (clock steps back, bursts) and across restarts."""
from __future__ import annotations

import time

import pytest

from connmix_py.ids import EPOCH_MS, MAX_SEQUENCE, ClientIds, node_of

TIMESTAMP_SHIFT = 22  # 10 node bits + 12 sequence bits


class StoppableClock:
    """A millisecond clock that ticks once per reading until stopped, then
    shows whatever the test sets. It stands in for the OS clock only."""

    def __init__(self, ms: int = 1_000_000) -> None:
        self.ms = ms
        self.ticking = True

    def __call__(self) -> int:
        if self.ticking:
            self.ms += 1
        return self.ms


def stopped_ids(node: int, clock: StoppableClock) -> ClientIds:
    ids = ClientIds(node, clock)
    clock.ticking = False
    return ids


def timestamp_of(client_id: str) -> int:
    return int(client_id) >> TIMESTAMP_SHIFT


def test_ids_are_decimal_strings_in_a_signed_64_bit_integer():
    ids = ClientIds(5)
    client_id = ids.next()
    assert isinstance(client_id, str) and client_id.isdigit() and str(int(client_id)) == client_id
    assert 0 < int(client_id) < 2 ** 63


def test_ids_carry_the_time_they_were_issued():
    before = time.time_ns() // 1_000_000
    client_id = ClientIds(1).next()
    after = time.time_ns() // 1_000_000
    assert before <= timestamp_of(client_id) + EPOCH_MS <= after + 1


@pytest.mark.parametrize("node", [0, 1, 2, 77, 1023])
def test_node_of_returns_the_node(node):
    ids = ClientIds(node)
    assert all(node_of(ids.next()) == node for _ in range(5000))


@pytest.mark.parametrize("text", ["", "abc", "12a", "-5", " 12", "１２", "٣", "9" * 19, "1" * 5000])
def test_node_of_anything_else_is_none(text):
    assert node_of(text) is None


@pytest.mark.parametrize("node", [-1, 1024, 1.0, True, "1"])
def test_a_node_id_outside_10_bits_is_refused(node):
    with pytest.raises(ValueError, match="node id"):
        ClientIds(node)


def test_many_ids_in_one_millisecond_borrow_the_next_ones():
    clock = StoppableClock()
    ids = stopped_ids(3, clock)
    issued = [ids.next() for _ in range(3 * (MAX_SEQUENCE + 1) + 5)]
    assert len(set(issued)) == len(issued)
    assert [int(i) for i in issued] == sorted(int(i) for i in issued)
    assert timestamp_of(issued[-1]) == clock.ms + 3  # ran 3 ms ahead of the clock
    assert {node_of(i) for i in issued} == {3}
    clock.ms += 10  # the clock overtakes the borrowed time: ids follow it again
    assert timestamp_of(ids.next()) == clock.ms


def test_a_clock_stepping_back_never_repeats_an_id():
    clock = StoppableClock()
    ids = stopped_ids(1, clock)
    clock.ms += 5
    issued = [ids.next() for _ in range(100)]
    clock.ms -= 10_000  # e.g. NTP steps the clock back 10 s
    issued += [ids.next() for _ in range(100)]
    clock.ms += 3_000
    issued += [ids.next() for _ in range(100)]
    assert len(set(issued)) == len(issued)
    assert [int(i) for i in issued] == sorted(int(i) for i in issued)


def test_a_restart_in_the_same_millisecond_continues_after_the_old_ids():
    """The old process issues ids in the millisecond the new one starts in:
    the new one begins in the next millisecond."""
    clock = StoppableClock()
    old = stopped_ids(1, clock)
    old_ids = [old.next() for _ in range(50)]  # "kill -9" right after these
    clock.ticking = True
    new = stopped_ids(1, clock)
    new_ids = [new.next() for _ in range(50)]
    assert min(int(i) for i in new_ids) > max(int(i) for i in old_ids)


def test_a_restart_on_the_real_clock_continues_after_the_old_ids():
    # Start right after a millisecond boundary so the old ids and the new
    # instance share a millisecond (a real restart takes far longer).
    start = time.time_ns() // 1_000_000
    while time.time_ns() // 1_000_000 == start:
        pass
    old = ClientIds(9)
    old_ids = [old.next() for _ in range(20)]
    new_ids = [ClientIds(9).next() for _ in range(20)]  # twenty restarts in a row
    assert len(set(old_ids + new_ids)) == 40
    assert min(int(i) for i in new_ids) > max(int(i) for i in old_ids)


def test_different_nodes_never_share_an_id():
    clock = StoppableClock()
    first, second = ClientIds(1, clock), ClientIds(2, clock)
    clock.ticking = False
    issued = [ids.next() for _ in range(5000) for ids in (first, second)]
    assert len(set(issued)) == len(issued)
