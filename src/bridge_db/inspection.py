"""status and verify: what the history says against the files, and the live schema against what the
applied migrations declare. Both only read."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg2

from .connection import Target, connect
from .discovery import Migration
from .engine import _database_error, history_problems
from .history import AppliedMigration, read_applied


@dataclass
class MigrationState:
    version: int
    name: str
    state: str  # applied | pending | modified | missing
    applied: bool
    applied_at: str | None = None
    applied_by: str | None = None
    execution_ms: int | None = None
    file_checksum: str | None = None
    applied_checksum: str | None = None


@dataclass
class StatusReport:
    target: str
    head: int | None
    migrations: list[MigrationState]
    problems: list[str]
    last_restore_point: dict | None = None  # the newest production run's, from schema_migrations_log

    @property
    def pending(self) -> int:
        return sum(1 for m in self.migrations if m.state == "pending")

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "head": self.head,
            "pending": self.pending,
            "problems": self.problems,
            "migrations": [dict(m.__dict__) for m in self.migrations],
            "last_restore_point": self.last_restore_point,
        }


@dataclass
class VerifyReport:
    target: str
    head: int | None
    checked_migrations: int
    checked_objects: int
    problems: list[str]
    # "definitions": types, NOT NULL, defaults, constraints and indexes compared with a replay of the
    # files; "names": only that declared tables, columns and indexes exist (the replay was not possible).
    compared: str = "definitions"
    note: str | None = None
    schema_file: str | None = None  # verify --schema: the schema.sql compared with
    schema_diff: list[str] = field(default_factory=list)  # its unified diff against the live database

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok}


def status(target: Target, migrations: list[Migration]) -> StatusReport:
    conn = connect(target)
    try:
        with conn.cursor() as cur:
            applied = read_applied(cur)
            points = recorded_restore_points(cur, limit=1) if applied else []
    except psycopg2.Error as exc:
        raise _database_error(target, conn, exc) from None
    finally:
        conn.close()
    report = _status_report(target, migrations, applied)
    report.last_restore_point = points[0] if points else None
    return report


def recorded_restore_points(cur, limit: int = 20) -> list[dict]:
    """The restore points production runs recorded (details.restore_point of their log rows), newest first."""
    cur.execute(
        "SELECT run_id::text, min(action), min(started_at), min(details->'restore_point'->>'name'), "
        "min(details->'restore_point'->>'lsn'), min(version), max(version), bool_and(success) "
        "FROM public.schema_migrations_log WHERE details ? 'restore_point' "
        "GROUP BY run_id ORDER BY min(id) DESC LIMIT %s",
        (limit,),
    )
    keys = ("run_id", "action", "started_at", "name", "lsn", "first_version", "last_version", "success")
    return [dict(zip(keys, row)) for row in cur.fetchall()]


def _status_report(target: Target, migrations: list[Migration], applied: dict[int, AppliedMigration]) -> StatusReport:
    states = []
    for m in migrations:
        row = applied.get(m.version)
        state = "pending" if row is None else ("modified" if row.checksum != m.checksum else "applied")
        states.append(
            MigrationState(
                m.version,
                m.name,
                state,
                row is not None,
                applied_at=row.applied_at.isoformat() if row else None,
                applied_by=row.applied_by if row else None,
                execution_ms=row.execution_ms if row else None,
                file_checksum=m.checksum,
                applied_checksum=row.checksum if row else None,
            )
        )
    known = {m.version for m in migrations}
    for version, row in sorted(applied.items()):
        if version not in known:
            states.append(
                MigrationState(
                    version,
                    row.name,
                    "missing",
                    True,
                    row.applied_at.isoformat(),
                    row.applied_by,
                    row.execution_ms,
                    None,
                    row.checksum,
                )
            )
    states.sort(key=lambda s: s.version)
    problems = [str(p) for p in history_problems(migrations, applied)]
    return StatusReport(target.label, max(applied, default=None), states, problems)


def verify(target: Target, migrations: list[Migration]) -> VerifyReport:
    """History against files (checksums, missing files, order), then the tables the applied migrations
    declare against the live catalog: every column's type, NOT NULL and default, every constraint and
    index, both ways (see schema_diff). Where the files cannot be replayed, declared names only."""
    from .schema_diff import ReferenceUnavailable, differences, live_tables, reference_tables

    conn = connect(target)
    compared, note = "definitions", None
    try:
        with conn.cursor() as cur:
            applied = read_applied(cur)
            problems = [str(p) for p in history_problems(migrations, applied)]
            applied_files = [m for m in migrations if m.version in applied]
            expected = declared_objects(applied_files)
        try:
            reference = reference_tables(conn, applied_files)
        except ReferenceUnavailable as exc:
            # Names only, and only this direction: a file that cannot be replayed (a DO block, say) may
            # create what the parser cannot see, so "not declared" would be a guess.
            compared, note = "names", str(exc)
            with conn.cursor() as cur:
                problems += _missing_objects(cur, expected)
        else:
            # The replay compares every declared table both ways; what is left of the other direction
            # is whole tables (and their indexes) that no applied migration declares.
            problems += differences(reference, live_tables(conn, reference))
            with conn.cursor() as cur:
                problems += [p for p in _undeclared_objects(cur, expected) if p.startswith("table ")]
    except psycopg2.Error as exc:
        raise _database_error(target, conn, exc) from None
    finally:
        conn.close()
    checked = len(expected["tables"]) + len(expected["indexes"]) + sum(len(c) for c in expected["tables"].values())
    return VerifyReport(target.label, max(applied, default=None), len(applied), checked, problems, compared, note)


ANY_COLUMNS = "*"  # a declared table whose columns the file does not list (PARTITION OF, LIKE, ...)


def declared_objects(applied: list[Migration]) -> dict:
    """Tables (with columns) and indexes that the applied forward files leave behind, in order."""
    from pglast import ast, enums

    tables: dict[str, set[str]] = {}
    indexes: dict[str, str] = {}  # index name -> declaring file
    for migration in applied:
        for raw in migration.forward.parse_tree():
            stmt = raw.stmt
            if isinstance(stmt, ast.CreateStmt):
                tables.setdefault(_qualified(stmt.relation), set()).update(_declared_columns(stmt))
            elif isinstance(stmt, ast.IndexStmt) and stmt.idxname:
                schema = stmt.relation.schemaname
                indexes[f"{schema}.{stmt.idxname}" if schema else stmt.idxname] = migration.forward.path.name
            elif isinstance(stmt, ast.AlterTableStmt):
                table = tables.setdefault(_qualified(stmt.relation), set())
                for cmd in stmt.cmds or ():
                    if cmd.subtype == enums.AlterTableType.AT_AddColumn:
                        table.add(cmd.def_.colname)
                    elif cmd.subtype == enums.AlterTableType.AT_DropColumn:
                        table.discard(cmd.name)
            elif isinstance(stmt, ast.RenameStmt) and stmt.relation is not None:
                _rename(stmt, tables, indexes)
            elif isinstance(stmt, ast.DropStmt):
                for obj in stmt.objects or ():
                    name = ".".join(n.sval for n in obj) if isinstance(obj, tuple) else None
                    if stmt.removeType == enums.ObjectType.OBJECT_TABLE and name:
                        tables.pop(name, None)
                    elif stmt.removeType == enums.ObjectType.OBJECT_INDEX and name:
                        indexes.pop(name, None)
    return {"tables": tables, "indexes": indexes}


def _declared_columns(stmt) -> set[str]:
    """A CREATE TABLE's columns; ANY_COLUMNS where they come from elsewhere (PARTITION OF, INHERITS, OF
    type, LIKE)."""
    from pglast import ast

    cols = {e.colname for e in (stmt.tableElts or ()) if isinstance(e, ast.ColumnDef)}
    if (
        stmt.inhRelations
        or stmt.partbound
        or stmt.ofTypename
        or any(isinstance(e, ast.TableLikeClause) for e in (stmt.tableElts or ()))
    ):
        cols.add(ANY_COLUMNS)
    return cols


def _rename(stmt, tables: dict[str, set[str]], indexes: dict[str, str]) -> None:
    """ALTER TABLE/INDEX ... RENAME, followed in what the files declare."""
    from pglast import enums

    old = _qualified(stmt.relation)
    if stmt.renameType == enums.ObjectType.OBJECT_TABLE and old in tables:
        tables[stmt.newname] = tables.pop(old)
    elif stmt.renameType == enums.ObjectType.OBJECT_INDEX and old in indexes:
        indexes[stmt.newname] = indexes.pop(old)
    elif stmt.renameType == enums.ObjectType.OBJECT_COLUMN and old in tables:
        tables[old].discard(stmt.subname)
        tables[old].add(stmt.newname)


def _qualified(relation) -> str:
    return f"{relation.schemaname}.{relation.relname}" if relation.schemaname else relation.relname


def _missing_objects(cur, expected: dict) -> list[str]:
    problems = []
    for table, columns in sorted(expected["tables"].items()):
        cur.execute(
            "SELECT c.oid IS NOT NULL, coalesce(array_agg(a.attname::text) FILTER (WHERE a.attname IS NOT NULL), '{}') "
            "FROM (SELECT to_regclass(%s) AS oid) c "
            "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped GROUP BY c.oid",
            (table,),
        )
        exists, live_columns = cur.fetchone()
        if not exists:
            problems.append(f"table {table} is missing (declared by an applied migration)")
            continue
        for column in sorted(columns - set(live_columns) - {ANY_COLUMNS}):
            problems.append(f"column {table}.{column} is missing (declared by an applied migration)")
    for index, file in sorted(expected["indexes"].items()):
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (index,))
        if not cur.fetchone()[0]:
            problems.append(f"index {index} is missing (declared by {file})")
    return problems


def _undeclared_objects(cur, expected: dict) -> list[str]:
    """The other direction: tables, columns and indexes in schema public that no applied migration
    declares (added by hand, or left behind). Not counted: the engine's own tables, objects that belong
    to an extension, and indexes that back a constraint (primary keys, UNIQUE)."""
    from .history import ENGINE_TABLES

    def public_name(name: str) -> str | None:
        schema, _, rel = name.rpartition(".")
        return rel if schema in ("", "public") else None

    declared_tables = {public_name(t): cols for t, cols in expected["tables"].items() if public_name(t)}
    declared_indexes = {public_name(i) for i in expected["indexes"] if public_name(i)}
    cur.execute(
        """
        SELECT c.relname::text, c.relkind::text,
               coalesce(array_agg(a.attname::text) FILTER (WHERE a.attname IS NOT NULL), '{}')
          FROM pg_class c
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                                   AND c.relkind IN ('r', 'p')
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'i', 'I')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                                      AND d.objid = c.oid AND d.deptype = 'e')
           AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = c.oid AND k.contype IN ('p', 'u', 'x'))
           -- an index on a partition, created with its partitioned parent index
           AND NOT (c.relkind = 'i' AND EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = c.oid))
           AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indexrelid = c.oid
                                                      AND i.indrelid IN (SELECT to_regclass('public.' || t)
                                                                           FROM unnest(%s::text[]) t))
         GROUP BY c.relname, c.relkind
         ORDER BY c.relname
        """,
        (list(ENGINE_TABLES),),
    )
    problems = []
    for name, kind, columns in cur.fetchall():
        if kind in ("i", "I"):
            if name not in declared_indexes:
                problems.append(f"index public.{name} is not declared by any applied migration")
        elif name in ENGINE_TABLES:
            continue
        elif name not in declared_tables:
            problems.append(f"table public.{name} is not declared by any applied migration")
        elif ANY_COLUMNS not in declared_tables[name]:
            for column in sorted(set(columns) - declared_tables[name]):
                problems.append(f"column public.{name}.{column} is not declared by any applied migration")
    return problems
