"""What the applied migrations declare against what the database holds, column by column.

The reference is built by running the applied forward files into the session's temporary schema
(`pg_temp`) inside a transaction that is always rolled back: PostgreSQL itself says what the files
declare (types, NOT NULL, defaults, constraints, indexes), with no SQL parsing of our own and nothing
left behind.

Only statements that shape tables are run, and only on temporary copies: CREATE TABLE, CREATE INDEX,
ALTER TABLE, RENAME and DROP of tables and indexes, each checked first to name nothing but unqualified
relations that already exist in pg_temp (or the one it creates). Statements that cannot change what is
compared (COMMENT, GRANT, data changes on the empty copies, functions, types, triggers, sequences,
views, SET of a setting) are skipped. Anything else (DO blocks, SELECT, SET search_path, ...) could act
on the real database, possibly outside the transaction (setval), or read it (information_schema) and so
build a wrong reference: it is not run, the reference is unavailable and `verify` falls back to
checking names only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .discovery import Migration

# Statements that cannot run in a transaction and change nothing a catalog comparison sees.
_SKIPPED_KINDS = {"VacuumStmt", "ReindexStmt", "CheckPointStmt"}
# Statements that change nothing the comparison reads (comments, privileges, rows of the empty copies,
# objects other than tables and indexes): not run, so they cannot touch the real database either.
# Functions, types and sequences they create are found in the real schema when a later statement uses
# them, which is where the applied migration put them.
_IGNORED_KINDS = {
    "CommentStmt", "GrantStmt", "GrantRoleStmt", "AlterDefaultPrivilegesStmt", "AlterOwnerStmt",
    "InsertStmt", "UpdateStmt", "DeleteStmt", "LockStmt", "NotifyStmt",
    "CreateFunctionStmt", "CreateTrigStmt", "CreateEnumStmt", "CompositeTypeStmt", "CreateDomainStmt",
    "CreateSeqStmt", "CreateExtensionStmt", "ViewStmt", "CreatePolicyStmt", "SecLabelStmt",
    "AlterSeqStmt", "AlterEnumStmt", "AlterFunctionStmt", "AlterDomainStmt", "AlterExtensionStmt", "DefineStmt",
    "CreateSchemaStmt", "RuleStmt", "CreateStatsStmt", "ClusterStmt", "RefreshMatViewStmt",
}  # fmt: skip
# Statements that shape tables and indexes: run on the temporary copies, after the checks below.
_REPLAYED_KINDS = {
    "CreateStmt",
    "IndexStmt",
    "AlterTableStmt",
    "RenameStmt",
    "DropStmt",
}
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
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        try:
            # pg_temp first, so that every unqualified CREATE lands there; then the session's own path, where
            # the migrations found their functions and types (an extension may live in its own schema)
            cur.execute(
                "SELECT set_config('search_path', concat_ws(', ', 'pg_temp', "
                "nullif(btrim(current_setting('search_path')), '')), true)"
            )
            cur.execute("SET LOCAL lock_timeout = '100ms'")
            cur.execute("SET LOCAL statement_timeout = '30s'")
            # A session that already holds temporary tables (a pooler handing over a used connection)
            # would shadow the copies: CREATE TABLE IF NOT EXISTS would keep the stranger's table.
            cur.execute("SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()")
            if cur.fetchone()[0]:
                raise ReferenceUnavailable(
                    "the session already has temporary tables (a connection pooler?); only names are checked"
                )
            for migration in applied:
                for statement in migration.forward.statements:
                    sql = _replayable(cur, migration, statement)
                    if sql is None:
                        continue
                    cur.execute("SAVEPOINT replay")
                    try:
                        cur.execute(sql)
                    except Exception as exc:
                        raise ReferenceUnavailable(
                            f"{migration.forward.path.name}:{statement.line} does not replay: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        ) from None
                    cur.execute("RELEASE SAVEPOINT replay")
                    if statement.kind == "CreateStmt" and statement.relations:
                        if not _exists(cur, f"pg_temp.{_quote(statement.relations[0])}"):
                            raise ReferenceUnavailable(
                                f"{migration.forward.path.name}:{statement.line} did not create "
                                f"{statement.relations[0]} as a temporary copy; only names are checked"
                            )
            # Every table now in pg_temp came from the files (the session is verify's own): renamed
            # tables are found under their new names.
            cur.execute(
                "SELECT c.relname FROM pg_class c WHERE c.relnamespace = pg_my_temp_schema() "
                "AND c.relkind IN ('r', 'p') ORDER BY c.oid"
            )
            names = [r[0] for r in cur.fetchall()]
            return {name: _read_table(cur, f"pg_temp.{_quote(name)}") for name in names}
        finally:
            cur.execute("ROLLBACK")


def live_tables(conn, names) -> dict[str, Table | None]:
    with conn.cursor() as cur:
        # names are catalog names (case kept): quoted, so that "AuditLog" is not looked up as auditlog
        return {name: _read_table(cur, _quote(name)) if _exists(cur, _quote(name)) else None for name in names}


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


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _replayable(cur, migration: Migration, statement) -> str | None:
    """The SQL to run for `statement` on the temporary copies, None to skip it, or ReferenceUnavailable."""
    where = f"{migration.forward.path.name}:{statement.line}"
    if statement.kind in _SKIPPED_KINDS or statement.kind in _IGNORED_KINDS:
        return None
    if statement.kind == "VariableSetStmt":
        node = _parse(statement.sql)
        if (node.name or "").lower() != "search_path":
            return None  # lock_timeout, statement_timeout and the like change no table
        raise ReferenceUnavailable(f"{where} sets search_path, which the replay cannot follow; only names are checked")
    if statement.kind not in _REPLAYED_KINDS:
        raise ReferenceUnavailable(
            f"{where} is a {statement.kind}, which verify does not replay (it could act on the real "
            "database); only names are checked"
        )
    creating = statement.relations[0] if statement.kind == "CreateStmt" and statement.relations else None
    for relation in statement.relations:
        if "." in relation:
            raise ReferenceUnavailable(
                f"{where} names {relation}, schema-qualified, which the replay cannot redirect to a "
                "temporary copy; only names are checked"
            )
        if relation == creating:
            continue
        if not _exists(cur, f"pg_temp.{_quote(relation)}"):
            raise ReferenceUnavailable(
                f"{where} names {relation}, which the applied files do not create; only names are checked"
            )
    sql = _CONCURRENTLY.sub("", statement.sql, count=1) if statement.concurrent_index else statement.sql
    if statement.kind == "RenameStmt" and not statement.relations:
        raise ReferenceUnavailable(f"{where} renames something other than a table or index; only names are checked")
    if statement.kind == "DropStmt":
        return _replayable_drop(cur, where, statement.sql, sql)
    return sql


def _replayable_drop(cur, where: str, original: str, sql: str) -> str | None:
    """DROP TABLE / DROP INDEX: run only on temporary copies; what the files never created is skipped
    (IF EXISTS) rather than dropped from the real schema."""
    from pglast.enums import ObjectType

    node = _parse(original)
    if node.removeType not in (ObjectType.OBJECT_TABLE, ObjectType.OBJECT_INDEX):
        return None  # views, functions, types, sequences, triggers: not part of the comparison
    names = [[part.sval for part in obj] for obj in node.objects]
    if any(len(parts) != 1 for parts in names):
        raise ReferenceUnavailable(
            f"{where} drops a schema-qualified name, which the replay cannot redirect to a temporary copy; "
            "only names are checked"
        )
    present = [parts[0] for parts in names if _exists(cur, f"pg_temp.{_quote(parts[0])}")]
    if len(present) == len(names):
        return sql
    if not present and node.missing_ok:
        return None  # nothing the files created: DROP ... IF EXISTS would only find the real one
    raise ReferenceUnavailable(
        f"{where} drops {', '.join(p[0] for p in names if p[0] not in present)}, which the applied files "
        "do not create; only names are checked"
    )


def _parse(sql: str):
    import pglast

    return pglast.parse_sql(_CONCURRENTLY.sub("", sql, count=1))[0].stmt


def _read_table(cur, name: str) -> Table:
    table = Table()
    cur.execute(
        # The type with its collation where it is not the type's own; the default with what makes one
        # without pg_attrdef (identity) or what a pg_attrdef row means (a stored generated column).
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attcollation <> t.typcollation "
        "THEN ' COLLATE ' || quote_ident(co.collname) ELSE '' END, a.attnotnull, "
        "CASE a.attidentity WHEN 'a' THEN 'GENERATED ALWAYS AS IDENTITY' "
        "WHEN 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY' ELSE CASE WHEN a.attgenerated = 's' "
        "THEN 'GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED' "
        "ELSE pg_get_expr(d.adbin, d.adrelid) END END "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "LEFT JOIN pg_collation co ON co.oid = a.attcollation "
        "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (name,),
    )
    for column, type_, notnull, default in cur.fetchall():
        table.columns[column] = (
            type_,
            notnull,
            _TEMP_SCHEMA.sub("", default) if default else None,
        )
    # NOT NULL is compared per column above; PostgreSQL 18 also lists it here as contype 'n'.
    cur.execute(
        "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype <> 'n'",
        (name,),
    )
    for conname, kind, definition in cur.fetchall():
        table.constraints[conname] = (kind, _TEMP_SCHEMA.sub("", definition))
    cur.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass(%s) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)",
        (name,),
    )
    for index, definition, valid in cur.fetchall():
        head = _INDEX_HEAD.match(definition)
        rest = definition[head.end() :] if head else definition
        # an index left INVALID by a failed concurrent build has the right definition and serves nothing
        table.indexes[index] = ("UNIQUE " if head and head.group(1) else "") + rest + ("" if valid else " (INVALID)")
    return table
