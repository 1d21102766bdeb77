"""A raw Phoenix (Supabase Realtime protocol) test client for either vsn, over a real socket."""

from __future__ import annotations

import asyncio
from typing import Any

import websockets

from gateway.encoding import dumps_text, loads
from tests.conftest import silent_for


class Phx:
    """A raw Phoenix client for either vsn; frames are handled as (join_ref, ref, topic,
    event, payload) tuples whatever the serialization."""

    def __init__(self, socket: websockets.ClientConnection, vsn: str) -> None:
        self.socket, self.vsn, self._ref = socket, vsn, 0

    async def push(self, topic: str, event: str, payload: Any, join_ref: str | None = None) -> str:
        self._ref += 1
        ref = str(self._ref)
        if self.vsn == "2.0.0":
            await self.socket.send(dumps_text([join_ref, ref, topic, event, payload]))
        else:
            frame = {"topic": topic, "event": event, "payload": payload, "ref": ref,
                     "join_ref": join_ref}
            await self.socket.send(dumps_text(frame))
        return ref

    async def recv(self, wait_s: float = 10.0) -> tuple[Any, Any, str, str, Any]:
        frame = loads(await asyncio.wait_for(self.socket.recv(), wait_s))
        if self.vsn == "2.0.0":
            assert isinstance(frame, list) and len(frame) == 5
            return frame[0], frame[1], frame[2], frame[3], frame[4]
        assert isinstance(frame, dict) and "join_ref" not in frame
        assert set(frame) == {"topic", "event", "payload", "ref"}
        return None, frame["ref"], frame["topic"], frame["event"], frame["payload"]

    async def until(self, event: str, wait_s: float = 10.0) -> tuple[Any, Any, str, str, Any]:
        while True:
            frame = await self.recv(wait_s)
            if frame[3] == event:
                return frame

    async def join(
        self, topic: str, bindings: list[dict[str, Any]], jwt: str | None, **config: Any
    ) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {"config": {"postgres_changes": bindings, **config}}
        if jwt is not None:
            payload["access_token"] = jwt
        ref = await self.push(topic, "phx_join", payload, join_ref="j" + topic)
        _, reply_ref, reply_topic, event, body = await self.until("phx_reply")
        assert (reply_ref, reply_topic) == (ref, topic)
        return ref, body

    async def silent_for(self, seconds: float) -> bool:
        return await silent_for(self.socket, seconds)
