"""The frames the server sends (connmix_py.frames): websocket_wire's short
text frames come from a table of headers; they must be the frames
encode_frame builds, at every length around the 7-bit boundary."""
from __future__ import annotations

import pytest

from connmix_py.conn import PayloadError
from connmix_py.frames import OP_BINARY, OP_TEXT, encode_frame, websocket_wire


@pytest.mark.parametrize("size", [0, 1, 52, 124, 125, 126, 127, 65535, 65536])
def test_websocket_wire_text_is_one_final_text_frame(size):
    payload = b"a" * size
    wire = websocket_wire(payload)
    assert wire == encode_frame(payload, OP_TEXT)
    assert wire[0] == 0x81 and wire.endswith(payload)
    assert wire[1] == (size if size < 126 else 126 if size < 65536 else 127)


def test_websocket_wire_takes_utf8_text_and_refuses_other_bytes():
    text = "é€😀".encode()
    assert websocket_wire(text) == bytes((0x81, len(text))) + text
    with pytest.raises(PayloadError, match="not valid UTF-8"):
        websocket_wire(b"ok\xff")
    with pytest.raises(PayloadError):
        websocket_wire("\ud800".encode("utf-8", "surrogatepass"))  # a surrogate is not UTF-8


def test_websocket_wire_binary_is_sent_as_given():
    assert websocket_wire(b"\xff\x00", True) == encode_frame(b"\xff\x00", OP_BINARY) == b"\x82\x02\xff\x00"
