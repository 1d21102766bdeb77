"""The pgoutput decoder, sans I/O: ``Decoder.feed`` turns parsed messages into the stream's items
(``Change``, and ``Published`` or ``HistoryNote`` for rtgw's own logical decoding messages), with
row values converted by type (``TypeRegistry``)."""

from __future__ import annotations

from typing import Final

from gateway.changes import Change, ChangeId, Column, HistoryNote, Item, Op, Published, Row
from gateway.sources.postgres.messages import (
    HISTORY_PREFIX,
    PUBLISH_PREFIX,
    UNCHANGED,
    Begin,
    Commit,
    DecodeError,
    DeleteMessage,
    InsertMessage,
    LogicalMessage,
    Message,
    Relation,
    TruncateMessage,
    TupleData,
    TupleValue,
    TypeMessage,
    UpdateMessage,
    insert_text_row,
    parse_message,
    relation_oid,
)
from gateway.sources.postgres.types import TypeRegistry

_INSERT: Final = Op.INSERT  # read once: an enum member off its class costs about 80 ns in 3.11
_MESSAGE_KINDS: Final[dict[str, type[Published] | type[HistoryNote]]] = {
    PUBLISH_PREFIX: Published,
    HISTORY_PREFIX: HistoryNote,
}


class _Plan:
    """What the decoder needs per relation, built once per Relation message."""

    __slots__ = ("columns", "converters", "keys", "names", "relation")

    def __init__(self, relation: Relation, types: TypeRegistry) -> None:
        self.relation = relation
        self.names = tuple(column.name for column in relation.columns)
        self.converters = tuple(types.converter(column.type_oid) for column in relation.columns)
        self.keys = tuple(column.is_key for column in relation.columns)
        self.columns = tuple(
            Column(column.name, types.name(column.type_oid)) for column in relation.columns
        )

    def row(
        self,
        data: TupleData,
        *,
        keys_only: bool = False,
        old: Row | None = None,
        unchanged: list[str] | None = None,
    ) -> Row:
        values = data.values
        if len(values) != len(self.names):
            raise DecodeError(
                f"tuple has {len(values)} columns, relation {self.relation.schema}."
                f"{self.relation.table} has {len(self.names)}"
            )
        if data.plain and not keys_only:
            try:
                return {
                    # plain: every value is str or None
                    name: None if value is None else convert(value)  # type: ignore[arg-type]
                    for name, convert, value in zip(
                        self.names, self.converters, values, strict=True
                    )
                }
            except Exception:
                pass  # the careful path below converts value by value
        return self._row_careful(values, keys_only, old, unchanged)

    def _row_careful(
        self,
        values: tuple[TupleValue, ...],
        keys_only: bool,
        old: Row | None,
        unchanged: list[str] | None,
    ) -> Row:
        row: Row = {}
        for name, convert, is_key, value in zip(
            self.names, self.converters, self.keys, values, strict=True
        ):
            if keys_only and not is_key:
                continue
            if value is None:
                row[name] = None
            elif value is UNCHANGED:
                if old is not None and name in old:
                    row[name] = old[name]
                elif unchanged is not None:
                    unchanged.append(name)
            elif isinstance(value, bytes):
                row[name] = "\\x" + value.hex()
            else:
                try:
                    row[name] = convert(value)
                except Exception:
                    # A value the converter cannot read (unexpected output format): pass the
                    # text through rather than stall the stream on it forever.
                    row[name] = value
        return row


class Decoder:
    """Turns parsed messages into Changes. Holds relations and the current transaction."""

    __slots__ = ("_commit_time_us", "_lsn", "_plans", "_seq", "_transaction", "types")

    def __init__(self, types: TypeRegistry) -> None:
        self.types = types
        self._plans: dict[int, _Plan] = {}
        self._transaction: Begin | None = None
        self._lsn = 0
        self._commit_time_us = 0
        self._seq = 0

    @property
    def in_transaction(self) -> bool:
        return self._transaction is not None

    def relation(self, oid: int) -> Relation | None:
        plan = self._plans.get(oid)
        return plan.relation if plan is not None else None

    def missing_types(self, relation: Relation) -> list[int]:
        """Oids used by ``relation`` that the registry does not know (refresh, then feed)."""
        return self.types.missing(column.type_oid for column in relation.columns)

    def feed(self, message: Message | None) -> list[Item]:
        # Begin and Commit first: every transaction has both, and most Inserts come through
        # ``insert`` instead.
        if isinstance(message, Begin):
            self._transaction = message
            self._lsn = message.final_lsn
            self._commit_time_us = message.commit_time_us
            self._seq = 0
            return []
        if isinstance(message, Commit):
            self._transaction = None
            return []
        if isinstance(message, InsertMessage):
            plan = self._plan(message.relation_oid)
            return [self._change(plan, _INSERT, plan.row(message.new), None, ())]
        if isinstance(message, UpdateMessage):
            return [self._update(message)]
        if isinstance(message, DeleteMessage):
            plan = self._plan(message.relation_oid)
            old = plan.row(message.old, keys_only=message.old_is_key)
            return [self._change(plan, Op.DELETE, None, old, ())]
        if isinstance(message, Relation):
            self._plans[message.oid] = _Plan(message, self.types)
            return []
        if isinstance(message, TruncateMessage):
            plans = [self._plan(oid) for oid in message.relation_oids]
            return [self._change(plan, Op.TRUNCATE, None, None, ()) for plan in plans]
        if isinstance(message, LogicalMessage):
            return self._published(message)
        if isinstance(message, TypeMessage) or message is None:
            return []
        raise TypeError(f"not a pgoutput message: {message!r}")

    def insert(self, payload: bytes) -> list[Item]:
        """An Insert payload ('I') decoded: what ``feed(parse_message(payload))`` returns,
        without building the message in between (the notification workload's one change)."""
        plan = self._plans.get(relation_oid(payload))
        row = None if plan is None else insert_text_row(payload, plan.names, plan.converters)
        if plan is None or row is None:  # and errors: the careful path says what is wrong
            return self.feed(parse_message(payload))
        return [self._change(plan, _INSERT, row, None, ())]

    def _published(self, message: LogicalMessage) -> list[Item]:
        """A transactional message with rtgw's prefixes is a published event or a history note;
        others (other applications' messages, non-transactional ones) are skipped."""
        kind = _MESSAGE_KINDS.get(message.prefix)
        if not message.transactional or kind is None:
            return []
        if self._transaction is None:
            raise DecodeError("transactional message outside a transaction (no Begin)")
        seq = self._seq
        self._seq = seq + 1
        return [kind(ChangeId(self._lsn, seq), self._commit_time_us, message.content)]

    def _plan(self, oid: int) -> _Plan:
        try:
            return self._plans[oid]
        except KeyError:
            raise DecodeError(f"change for relation {oid} before its Relation message") from None

    def _update(self, message: UpdateMessage) -> Change:
        plan = self._plan(message.relation_oid)
        old = None
        if message.old is not None:
            old = plan.row(message.old, keys_only=message.old_is_key)
        if message.new.plain:
            return self._change(plan, Op.UPDATE, plan.row(message.new), old, ())
        unchanged: list[str] = []
        new = plan.row(message.new, old=old, unchanged=unchanged)
        return self._change(plan, Op.UPDATE, new, old, tuple(unchanged))

    def _change(
        self,
        plan: _Plan,
        op: Op,
        new: Row | None,
        old: Row | None,
        unchanged: tuple[str, ...],
    ) -> Change:
        if self._transaction is None:
            raise DecodeError(f"{op} change outside a transaction (no Begin)")
        seq = self._seq
        self._seq = seq + 1
        relation = plan.relation
        return Change(
            ChangeId(self._lsn, seq),
            relation.schema,
            relation.table,
            op,
            self._commit_time_us,
            plan.columns,
            new,
            old,
            unchanged,
        )
