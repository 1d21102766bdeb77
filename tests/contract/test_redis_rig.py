"""The Redis the fault tests stand on behaves as they assume: a killed Redis started again on
its port answers at the same URL and holds nothing (it keeps nothing on disk)."""

from __future__ import annotations

import redis

from tests.redis_server import RedisServer


def test_shared_redis_answers(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_private_redis_restarts_empty(private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url)
    try:
        client.set("rtgw-rig-test", "kept until the crash")
        assert client.get("rtgw-rig-test") == b"kept until the crash"
        private_redis.kill()
        private_redis.start()
        assert client.get("rtgw-rig-test") is None
    finally:
        client.close()
