"""schema.sql: the schema the migrations build, as a file to review in pull requests and to compare a
live database with (`verify --schema`).

It is `pg_dump --schema-only --no-owner --no-privileges` of the database, without bridge-db's own
history tables, normalised so that it says only what the migrations made: pg_dump's header and
per-object comments, its SET lines and `\\restrict` keys (random per run since pg_dump 17.6/18), and
the extensions (setup-extensions manages those, per environment) are left out, blank lines collapsed.
The same schema dumped twice, or by pg_dump 15 to 18, gives the same bytes.

It lives beside the migrations folder (`migrations/../schema.sql`), not inside it: the folder is
packaged in the wheel and every file in it must be a migration or its README.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from .connection import Target, cursor_for, libpq_environment
from .errors import PrerequisiteMissing, UsageError

SCHEMA_FILE = "schema.sql"
HEADER = (
    "-- schema.sql: the schema the migrations build (pg_dump --schema-only, normalised), written by\n"
    "-- bridge-db after migrate and rollback on dev. Do not edit: run migrate. CI compares a database\n"
    "-- with it: bridge-db verify --schema.\n"
)
ENGINE_TABLES = ("schema_migrations", "schema_migrations_log", "schema_migrations_progress")

# What pg_dump writes that is not the schema, or differs between runs and versions.
_TOC_COMMENT = re.compile(r"^--\n(?:-- .*\n)+--\n", re.MULTILINE)  # "--\n-- Name: ...; Type: ...\n--"
_NOISE = re.compile(
    r"^(?:SET [a-z_]+ = .*;"
    r"|SELECT pg_catalog\.set_config\('search_path', '', false\);"
    r"|\\(?:un)?restrict\b.*"
    r"|-- Dumped (?:from|by) .*"
    r"|CREATE EXTENSION IF NOT EXISTS .*;"
    r"|COMMENT ON EXTENSION .*;)\n",
    re.MULTILINE,
)


def schema_path(migrations_dir: Path) -> Path:
    return Path(migrations_dir).parent / SCHEMA_FILE


def normalise(dump: str) -> str:
    text = dump.replace("\r\n", "\n")
    text = _TOC_COMMENT.sub("", text)
    text = _NOISE.sub("", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return HEADER + "\n" + text + "\n"


def dump_schema(target: Target) -> str:
    """The normalised schema of the target's database."""
    import subprocess

    from . import pgtools

    with cursor_for(target) as cur:
        cur.execute("SELECT current_setting('server_version_num')::int")
        major = cur.fetchone()[0] // 10000
    pg_dump = pgtools.dump_tool("pg_dump", major).path
    cmd = [str(pg_dump), "--schema-only", "--no-owner", "--no-privileges", "--no-password"]
    for table in ENGINE_TABLES:
        cmd += ["--exclude-table", f"public.{table}"]
    result = subprocess.run(cmd, env=libpq_environment(target), capture_output=True, text=True)
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()] or [f"exit {result.returncode}"]
        raise PrerequisiteMissing(
            f"pg_dump --schema-only of {target.label} failed: {lines[-1]}",
            "check the client tools (`bridge-db tools list`) and the connection, then run again",
        )
    return normalise(result.stdout)


def write_schema_file(target: Target, migrations_dir: Path) -> Path:
    """Write schema.sql beside the migrations, only when it changed (its mtime then says when)."""
    path = schema_path(migrations_dir)
    text = dump_schema(target)
    try:
        if path.read_text(encoding="utf-8") == text:
            return path
    except OSError:
        pass
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


@dataclass
class SchemaComparison:
    file: str
    differences: list[str]  # unified diff lines, file -> live database


def compare_with_file(target: Target, migrations_dir: Path, max_lines: int = 60) -> SchemaComparison:
    path = schema_path(migrations_dir)
    try:
        expected = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"verify --schema compares with {path}, which does not exist",
            "run migrate on dev to write it (and commit it), or pass --migrations-dir to the project's folder",
        ) from None
    live = dump_schema(target)
    if live == expected:
        return SchemaComparison(str(path), [])
    diff = list(
        difflib.unified_diff(
            expected.splitlines(), live.splitlines(), f"{path.name} (repository)", "live database", n=1, lineterm=""
        )
    )
    if len(diff) > max_lines:
        diff = diff[:max_lines] + [f"... ({len(diff) - max_lines} more diff lines)"]
    return SchemaComparison(str(path), diff)
