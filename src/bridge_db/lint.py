"""Migration lint: squawk (a well-kept PostgreSQL migration linter) for operations that lock busy
tables, plus the project's own rules from the migrations README that squawk does not know."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .discovery import Migration, SqlFile

# bridge-db sets lock_timeout and statement_timeout on every migration transaction itself.
SQUAWK_EXCLUDED = ["require-lock-timeout", "require-statement-timeout"]
# A rollback exists to drop what its migration created.
SQUAWK_EXCLUDED_ROLLBACK = ["ban-drop-table", "require-concurrent-index-deletion", "ban-drop-column"]
# 001..006 predate the linter and were applied as written; their column types are the seed's choice.
BASELINE_VERSION = 6
SQUAWK_EXCLUDED_BASELINE = ["prefer-text-field", "prefer-bigint-over-int"]


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.rule}: {self.message}"


def lint_migrations(migrations: list[Migration], use_squawk: bool = True) -> list[Finding]:
    findings: list[Finding] = []
    for migration in migrations:
        findings += _project_rules(migration)
    if use_squawk:
        findings += _squawk(migrations)
    return sorted(findings, key=lambda f: (f.file, f.line, f.rule))


def _project_rules(migration: Migration) -> list[Finding]:
    from pglast import ast

    forward, rollback = migration.forward, migration.rollback
    found = [
        Finding(sql_file.path.name, 1, "bridge-header", "start with a comment header naming purpose and dependencies")
        for sql_file in (forward, rollback)
        if not sql_file.text.lstrip().startswith("--")
    ]
    tables, commented_tables, columns, commented_columns = {}, set(), {}, set()
    for statement, raw in zip(forward.statements, forward.parse_tree()):
        node = raw.stmt
        if isinstance(node, ast.CreateStmt):
            if not node.if_not_exists:
                found.append(_finding(forward, statement, "bridge-if-not-exists", "CREATE TABLE without IF NOT EXISTS"))
            tables[node.relation.relname] = statement
            for element in node.tableElts or ():
                if isinstance(element, ast.ColumnDef):
                    columns[(node.relation.relname, element.colname)] = statement
        elif isinstance(node, ast.IndexStmt) and not node.if_not_exists:
            found.append(_finding(forward, statement, "bridge-if-not-exists", "CREATE INDEX without IF NOT EXISTS"))
        elif isinstance(node, ast.CommentStmt):
            names = [n.sval for n in node.object] if isinstance(node.object, tuple) else []
            if names and node.objtype.name == "OBJECT_TABLE":
                commented_tables.add(names[-1])
            elif len(names) >= 2 and node.objtype.name == "OBJECT_COLUMN":
                commented_columns.add((names[-2], names[-1]))
    found += [
        _finding(forward, statement, "bridge-comment", f"table {table} has no COMMENT ON TABLE")
        for table, statement in tables.items()
        if table not in commented_tables
    ]
    found += [
        _finding(forward, statement, "bridge-comment", f"column {table}.{column} has no COMMENT")
        for (table, column), statement in columns.items()
        if (table, column) not in commented_columns
    ]
    return found + [
        _finding(rollback, statement, "bridge-if-exists", "DROP without IF EXISTS")
        for statement, raw in zip(rollback.statements, rollback.parse_tree())
        if isinstance(raw.stmt, ast.DropStmt) and not raw.stmt.missing_ok
    ]


def _finding(sql_file: SqlFile, statement, rule: str, message: str) -> Finding:
    return Finding(sql_file.path.name, statement.line, rule, message)


def squawk_binary() -> str | None:
    beside = Path(sys.executable).parent / "squawk"
    return str(beside) if beside.is_file() else shutil.which("squawk")


def _squawk(migrations: list[Migration]) -> list[Finding]:
    binary = squawk_binary()
    if binary is None:
        return [Finding("-", 0, "squawk-missing", "squawk is not installed: pip install squawk-cli (in the dev extra)")]
    groups: dict[tuple[str, ...], list[Path]] = {}
    for migration in migrations:
        for sql_file, is_rollback in ((migration.forward, False), (migration.rollback, True)):
            excluded = list(SQUAWK_EXCLUDED)
            if is_rollback:
                excluded += SQUAWK_EXCLUDED_ROLLBACK
            if migration.version <= BASELINE_VERSION:
                excluded += SQUAWK_EXCLUDED_BASELINE
            groups.setdefault(tuple(excluded), []).append(sql_file.path)
    found: list[Finding] = []
    for excluded_names, paths in groups.items():
        transactional = [p for p in paths if "bridge:no-transaction" not in p.read_text(errors="replace")]
        others = [p for p in paths if p not in transactional]
        for files, flags in ((transactional, ["--assume-in-transaction"]), (others, [])):
            if not files:
                continue
            result = subprocess.run(
                [binary, "--reporter", "gcc", "--exclude", ",".join(excluded_names), *flags, *map(str, files)],
                capture_output=True,
                text=True,
            )
            for line in result.stdout.splitlines():
                parts = line.split(":", 4)
                if len(parts) == 5 and parts[1].isdigit():
                    rule, _, message = (
                        parts[4].strip().removeprefix("warning").removeprefix("error").strip().partition(" ")
                    )
                    # squawk counts lines from 0
                    found.append(Finding(Path(parts[0]).name, int(parts[1]) + 1, rule, message))
    return found
