"""The seed's "Monitoring" queries: table row counts, index usage and the slowest statements."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg2

from .connection import Target, cursor_for
from .extensions import preloaded_libraries


@dataclass
class StatsReport:
    target: str
    tables: list[dict] = field(default_factory=list)
    indexes: list[dict] = field(default_factory=list)
    queries: list[dict] | None = None  # None: pg_stat_statements unusable, see notes
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def collect_stats(target: Target, top: int = 20) -> StatsReport:
    report = StatsReport(target.label)
    with cursor_for(target) as cur:
        cur.execute(
            "SELECT schemaname, relname, n_live_tup, n_dead_tup, seq_scan, coalesce(idx_scan, 0), "
            "       pg_total_relation_size(relid) "
            "  FROM pg_stat_user_tables ORDER BY schemaname, relname"
        )
        report.tables = [
            dict(zip(("schema", "table", "row_count", "dead_rows", "seq_scans", "index_scans", "total_bytes"), r))
            for r in cur.fetchall()
        ]
        cur.execute(
            "SELECT schemaname, relname, indexrelname, idx_scan, pg_relation_size(indexrelid) "
            "  FROM pg_stat_user_indexes ORDER BY idx_scan DESC, indexrelname"
        )
        report.indexes = [dict(zip(("schema", "table", "index", "index_scans", "bytes"), r)) for r in cur.fetchall()]
        report.queries = _top_queries(cur, top, report.notes)
    return report


def _top_queries(cur, top: int, notes: list[str]) -> list[dict] | None:
    cur.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_stat_statements'"
    )
    row = cur.fetchone()
    if row is None:
        notes.append("pg_stat_statements is not installed in this database: run setup-extensions")
        return None
    if "pg_stat_statements" not in preloaded_libraries(cur):
        notes.append(
            "pg_stat_statements is installed but not in shared_preload_libraries: add it to postgresql.conf "
            "and restart the server (setup-extensions explains how)"
        )
        return None
    # PostgreSQL 13 renamed total_time/mean_time/max_time to *_exec_time: use what this server has.
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
        (f"{row[0]}.pg_stat_statements",),
    )
    columns = {r[0] for r in cur.fetchall()}
    suffix = "_exec_time" if "total_exec_time" in columns else "_time"
    try:
        cur.execute(
            f"SELECT substring(query, 1, 80), calls, total{suffix}, mean{suffix}, max{suffix} "
            f"  FROM {psycopg2.extensions.quote_ident(row[0], cur)}.pg_stat_statements "
            f" ORDER BY mean{suffix} DESC LIMIT %s",
            (top,),
        )
    except psycopg2.errors.ObjectNotInPrerequisiteState as exc:
        notes.append(f"pg_stat_statements unusable: {str(exc).strip().splitlines()[0]}")
        return None
    keys = ("query", "calls", "total_ms", "mean_ms", "max_ms")
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in zip(keys, r)} for r in cur.fetchall()]
