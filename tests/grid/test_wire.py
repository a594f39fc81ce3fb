"""The envelopes nodes exchange: every kind survives the trip, and anything
malformed is a WireError (one line in the receiving node's log), never
another exception."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connmix_py.grid import wire


def test_publish_carries_any_bytes_and_the_frame_type():
    payload = bytes(range(256)) * 3
    envelope = wire.decode(wire.publish(1023, 2**64 - 1, payload, True))
    assert (envelope.kind, envelope.origin, envelope.request) == (wire.PUBLISH, 1023, 2**64 - 1)
    assert (envelope.payload, envelope.binary) == (payload, True)
    assert wire.decode(wire.publish(1, 1, b"", False)).binary is False


def test_report_send_and_result():
    report = wire.decode(wire.report(2, 7, 10_000, 3))
    assert (report.kind, report.delivered, report.failed) == (wire.REPORT, 10_000, 3)
    send = wire.decode(wire.send(3, 8, "1234567890123456789", b"\x00\xffhi", False))
    assert (send.kind, send.client_id, send.payload, send.binary) == (wire.SEND, "1234567890123456789",
                                                                      b"\x00\xffhi", False)
    assert wire.decode(wire.result(4, 9, True)).ok is True
    assert wire.decode(wire.result(4, 9, False)).ok is False


def test_calls_keep_context_strings_as_bytes_and_channels_as_str():
    subscribe = wire.decode(wire.call(1, 1, "42", "subscribe", ["a", "b"]))
    assert (subscribe.name, subscribe.client_id, subscribe.argument) == ("subscribe", "42", ["a", "b"])
    context = wire.decode(wire.call(1, 2, "42", "set_context", {"uid": b"1001", "n": 3, "l": [b"x", None]}))
    assert context.argument == {"uid": b"1001", "n": 3, "l": [b"x", None]}
    value = wire.decode(wire.call(1, 3, "42", "set_context_value", ("uid", b"\xe4\xb8\xad")))
    assert value.argument == ("uid", b"\xe4\xb8\xad")


@pytest.mark.parametrize("data, why", [
    (b"", "shorter than its header"),
    (b"\x02\x01" + b"\x00" * 10, "version 2"),
    (b"\x01\x09" + b"\x00" * 10, "unknown envelope kind 9"),
    (wire.report(1, 1, 1, 1)[:-1], "malformed report"),
    (wire.send(1, 1, "123", b"x", False)[:12] + b"\x00\x09123", "cut short"),
    (wire.call(1, 1, "1", "set_context_value", ("k", b"v"))[:-3], "malformed call"),
    (wire.call(1, 1, "1", "set_context_value", [1, 2]), "malformed call"),
    (wire.result(1, 1, True) + b"\x00", "one byte"),
])
def test_malformed_envelopes_are_one_line_errors(data, why):
    with pytest.raises(wire.WireError, match=why) as error:
        wire.decode(data)
    assert "\n" not in str(error.value)


@given(st.binary(max_size=64))
def test_no_bytes_raise_anything_but_wire_error(data):
    try:
        wire.decode(data)
    except wire.WireError:
        pass


@given(st.sampled_from([wire.PUBLISH, wire.REPORT, wire.SEND, wire.CALL, wire.RESULT]), st.binary(max_size=40))
def test_no_body_of_a_known_kind_raises_anything_but_wire_error(kind, body):
    try:
        wire.decode(bytes((wire.VERSION, kind)) + b"\x00" * 10 + body)
    except wire.WireError:
        pass
