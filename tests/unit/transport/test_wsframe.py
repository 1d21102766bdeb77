"""gateway.transport.wsframe: the frames match what the websockets library itself produces."""

from __future__ import annotations

import pytest
from websockets.frames import OP_TEXT, Frame
from websockets.streams import StreamReader

from gateway.transport.wsframe import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_text_frame_is_what_websockets_serializes(size: int) -> None:
    payload = ("é" * size).encode()[:size]
    ours = text_frame(payload)
    assert ours == Frame(OP_TEXT, payload).serialize(mask=False)
    reader = StreamReader()
    reader.feed_data(ours)
    parser = Frame.parse(reader.read_exact, mask=False)
    with pytest.raises(StopIteration) as parsed:
        next(parser)
    frame = parsed.value.value
    assert (frame.opcode, frame.fin, frame.data) == (OP_TEXT, True, payload)
