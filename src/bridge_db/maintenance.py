"""What operators need besides migrate and rollback: the run log (`history`), accepting an applied file's
harmless edit (`repair`), adopting a database whose schema another tool built (`baseline`), and
waiting for a server that is still starting (`wait`).

repair and baseline write only bridge-db's own tables, under the migration lock, in one transaction
with their log row: the log says who, when, why and what was there before.
"""

from __future__ import annotations

import difflib
import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

from .connection import Target, connect, migration_lock
from .discovery import Migration, normalised_checksum
from .errors import RefusedByPolicy, UsageError, ValidationFailed
from .history import RunContext, ensure_history_tables, log_step, read_applied

Confirm = Callable[[str], bool]


def _needs_confirmation(target: Target) -> bool:
    """dev (an environment that may be reset, reached as itself) goes ahead; everywhere else asks."""
    return not target.environment.policy.allow_reset or target.foreign


def _ask(confirm: Confirm | None, question: str, what: str) -> None:
    if confirm is None or not confirm(question):
        raise RefusedByPolicy(f"{what} was not confirmed; nothing changed", "answer yes on a terminal, or pass --yes")


def _database_error(target: Target, conn, exc: psycopg2.Error):
    from .engine import _database_error as engine_error

    return engine_error(target, conn, exc)


# --------------------------------------------------------------------------- history


@dataclass
class RunEntry:
    run_id: str
    started_at: str
    environment: str | None
    os_user: str | None
    db_user: str
    client_host: str | None
    tool_version: str | None
    action: str  # apply | rollback | repair | baseline (a run's steps share one)
    versions: list[int]
    success: bool
    error: str | None
    execution_ms: int
    backup: str | None = None
    restore_point: dict | None = None  # {"name": ..., "lsn": ...}
    reason: str | None = None  # repair's "why"

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class HistoryReport:
    target: str
    runs: list[RunEntry]

    def as_dict(self) -> dict:
        return {"target": self.target, "runs": [r.as_dict() for r in self.runs]}


def history(target: Target, limit: int = 20) -> HistoryReport:
    """The newest `limit` runs of the log, newest first, one entry per run."""
    if limit < 1:
        raise UsageError(f"--limit must be 1 or more (got {limit})", "e.g. history --limit 20")
    conn = connect(target)
    try:
        with conn.cursor() as cur:
            read_applied(cur)  # refuses another tool's schema_migrations, as every verb does
            cur.execute("SELECT to_regclass('public.schema_migrations_log') IS NOT NULL")
            if not cur.fetchone()[0]:
                return HistoryReport(target.label, [])
            cur.execute(
                """
                SELECT run_id::text, min(started_at), max(environment), max(os_user), max(db_user),
                       max(client_host), max(tool_version), string_agg(DISTINCT action, ','),
                       array_agg(version ORDER BY id), bool_and(success),
                       (array_agg(error ORDER BY id) FILTER (WHERE error IS NOT NULL))[1],
                       sum(execution_ms)::bigint, (array_agg(details ORDER BY id DESC))[1]
                  FROM public.schema_migrations_log
                 GROUP BY run_id
                 ORDER BY min(started_at) DESC, max(id) DESC
                 LIMIT %s
                """,
                (limit,),
            )
            rows = cur.fetchall()
    except psycopg2.Error as exc:
        raise _database_error(target, conn, exc) from None
    finally:
        conn.close()
    runs = []
    for row in rows:
        details = row[12] if isinstance(row[12], dict) else json.loads(row[12] or "{}")
        point = details.get("restore_point")
        runs.append(
            RunEntry(
                row[0],
                row[1].isoformat(),
                row[2],
                row[3],
                row[4],
                row[5],
                row[6],
                row[7],
                list(row[8]),
                row[9],
                row[10],
                int(row[11] or 0),
                backup=details.get("backup"),
                restore_point=point if isinstance(point, dict) else None,
                reason=details.get("reason"),
            )  # fmt: skip
        )
    return HistoryReport(target.label, runs)


# --------------------------------------------------------------------------- repair


@dataclass
class RepairedFile:
    version: int
    file: str
    recorded_checksum: str
    file_checksum: str
    applied_text_from: str | None  # the git commit whose copy has the recorded checksum, if found
    diff: list[str] = field(default_factory=list)
    statements_changed: bool | None = None  # None: the applied text is not known

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RepairResult:
    target: str
    reason: str
    repaired: list[RepairedFile]
    run_id: str | None = None

    def as_dict(self) -> dict:
        return {"target": self.target, "reason": self.reason, "run_id": self.run_id,
                "repaired": [r.as_dict() for r in self.repaired]}  # fmt: skip


def applied_text_from_git(path: Path, checksum: str, depth: int = 200) -> tuple[str, str] | None:
    """(commit, text) of the newest committed copy of `path` whose checksum is `checksum`."""
    folder, name = str(path.parent), path.name
    try:
        log = subprocess.run(
            ["git", "-C", folder, "log", f"-n{depth}", "--format=%H", "--", name],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    for commit in log.stdout.split() if log.returncode == 0 else ():
        shown = subprocess.run(["git", "-C", folder, "show", f"{commit}:./{name}"], capture_output=True, timeout=30)
        if shown.returncode == 0 and normalised_checksum(shown.stdout) == checksum:
            raw = shown.stdout[3:] if shown.stdout.startswith(b"\xef\xbb\xbf") else shown.stdout
            return commit, raw.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    return None


# Offsets into the text in a parse tree (location, stmt_location, stmt_len, rexpr_list_start, ...):
# they move with comments and layout, and say nothing about what a statement does.
_POSITION_KEY = re.compile(r"(location|_start|_end|stmt_len)$")


def _statements_differ(old: str, new: str) -> bool | None:
    """Whether the two texts hold different statements (comments and layout aside), by their parse trees
    without positions; None when either does not parse."""
    from pglast import parser

    def tree(text: str):
        def strip(node):
            if isinstance(node, dict):
                return {k: strip(v) for k, v in node.items() if not _POSITION_KEY.search(k)}
            if isinstance(node, list):
                return [strip(v) for v in node]
            return node

        return strip(json.loads(parser.parse_sql_json(text)))

    try:
        return tree(old) != tree(new)
    except Exception:  # a ParseError: the file is checked again by migrate
        return None


def _changed_files(migration: Migration, row) -> list[tuple[str, Path, str, str]]:
    """(kind, path, recorded checksum, file checksum) of the applied migration's edited files."""
    changed = []
    if migration.checksum != row.checksum:
        changed.append(("forward", migration.forward.path, row.checksum, migration.checksum))
    if row.rollback_checksum is not None and migration.rollback_checksum != row.rollback_checksum:
        changed.append(("rollback", migration.rollback.path, row.rollback_checksum, migration.rollback_checksum))
    return changed


def repair(
    target: Target,
    migrations: list[Migration],
    version: int | None,
    reason: str | None,
    *,
    confirm: Confirm | None = None,
    show: Callable[[RepairedFile], None] | None = None,
    lock_wait: float | None = None,
) -> RepairResult:
    """Accept the checksums of applied migrations' edited files (one version, or every changed one).

    Each change is shown first (a diff against the committed copy that was applied, found in git by its
    checksum), then confirmed outside dev, then the history rows take the files' checksums and the log
    records who, when, why and the previous checksums, in one transaction under the migration lock."""
    if not reason or not reason.strip():
        raise UsageError(
            "repair needs --reason: it is recorded in the run log with who and when",
            'e.g. repair 3 --reason "comment typo fixed in 003; statements unchanged"',
        )
    by_version = {m.version: m for m in migrations}
    if version is not None and version not in by_version:
        raise UsageError(f"repair {version}: no such migration file", "pass the number of an applied migration")
    run = RunContext(environment=target.environment.name)
    conn = connect(target)
    try:
        cur = conn.cursor()
        applied = read_applied(cur)
        if version is not None and version not in applied:
            raise UsageError(
                f"migration {version:03d} is not applied here: there is nothing to repair, its file may be edited",
                "run status to see what is applied",
            )
        found: list[tuple[int, list]] = []
        for v in [version] if version is not None else sorted(applied):
            if v in by_version:
                changed = _changed_files(by_version[v], applied[v])
                if changed:
                    found.append((v, changed))
        result = RepairResult(target.label, reason.strip(), [])
        for v, changed in found:
            for _kind, path, recorded, now in changed:
                entry = _describe_change(v, path, recorded, now)
                result.repaired.append(entry)
                if show:
                    show(entry)
        if not result.repaired:
            return result
        if _needs_confirmation(target):
            names = ", ".join(Path(r.file).name for r in result.repaired)
            _ask(confirm, f"Accept the edited file(s) {names} as applied on {target.label}?", "repair")
        wait = target.environment.policy.lock_wait_seconds if lock_wait is None else lock_wait
        with migration_lock(conn, wait):
            _record_repair(conn, cur, run, by_version, found, result.reason)
        result.run_id = run.run_id
        return result
    except psycopg2.Error as exc:
        raise _database_error(target, conn, exc) from None
    finally:
        conn.close()


def _record_repair(conn, cur, run: RunContext, by_version: dict[int, Migration], found: list, reason: str) -> None:
    """The history rows take the files' checksums; one log row per migration says who, why and what was
    recorded before. One transaction; a history changed meanwhile changes nothing."""
    cur.execute("BEGIN")
    try:
        ensure_history_tables(cur)  # the log's action check learns 'repair' on older databases
        current = read_applied(cur)
        for v, changed in found:
            row = current.get(v)
            if row is None or _changed_files(by_version[v], row) != changed:
                raise ValidationFailed(
                    f"the history of {v:03d} changed while repair was asking; nothing was changed",
                    "run repair again",
                )
            m = by_version[v]
            cur.execute(
                "UPDATE public.schema_migrations SET checksum = %s, "
                "rollback_checksum = CASE WHEN rollback_checksum IS NULL THEN NULL ELSE %s END "
                "WHERE version = %s",
                (m.checksum, m.rollback_checksum, v),
            )
            details = {
                "reason": reason,
                "previous_checksum": row.checksum,
                "previous_rollback_checksum": row.rollback_checksum,
                "files": [str(p.name) for _k, p, _r, _n in changed],
            }
            log_step(
                cur, RunContext(run.environment, run.run_id, run.os_user, run.client_host, details),
                "repair", v, m.name, m.checksum, success=True, started_at=_now(), execution_ms=0,
            )  # fmt: skip
        cur.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _describe_change(version: int, path: Path, recorded: str, now: str) -> RepairedFile:
    entry = RepairedFile(version, str(path), recorded, now, None)
    found = applied_text_from_git(path, recorded)
    current = path.read_bytes()
    current_text = (current[3:] if current.startswith(b"\xef\xbb\xbf") else current).decode("utf-8", "replace")
    current_text = current_text.replace("\r\n", "\n").replace("\r", "\n")
    if found:
        commit, old = found
        entry.applied_text_from = commit
        entry.diff = list(
            difflib.unified_diff(
                old.splitlines(), current_text.splitlines(), f"{path.name} (applied, {commit[:12]})",
                f"{path.name} (now)", lineterm="",
            )
        )  # fmt: skip
        entry.statements_changed = _statements_differ(old, current_text)
    return entry


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _rollback(conn) -> None:
    if not conn.closed:
        try:
            with conn.cursor() as cur:
                cur.execute("ROLLBACK")
        except psycopg2.Error:
            pass


# --------------------------------------------------------------------------- baseline


@dataclass
class BaselineResult:
    target: str
    baseline_to: int
    recorded: list[int]
    checked_objects: int
    run_id: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def baseline(
    target: Target,
    migrations: list[Migration],
    to_version: int | None,
    *,
    confirm: Confirm | None = None,
    lock_wait: float | None = None,
) -> BaselineResult:
    """Record migrations 1..to_version as applied on a database that already has their schema (built by
    psql or another tool), after checking that every table, column and index they declare exists."""
    from .inspection import _missing_objects, declared_objects

    if to_version is None:
        raise UsageError(
            "baseline needs --to VERSION: the newest migration the database already has", "e.g. baseline --to 6"
        )
    if not any(m.version == to_version for m in migrations):
        known = f"{migrations[0].version:03d}..{migrations[-1].version:03d}" if migrations else "none"
        raise UsageError(f"--to {to_version}: no such migration (known: {known})", "pass an existing migration number")
    plan = [m for m in migrations if m.version <= to_version]
    expected = declared_objects(plan)
    run = RunContext(environment=target.environment.name, details={"baseline_to": to_version})
    conn = connect(target)
    try:
        cur = conn.cursor()

        def refuse_existing_history() -> None:
            applied = read_applied(cur)
            if applied:
                raise UsageError(
                    f"{target.label} already has bridge-db history (head {max(applied):03d}): baseline is for a "
                    "database bridge-db has never migrated; nothing changed",
                    "run migrate to apply what is pending (status lists it)",
                )

        refuse_existing_history()
        problems = _missing_objects(cur, expected)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValidationFailed(
                f"the database does not have what migrations 001..{to_version:03d} declare: {problems[0]}{more}; "
                "nothing was recorded",
                "baseline only to the newest migration the database really has, or apply them with migrate",
                problems=problems,
            )
        if _needs_confirmation(target):
            _ask(
                confirm,
                f"Record migrations 001..{to_version:03d} as applied on {target.label} without running them?",
                "baseline",
            )
        wait = target.environment.policy.lock_wait_seconds if lock_wait is None else lock_wait
        with migration_lock(conn, wait):
            cur.execute("BEGIN")
            try:
                ensure_history_tables(cur)
                refuse_existing_history()
                started = _now()
                for m in plan:
                    cur.execute(
                        "INSERT INTO public.schema_migrations (version, name, checksum, execution_ms, "
                        "rollback_checksum) VALUES (%s, %s, %s, 0, %s)",
                        (m.version, m.name, m.checksum, m.rollback_checksum),
                    )
                    log_step(cur, run, "baseline", m.version, m.name, m.checksum, success=True, started_at=started,
                             execution_ms=0)  # fmt: skip
                cur.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
    except psycopg2.Error as exc:
        raise _database_error(target, conn, exc) from None
    finally:
        conn.close()
    checked = len(expected["tables"]) + len(expected["indexes"]) + sum(len(c) for c in expected["tables"].values())
    return BaselineResult(target.label, to_version, [m.version for m in plan], checked, run.run_id)


# --------------------------------------------------------------------------- wait


@dataclass
class WaitResult:
    target: str
    waited_s: float
    server_version: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def wait_for(target: Target) -> WaitResult:
    """Connect (retrying until target.wait_seconds have passed) and ask the server its version."""
    from .errors import ConnectionFailed

    started = time.monotonic()
    try:
        conn = connect(target, start_embedded=False)
    except ConnectionFailed as exc:
        if target.embedded is not None:  # nobody else starts it: say who does
            exc.next_step = "the embedded dev database is not running: start it with `invoke db.up` (or migrate)"
        raise
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version')")
            version = cur.fetchone()[0]
    except psycopg2.Error as exc:
        raise _database_error(target, conn, exc) from None
    finally:
        conn.close()
    return WaitResult(target.label, round(time.monotonic() - started, 2), version)
