"""What the applied migrations declare against what the database holds, column by column.

The reference is built by running the applied forward files into the session's temporary schema
(`pg_temp`) inside a transaction that is always rolled back: PostgreSQL itself says what the files
declare (types, NOT NULL, defaults, constraints, indexes), with no SQL parsing of our own and nothing
left behind. A statement that would touch anything but the temporary copies (a schema-qualified name,
a table the files did not create) is not run; the reference is then unavailable and `verify` falls
back to checking names only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .discovery import Migration

# Statements that cannot run in a transaction and change nothing a catalog comparison sees.
_SKIPPED_KINDS = {"VacuumStmt", "ReindexStmt", "CheckPointStmt"}
_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)
_TEMP_SCHEMA = re.compile(r"\bpg_temp(?:_\d+)?\.")
_INDEX_HEAD = re.compile(r"^CREATE (UNIQUE )?INDEX \S+ ON (?:ONLY )?\S+ ")


class ReferenceUnavailable(Exception):
    """The applied files cannot be replayed into temporary tables; the reason is the message."""


@dataclass
class Table:
    columns: dict[str, tuple[str, bool, str | None]] = field(default_factory=dict)  # type, NOT NULL, default
    constraints: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (kind, definition)
    indexes: dict[str, str] = field(default_factory=dict)  # name -> definition without name and table


def reference_tables(conn, applied: list[Migration]) -> dict[str, Table]:
    """The tables the applied forward files create, as PostgreSQL builds them, read and rolled back."""
    created: list[str] = []
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            cur.execute("SET LOCAL search_path = pg_temp, public")
            cur.execute("SET LOCAL lock_timeout = '100ms'")
            cur.execute("SET LOCAL statement_timeout = '30s'")
            for migration in applied:
                for statement in migration.forward.statements:
                    if statement.kind in _SKIPPED_KINDS:
                        continue
                    _refuse_outside_temp(cur, migration, statement, created)
                    sql = _CONCURRENTLY.sub("", statement.sql, count=1) if statement.concurrent_index else statement.sql
                    cur.execute("SAVEPOINT replay")
                    try:
                        cur.execute(sql)
                    except Exception as exc:
                        raise ReferenceUnavailable(
                            f"{migration.forward.path.name}:{statement.line} does not replay: {exc}".strip()
                        ) from None
                    cur.execute("RELEASE SAVEPOINT replay")
                    if statement.kind == "CreateStmt" and statement.relations:
                        created.append(statement.relations[0])
            names = [t for t in dict.fromkeys(created) if _exists(cur, f"pg_temp.{t}")]
            return {name: _read_table(cur, f"pg_temp.{name}") for name in names}
        finally:
            cur.execute("ROLLBACK")


def live_tables(conn, names) -> dict[str, Table | None]:
    with conn.cursor() as cur:
        return {name: _read_table(cur, name) if _exists(cur, name) else None for name in names}


def differences(reference: dict[str, Table], live: dict[str, Table | None]) -> list[str]:
    """One line per difference, named so that a person can act on it."""
    problems: list[str] = []
    for name, want in reference.items():
        have = live.get(name)
        if have is None:
            problems.append(f"table {name} is missing (declared by an applied migration)")
            continue
        problems += _column_differences(name, want, have)
        problems += _named_differences(name, "constraint", want.constraints, have.constraints, _constraint_text)
        problems += _named_differences(name, "index", want.indexes, have.indexes, lambda d: d)
    return problems


def _column_differences(table: str, want: Table, have: Table) -> list[str]:
    problems = []
    for column, (wtype, wnotnull, wdefault) in want.columns.items():
        if column not in have.columns:
            problems.append(f"column {table}.{column} is missing (the migrations declare {wtype})")
            continue
        htype, hnotnull, hdefault = have.columns[column]
        if htype != wtype:
            problems.append(f"column {table}.{column} is {htype}, the migrations declare {wtype}")
        if hnotnull != wnotnull:
            problems.append(
                f"column {table}.{column} is {'NOT NULL' if hnotnull else 'nullable'}, "
                f"the migrations declare {'NOT NULL' if wnotnull else 'nullable'}"
            )
        if hdefault != wdefault:
            problems.append(
                f"column {table}.{column} has default {hdefault or 'none'}, the migrations declare {wdefault or 'none'}"
            )
    for column in have.columns.keys() - want.columns.keys():
        problems.append(f"column {table}.{column} ({have.columns[column][0]}) is not declared by the migrations")
    return sorted(problems)


def _named_differences(table: str, what: str, want: dict, have: dict, text) -> list[str]:
    """Match by name, then by definition (a renamed object is reported as such, not as missing + extra)."""
    problems = []
    unmatched_have = {name: d for name, d in have.items() if name not in want}
    for name, definition in want.items():
        if have.get(name) == definition:
            continue
        if name in have:
            problems.append(
                f"{what} {name} on {table} is {text(have[name])}, the migrations declare {text(definition)}"
            )
            continue
        twin = next((n for n, d in unmatched_have.items() if d == definition), None)
        if twin is not None:
            problems.append(f"{what} {twin} on {table} is named {name} in the migrations")
            del unmatched_have[twin]
        else:
            problems.append(f"{what} {name} on {table} is missing: {text(definition)}")
    for name, definition in unmatched_have.items():
        problems.append(f"{what} {name} on {table} is not declared by the migrations: {text(definition)}")
    return sorted(problems)


def _constraint_text(item: tuple[str, str]) -> str:
    return item[1]


def _exists(cur, name: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
    return cur.fetchone()[0]


def _refuse_outside_temp(cur, migration: Migration, statement, created: list[str]) -> None:
    """Replay only statements whose every table is one the replay created in pg_temp (or is creating)."""
    creating = statement.relations[0] if statement.kind == "CreateStmt" and statement.relations else None
    for relation in statement.relations:
        if relation == creating:
            continue
        if "." in relation or relation not in created or not _exists(cur, f"pg_temp.{relation}"):
            raise ReferenceUnavailable(
                f"{migration.forward.path.name}:{statement.line} names {relation}, "
                "which the applied files do not create; only names are checked"
            )


def _read_table(cur, name: str) -> Table:
    table = Table()
    cur.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid) "
        "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (name,),
    )
    for column, type_, notnull, default in cur.fetchall():
        table.columns[column] = (type_, notnull, _TEMP_SCHEMA.sub("", default) if default else None)
    # NOT NULL is compared per column above; PostgreSQL 18 also lists it here as contype 'n'.
    cur.execute(
        "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype <> 'n'",
        (name,),
    )
    for conname, kind, definition in cur.fetchall():
        table.constraints[conname] = (kind, _TEMP_SCHEMA.sub("", definition))
    cur.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)",
        (name,),
    )
    for index, definition in cur.fetchall():
        head = _INDEX_HEAD.match(definition)
        rest = definition[head.end() :] if head else definition
        table.indexes[index] = ("UNIQUE " if head and head.group(1) else "") + rest
    return table
