"""Which changes trigger a channel's tasks (gateway.router), and how a task becomes an RQ job
(gateway.tasks.jobs): its id, its retry delays, its webhook body."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gateway.bus.memory import MemoryBus
from gateway.changes import Change, ChangeId, Column, Item, Op
from gateway.channels import load_channels
from gateway.encoding import loads
from gateway.router import Router, Work
from gateway.tasks.jobs import jittered, job_id, webhook_body
from gateway.tasks.queue import CHUNK, chunks

CHANNELS = '''
[channels.orders]
table = "public.orders"
columns = ["id", "status"]

[channels.orders.tasks.receipt]
operations = ["INSERT", "UPDATE"]
filter = "status=eq.paid"
job = "myapp.jobs:send_receipt"

[channels.orders.tasks.gone]
operations = ["DELETE"]
filter = "status=eq.paid"
webhook = "https://partner.example/hooks"

[channels.orders.tasks.wiped]
operations = ["TRUNCATE"]
webhook = "https://partner.example/wiped"
'''
COLUMNS = (Column("id", "int8"), Column("status", "text"), Column("secret", "text"))


def change(op: Op, seq: int, status: str | None) -> Change:
    row = None if status is None else {"id": seq, "status": status, "secret": "s"}
    return Change(
        ChangeId(0x1000, seq), "public", "orders", op, 1_700_000_000_000_000, COLUMNS,
        new=row if op in (Op.INSERT, Op.UPDATE) else None,
        old=row if op is Op.DELETE else None,
    )


def route(tmp_path: Path, items: Sequence[Item]) -> list[Work]:
    (tmp_path / "orders.toml").write_text(CHANNELS, encoding="utf-8")
    router = Router(load_channels(tmp_path), MemoryBus())
    work: list[Work] = []
    for item in items:
        router.route(item, work)
    return work


def test_operations_and_filters_pick_the_tasks(tmp_path: Path) -> None:
    work = route(tmp_path, [
        change(Op.INSERT, 1, "pending"),  # nothing: not paid
        change(Op.INSERT, 2, "paid"),  # receipt
        change(Op.UPDATE, 3, "paid"),  # receipt
        change(Op.DELETE, 4, "paid"),  # gone (the old row passes)
        change(Op.DELETE, 5, "pending"),  # nothing
        change(Op.TRUNCATE, 6, None),  # wiped
    ])
    assert [(w.task.name, w.payload.change.id.seq) for w in work] == [
        ("orders.receipt", 2), ("orders.receipt", 3), ("orders.gone", 4), ("orders.wiped", 6),
    ]


def test_a_job_id_is_deterministic_and_per_task(tmp_path: Path) -> None:
    first = route(tmp_path, [change(Op.INSERT, 2, "paid")])
    again = route(tmp_path, [change(Op.INSERT, 2, "paid")])
    other = route(tmp_path, [change(Op.DELETE, 2, "paid")])
    assert job_id("q", first[0]) == job_id("q", again[0])
    assert job_id("q", first[0]).startswith("q-0000000000001000-000002-")
    assert job_id("q", first[0]) != job_id("q", other[0])  # another task, same change
    assert job_id("q", first[0]) != job_id("p", first[0])


def test_the_webhook_body_is_the_projected_change_in_a_standard_envelope(
    tmp_path: Path,
) -> None:
    [work] = route(tmp_path, [change(Op.DELETE, 4, "paid")])
    body = loads(webhook_body(work))
    assert body["type"] == "orders.delete"
    assert body["timestamp"] == "2023-11-14T22:13:20.000Z"
    data = body["data"]
    assert data["id"] == "0000000000001000:000004"  # the idempotency key (webhook-id)
    assert data["op"] == "DELETE" and data["new"] is None
    assert data["old"] == {"id": 4, "status": "paid"}  # the projection: no "secret"


def test_retry_delays_are_jittered_within_a_fifth() -> None:
    assert jittered([100, 0, 10], lambda: 0.0) == [80, 0, 8]
    assert jittered([100, 0, 10], lambda: 1.0) == [120, 0, 12]
    assert jittered([100], lambda: 0.5) == [100]


def test_large_batches_go_in_chunks_that_never_split_a_change(tmp_path: Path) -> None:
    one = route(tmp_path, [change(Op.INSERT, 2, "paid")])[0]
    two = route(tmp_path, [change(Op.DELETE, 2, "paid")])[0]  # another task, the same change
    later = route(tmp_path, [change(Op.INSERT, 3, "paid")])[0]
    batch = [one] * (CHUNK - 1) + [one, two] + [later] * 3
    found = list(chunks(batch))
    assert [len(chunk) for chunk in found] == [CHUNK + 1, 3]  # the change's tasks stay together
    assert [w for chunk in found for w in chunk] == batch
    assert list(chunks([])) == []
