"""Runs a PostgresSource in its own process (so a test can SIGKILL it) and appends one line per
delivered change, ``<change id> <row id>``, to a file before the sink returns.

Usage: python -m tests.integration.source_runner DSN SLOT PUBLICATION SCHEMA.TABLE OUTFILE
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from gateway.changes import Change
from gateway.sources.postgres import PostgresSource, PostgresSourceConfig


async def main(dsn: str, slot: str, publication: str, table: str, out: str) -> None:
    schema, _, name = table.partition(".")
    source = PostgresSource(
        PostgresSourceConfig(dsn=dsn, slot=slot, publication=publication, tables=((schema, name),))
    )
    fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def sink(batch: Sequence[Change]) -> None:
        lines = "".join(f"{c.id} {(c.new or {}).get('id')}\n" for c in batch)
        os.write(fd, lines.encode())  # in the kernel before we return: SIGKILL cannot lose it

    try:
        await source.run(sink)
    finally:
        os.close(fd)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
