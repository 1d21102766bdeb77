"""Publications as bytes, for a bus that crosses processes: the one place that knows their
fields (a field added to ``Publication`` is added here, once).

A change travels whole (its row values are JSON-ready already) with the channel it is shown
in, by name: every node loads the same ``channels/*.toml``, so the receiving node rebuilds the
same ``ChannelPayload`` and encodes it with its own codecs. Published messages travel as their
JSON body."""

from __future__ import annotations

import logging
from typing import Any

from gateway.bus.base import Publication, Target
from gateway.changes import Change, ChangeId, Column, Op, RoleChange
from gateway.channels import ChannelSet
from gateway.encoding import dumps, loads, raw_json
from gateway.enrich import Enriched
from gateway.events import Payload
from gateway.publish import MessagePayload
from gateway.router import UNENRICHED, ChannelPayload, Shape

log = logging.getLogger("rtgw.bus")


def encode(publication: Publication) -> bytes:
    data: dict[str, Any] = {
        "p": publication.position,
        "t": publication.committed_at,
        "g": [_target(target) for target in publication.targets],
    }
    if publication.note is not None:
        data["n"] = publication.note.decode()
    if publication.receipt is not None:
        data["r"] = publication.receipt
    if publication.roles:
        data["ro"] = [[change.user, change.role, change.granted] for change in publication.roles]
    return dumps(data)


def decode(data: bytes, channels: ChannelSet) -> Publication:
    """Raises ``ValueError`` (or ``KeyError``/``TypeError``) on bytes that ``encode`` did not
    make. A target of a channel this node does not define is left out (logged)."""
    raw = loads(data)
    targets = []
    for target in raw["g"]:
        payload = _payload(target, channels)
        if payload is not None:
            targets.append(Target(target["ch"], target.get("b"), payload))
    note = raw.get("n")
    roles = tuple(
        RoleChange(user, role, bool(granted)) for user, role, granted in raw.get("ro", ())
    )
    return Publication(
        int(raw["p"]), float(raw["t"]), tuple(targets),
        note=None if note is None else note.encode(), receipt=raw.get("r"), roles=roles,
    )


def _target(target: Target) -> dict[str, Any]:
    payload = target.payload
    data: dict[str, Any] = {"ch": target.channel, "b": target.base}
    if isinstance(payload, MessagePayload):
        data["m"] = raw_json(payload.body.decode())
        return data
    assert isinstance(payload, ChannelPayload), payload
    change = payload.change
    data["c"] = {
        "l": change.id.lsn, "q": change.id.seq, "s": change.schema, "t": change.table,
        "o": change.op.value, "u": change.commit_time_us,
        "k": [[column.name, column.type] for column in change.columns],
        "n": change.new, "d": change.old, "x": list(change.unchanged),
    }
    if payload.shape is not Shape.CHANGE:
        data["sh"] = payload.shape.value
    enriched = payload.enriched
    if enriched is not UNENRICHED:
        data["e"] = [enriched.new, enriched.old, list(enriched.failed)]
    return data


def _payload(data: dict[str, Any], channels: ChannelSet) -> Payload | None:
    if "m" in data:
        return MessagePayload(dumps(data["m"]))
    channel = channels.by_name.get(data["ch"])
    if channel is None:
        log.warning("skipped an event of channel %r, which this gateway does not define",
                    data["ch"])
        return None
    raw = data["c"]
    change = Change(
        ChangeId(raw["l"], raw["q"]), raw["s"], raw["t"], Op(raw["o"]), raw["u"],
        tuple(Column(name, kind) for name, kind in raw["k"]),
        raw["n"], raw["d"], tuple(raw["x"]),
    )
    enriched = UNENRICHED
    if "e" in data:
        new, old, failed = data["e"]
        enriched = Enriched(new, old, tuple(failed))
    return ChannelPayload(change, channel, Shape(data.get("sh", "change")), enriched)
