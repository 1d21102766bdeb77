"""Postgres logical replication as a source: types and the pgoutput decoder (sans I/O), the libpq
stream, provisioning (publication, slot, replica identity), the source and its lag sampler."""

from __future__ import annotations

from gateway.sources.postgres.source import PostgresSource, PostgresSourceConfig

__all__ = ["PostgresSource", "PostgresSourceConfig"]
