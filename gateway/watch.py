"""``rtgw watch``: a tiny native-protocol client that prints a channel's events."""

from __future__ import annotations

import sys

import websockets

from gateway.encoding import dumps_text, loads


async def watch(url: str, token: str, channel: str, row_filter: str | None) -> int:
    """Subscribe and print one line per server frame until interrupted or closed."""
    async with websockets.connect(url, max_size=None) as socket:
        await socket.send(dumps_text({"type": "auth", "token": token}))
        frame: dict[str, object] = {"type": "subscribe", "ref": "1", "channel": channel}
        if row_filter:
            frame["filter"] = row_filter
        await socket.send(dumps_text(frame))
        try:
            async for message in socket:
                event = loads(message)
                print(_describe(event), flush=True)
                if event.get("type") == "error" and event.get("ref") == "1":
                    return 1
        except websockets.ConnectionClosed as closed:
            print(f"closed: {closed.rcvd.code if closed.rcvd else 'no close frame'} "
                  f"{closed.rcvd.reason if closed.rcvd else ''}", file=sys.stderr)
            return 1
    return 0


def _describe(event: dict[str, object]) -> str:
    if event.get("type") != "event":
        return dumps_text(event)
    change = event["change"]
    assert isinstance(change, dict)
    row = change.get("new") if change.get("new") is not None else change.get("old")
    return f"#{event['offset']} {change['op']:<8} {change['table']}: {dumps_text(row)}"
