"""Plan, apply, roll back, inspect and verify migrations: the whole path from `migrate` to COMMIT.

Read top to bottom: `migrate()` and `rollback()` both go through `_execute()`, which connects, parses the
likely plan, takes the advisory lock, validates history against the files, plans, checks prerequisites and
confirmation, takes the production backup, then `_run_plan()` runs each migration and its history row in
one transaction (`_run_unit()`), or statement by statement for a no-transaction file. One `RunState`
carries what every step shares. status and verify, which only read, are in `inspection`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.sql

from .connection import LOCK_KEY, NO_IDLE_TIMEOUTS, Target, connect, cursor_for, lost_connection, migration_lock
from .discovery import Migration, SqlFile, Statement
from .errors import (
    BackupFailed,
    BridgeDbError,
    HistoryUnusable,
    MigrationFailed,
    PrerequisiteMissing,
    RefusedByPolicy,
    UsageError,
    ValidationFailed,
)
from .history import (
    AppliedMigration,
    RunContext,
    clear_progress,
    ensure_history_tables,
    log_step,
    read_applied,
    read_progress,
    record_applied,
    record_progress,
    record_rolled_back,
)

UNDEFINED_FILE = "58P01"  # "could not load library"/"could not access file": a package missing on the host

# --------------------------------------------------------------------------- results


class Direction(StrEnum):
    """Which way a run goes. The value is what the history log records for each step."""

    UP = "apply"  # `migrate`
    DOWN = "rollback"  # `rollback`

    def file(self, migration: Migration) -> SqlFile:
        return migration.forward if self is Direction.UP else migration.rollback


@dataclass
class StepResult:
    action: Direction
    version: int
    name: str
    file: str
    execution_ms: int = 0
    already_existed: int = 0  # objects skipped by IF NOT EXISTS: >0 when adopting a psql-built schema
    sql: str | None = None  # filled for --dry-run

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class RunResult:
    direction: Direction
    target: str
    dry_run: bool
    head_before: int | None
    head_after: int | None
    steps: list[StepResult] = field(default_factory=list)
    total_ms: int = 0
    single_transaction: bool = False
    run_id: str | None = None
    backup: str | None = None  # the backup taken before this run (production policy)
    restore_point: dict | None = None  # {"name", "lsn"}: pg_create_restore_point before the first DDL
    warnings: list[str] = field(default_factory=list)  # said once each, before any DDL
    schema_file: str | None = None  # schema.sql written after the run (dev)

    def as_dict(self) -> dict:
        data = dict(self.__dict__)
        del data["direction"]
        # the verb's name, as --json has always said it
        return {"action": "migrate" if self.direction is Direction.UP else "rollback", **data,
                "steps": [s.as_dict() for s in self.steps]}  # fmt: skip


class Progress:
    """What a front-end is told while a run goes on. The default says nothing."""

    def waiting_for_lock(self, holders: list[dict]) -> None: ...

    def step_started(self, direction: Direction, migration: Migration, index: int, total: int) -> None: ...

    def step_finished(self, step: StepResult) -> None: ...

    def backing_up(self, folder: Path) -> None: ...

    def waiting_for_backup_folder(self, folder: Path, wait_seconds: float) -> None: ...

    def retrying(self, migration: Migration, attempt: int, retries: int, delay: float, blockers: list) -> None: ...

    def warning(self, message: str) -> None: ...


# --------------------------------------------------------------------------- migrate and rollback


def migrate(
    target: Target,
    migrations: list[Migration],
    *,
    to_version: int | None = None,
    dry_run: bool = False,
    single_transaction: bool | None = None,
    lock_wait: float | None = None,
    progress: Progress | None = None,
    run: RunContext | None = None,
    confirm: Callable[[str], bool] | None = None,
    backup_dir: Path | None = None,
) -> RunResult:
    """Bring the target up to `to_version` (default: the newest file).

    Under a production policy (backup_before_migrate) the run is: preflight (connect, lock, validate,
    extensions, free disk) -> confirmation -> backup -> verified backup -> every pending migration in ONE
    transaction -> the declared schema checked inside it -> COMMIT. Anything failing before COMMIT
    leaves the database as it was; a failed backup stops before any DDL.
    """
    _check_version_arg(migrations, to_version)
    return _execute(
        target,
        Direction.UP,
        migrations,
        lambda applied: plan_pending(migrations, applied, to_version),
        dry_run=dry_run,
        single_transaction=single_transaction,
        lock_wait=lock_wait,
        progress=progress,
        run=run,
        confirm=confirm,
        backup_dir=backup_dir,
    )


def rollback(
    target: Target,
    migrations: list[Migration],
    *,
    steps: int | None = None,
    to_version: int | None = None,
    dry_run: bool = False,
    single_transaction: bool | None = None,
    lock_wait: float | None = None,
    progress: Progress | None = None,
    run: RunContext | None = None,
    confirm: Callable[[str], bool] | None = None,
    backup_dir: Path | None = None,
) -> RunResult:
    """Undo the newest `steps` migrations (default 1), or every one newer than `to_version`.
    Under a production policy a verified backup comes first: a rollback drops data."""
    if steps is not None and to_version is not None:
        raise UsageError("give either --steps or --to, not both", "e.g. rollback --steps 1, or rollback --to 3")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be 1 or more (got {steps})", "e.g. rollback --steps 1")
    if to_version is not None and to_version < 0:
        raise UsageError(f"--to must be 0 or a migration number (got {to_version})", "--to 0 undoes everything")

    def choose(applied: dict[int, AppliedMigration]) -> list[Migration]:
        newest_first = [m for m in reversed(migrations) if m.version in applied]
        if to_version is not None:
            return [m for m in newest_first if m.version > to_version]
        return newest_first[: steps or 1]

    return _execute(
        target,
        Direction.DOWN,
        migrations,
        choose,
        dry_run=dry_run,
        single_transaction=single_transaction,
        lock_wait=lock_wait,
        progress=progress,
        run=run,
        confirm=confirm,
        backup_dir=backup_dir,
    )


def _execute(
    target: Target,
    direction: Direction,
    migrations: list[Migration],
    choose_plan: Callable[[dict[int, AppliedMigration]], list[Migration]],
    *,
    dry_run: bool,
    single_transaction: bool | None,
    lock_wait: float | None,
    progress: Progress | None,
    run: RunContext | None,
    confirm: Callable[[str], bool] | None = None,
    backup_dir: Path | None = None,
) -> RunResult:
    """Connect, lock, validate history, plan, check, run: the one path both directions take."""
    progress = progress or Progress()
    policy = target.environment.policy
    guarded = policy.backup_before_migrate  # the production path: backup, one transaction
    single = policy.single_transaction if single_transaction is None else single_transaction
    single = single or guarded
    run = run or RunContext(environment=target.environment.name)
    started = time.perf_counter()
    up = direction is Direction.UP

    conn = connect(target)
    try:
        cur = conn.cursor()
        _fresh_session(cur, target, locked=False)
        if not dry_run:
            # Parse what is most likely the plan before queueing for the lock: a large file must not keep
            # other runners waiting while it is split. Under the lock the plan is read again; a file that
            # only joins it then (history changed meanwhile) is parsed there, still before any DDL.
            tentative = choose_plan(read_applied(cur))
            _parse_all(direction.file(m) for m in tentative)
        with _locked(conn, target, lock_wait, progress, dry_run):
            applied = read_applied(cur)
            _raise_on_problems(history_problems(migrations, applied))
            plan = choose_plan(applied)
            versions = {m.version for m in plan}
            after = set(applied) | versions if up else set(applied) - versions
            result = RunResult(
                direction,
                target.label,
                dry_run,
                head_before=max(applied, default=None),
                head_after=max(after, default=None),
                single_transaction=single,
                run_id=run.run_id,
            )
            if dry_run:
                _parse_all(direction.file(m) for m in plan)  # what the real run would refuse, the dry run does too
                result.steps = [_planned(direction, m) for m in plan]
                return result
            if not plan:
                return result
            _parse_all(direction.file(m) for m in plan)  # a syntax error in any file stops the run before any DDL
            if up:
                check_required_extensions(cur, plan)
            if policy.require_confirmation or (not up and target.foreign):
                cur.execute("SELECT current_database()")  # named as the server says (a service, PGDATABASE)
                _confirm_plan(confirm, target, direction, plan, cur.fetchone()[0])
            post_check = None
            if guarded:
                # the archive is judged before the backup (a refusal costs nothing); the restore point is
                # taken after it, the closest it can be to the first DDL
                archive = _archive_before_run(cur, target, result, progress)
                result.backup = _backup_first(target, backup_dir, run, progress)
                if archive is not None:
                    result.restore_point = _restore_point_first(cur, target, run, result, progress)
                if up:
                    post_check = _declared_schema_check(migrations, applied, plan)
            state = RunState(conn, target, direction, run, progress, total=len(plan))
            result.steps = _run_plan(state, plan, single, post_check)
            result.total_ms = _ms_since(started)
            return result
    except psycopg2.Error as exc:  # outside a migration step: connection lost, privileges, ...
        raise _database_error(target, conn, exc) from None
    finally:
        conn.close()


def plan_pending(
    migrations: list[Migration], applied: dict[int, AppliedMigration], to_version: int | None = None
) -> list[Migration]:
    return [m for m in migrations if m.version not in applied and (to_version is None or m.version <= to_version)]


@dataclass(frozen=True)
class Problem:
    cause: str
    next_step: str

    def __str__(self) -> str:
        return f"{self.cause}; {self.next_step}"


def history_problems(migrations: list[Migration], applied: dict[int, AppliedMigration]) -> list[Problem]:
    """Everything that makes it unsafe to run: edited or missing applied files, out-of-order history."""
    by_version = {m.version: m for m in migrations}
    problems = []
    for version, row in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            problems.append(
                Problem(
                    f"applied migration {version:03d} ({row.name}) has no file in migrations/",
                    "restore the file from version control (never delete an applied migration)",
                )
            )
        elif migration.checksum != row.checksum:
            problems.append(
                Problem(
                    f"{migration.forward.path.name} was changed after it was applied "
                    f"(applied checksum {row.checksum}, file checksum {migration.checksum})",
                    "restore the file as it was applied (git log -p) and put the change in a new migration",
                )
            )
        elif row.rollback_checksum is not None and migration.rollback_checksum != row.rollback_checksum:
            problems.append(
                Problem(
                    f"{migration.rollback.path.name} was changed after its migration was applied "
                    f"(recorded checksum {row.rollback_checksum}, file checksum {migration.rollback_checksum})",
                    "restore the rollback file as it was when the migration was applied (git log -p); "
                    "undo further changes with a new migration",
                )
            )
    head = max(applied, default=0)
    for migration in migrations:
        if migration.version < head and migration.version not in applied:
            problems.append(
                Problem(
                    f"{migration.forward.path.name} is pending but newer migration {head:03d} is applied",
                    "roll back to before it, or renumber the unapplied one after the head",
                )
            )
    return problems


def check_required_extensions(cur, plan: Iterable[Migration]) -> None:
    """Refuse before any DDL when a migration's `-- bridge:requires-extension` is not installed."""
    needed: dict[str, str] = {}
    for migration in plan:
        for ext in migration.required_extensions:
            needed.setdefault(ext, migration.forward.path.name)
    if not needed:
        return
    cur.execute("SELECT extname FROM pg_extension WHERE extname = ANY(%s)", (list(needed),))
    missing = [ext for ext in needed if ext not in {r[0] for r in cur.fetchall()}]
    if not missing:
        return
    cur.execute(
        "SELECT current_database(), name FROM pg_available_extensions RIGHT JOIN (SELECT 1) one ON name = ANY(%s)",
        (missing,),
    )
    rows = cur.fetchall()
    database = rows[0][0] if rows and rows[0][0] else "omninode_bridge"
    installable = {r[1] for r in rows if r[1]}
    # Extension names were validated at discovery; the database name comes from the server: quote both.
    commands = " ".join(
        psycopg2.sql.SQL("CREATE EXTENSION IF NOT EXISTS {};").format(psycopg2.sql.Identifier(ext)).as_string(cur)
        for ext in missing
    )
    import shlex

    hint = f"as a superuser run: psql -d {shlex.quote(database)} -c {shlex.quote(commands)}"
    not_installed = [ext for ext in missing if ext not in installable]
    if not_installed:
        hint = f"install the server's contrib package (e.g. apt-get install postgresql-contrib), then {hint}"
    raise PrerequisiteMissing(
        f"required extension(s) missing in database {database}: {', '.join(missing)} "
        f"(needed by {', '.join(sorted(set(needed[e] for e in missing)))})",
        hint,
        missing=missing,
    )


# --------------------------------------------------------------------------- running steps


@dataclass
class RunState:
    """What every step of one run shares: the connection, the target, the direction, the run's identity
    for the log rows, who hears of progress, and how many migrations the plan holds."""

    conn: Any
    target: Target
    direction: Direction
    run: RunContext
    progress: Progress
    total: int


@dataclass
class Attempt:
    """One migration file being run: when it started, for its log row and its time."""

    migration: Migration
    sql_file: SqlFile
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    t0: float = field(default_factory=time.perf_counter)


def _run_plan(state: RunState, plan: list[Migration], single: bool, post_check: Callable | None) -> list[StepResult]:
    """Each migration in its own transaction, or (single) the whole plan, history tables and
    `post_check` included, in one. A transaction that hits lock_timeout is rolled back and retried
    with jittered backoff, so a migration never queues behind a long transaction while blocking
    every query behind itself. Migrations marked no-transaction run statement by statement."""
    direction = state.direction
    odd = next((m for m in plan if not direction.file(m).transactional), None)
    if single and odd:
        raise ValidationFailed(
            f"{direction.file(odd).path.name} is marked no-transaction and cannot join a single-transaction run",
            f"run it on its own: first up to {odd.version - 1 if direction is Direction.UP else odd.version}, then it",
        )
    units = [plan] if single else [[m] for m in plan]
    done: list[StepResult] = []
    for unit in units:
        if not direction.file(unit[0]).transactional:
            done.append(_run_without_transaction(state, unit[0], len(done) + 1))
            continue
        check = post_check if unit is units[-1] else None
        done += _with_lock_retries(
            state.target, unit[0], partial(_run_unit, state, unit, len(done), check), state.progress
        )
    return done


def _run_without_transaction(state: RunState, migration: Migration, index: int) -> StepResult:
    """A `-- bridge:no-transaction` file: each statement on its own, because CREATE INDEX CONCURRENTLY
    cannot run inside a transaction. The session advisory lock does not get in its way (it holds no
    transaction open). After each statement its index is recorded, so a rerun after a crash resumes
    after the last completed one; an invalid index left by a failed concurrent build is dropped before
    the build runs again (IF NOT EXISTS would otherwise keep the broken index)."""
    conn, target, direction = state.conn, state.target, state.direction
    sql_file = direction.file(migration)
    cur = conn.cursor()
    state.progress.step_started(direction, migration, index, state.total)
    attempt = Attempt(migration, sql_file)
    _fresh_session(cur, target, timeouts="session")
    ensure_history_tables(cur)
    resume_after = read_progress(cur, migration.version, direction, sql_file.checksum)
    for number, statement in enumerate(sql_file.statements):
        if number <= resume_after:
            # A SET before the resume point shapes the statements after it (search_path, work_mem, ...):
            # the session was reset, so it runs again; SET is repeatable by construction.
            if statement.kind == "VariableSetStmt":
                _run_alone(state, cur, attempt, statement)
            continue
        _with_lock_retries(target, migration, partial(_run_alone, state, cur, attempt, statement), state.progress)
        _write_history(
            conn,
            target,
            migration,
            partial(record_progress, cur, migration.version, direction, sql_file.checksum, number),
            transactional=False,
        )
    elapsed = _ms_since(attempt.t0)
    _fresh_session(cur, target, after=migration)

    def record() -> None:
        cur.execute("BEGIN")
        _record_done(state, cur, attempt, elapsed)
        clear_progress(cur, migration.version)
        cur.execute("COMMIT")

    _write_history(conn, target, migration, record, transactional=False)
    step = StepResult(direction, migration.version, migration.name, sql_file.path.name, elapsed)
    state.progress.step_finished(step)
    return step


def _run_alone(state: RunState, cur, attempt: Attempt, statement: Statement) -> None:
    """One statement of a no-transaction file. Its progress row is written after it, not with it (there
    is no transaction to share), so a run killed in between repeats it: discovery admits only
    statements whose repetition changes nothing, and those that would fail on a repeat are checked here
    against the catalog first (an index already built and valid, an index already dropped, an enum
    value already added: the statement has done its work)."""
    if _already_done(cur, statement):
        return
    if statement.kind == "IndexStmt" and statement.repeat_check and statement.repeat_check[0] == "index exists":
        # the index's name as PostgreSQL reads it back: quoted, and in its table's schema when that is named
        cur.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indexrelid = to_regclass(%s) AND NOT indisvalid",
            (statement.repeat_check[1],),
        )
        row = cur.fetchone()
        if row:
            cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {row[0]}")  # regclass text: quoted and qualified as needed
    try:
        cur.execute(statement.sql)
    except psycopg2.Error as exc:
        raise _step_failed(state, attempt, statement, exc) from None


def _run_unit(state: RunState, unit: list[Migration], offset: int, post_check: Callable | None) -> list[StepResult]:
    """One transaction: BEGIN, timeouts, the unit's migrations and history rows, checks, COMMIT."""
    cur = state.conn.cursor()
    cur.execute("BEGIN")
    _fresh_session(cur, state.target, timeouts="transaction")
    if state.direction is Direction.UP and offset == 0:  # the run's first transaction creates them
        ensure_history_tables(cur)
    steps = []
    for index, migration in enumerate(unit, start=offset + 1):
        state.progress.step_started(state.direction, migration, index, state.total)
        steps.append(_run_step(state, cur, migration))
    if post_check:
        _check_or_fail(state, cur, post_check)
    _commit_or_fail(state, cur, unit[-1])
    for step in steps:
        state.progress.step_finished(step)
    return steps


def _with_lock_retries(target: Target, migration: Migration, attempt_once, progress: Progress):
    """Run attempt_once(); when it hits lock_timeout, wait (jittered, exponential) and run it again."""
    policy = target.environment.policy
    for attempt in range(policy.lock_retries + 1):
        try:
            return attempt_once()
        except LockBlocked as blocked:
            if attempt == policy.lock_retries:
                who = "; ".join(_describe_blocker(b) for b in blocked.blockers) or "no session holds it any more"
                raise MigrationFailed(
                    f"{blocked.file}:{blocked.line}: could not get a lock within {policy.lock_timeout_ms} ms, "
                    f"{policy.lock_retries + 1} attempts; blocking: {who}",
                    "wait for those sessions to finish (or end them with pg_terminate_backend) and run again; "
                    "nothing from this migration was applied",
                    blockers=blocked.blockers,
                    version=migration.version,
                ) from None
            import random

            delay = min(30.0, policy.retry_backoff_ms / 1000 * 2**attempt) * random.uniform(0.5, 1.5)
            progress.retrying(migration, attempt + 1, policy.lock_retries, delay, blocked.blockers)
            time.sleep(delay)
    raise AssertionError("unreachable")


class LockBlocked(Exception):
    """A statement hit lock_timeout; its transaction was rolled back and may be retried."""

    def __init__(self, file: str, line: int | None, blockers: list[dict]) -> None:
        super().__init__(file)
        self.file, self.line, self.blockers = file, line, blockers


def blockers_of(conn, relations: tuple[str, ...]) -> list[dict]:
    """Other sessions holding locks on the tables a statement names: who a migration waited for."""
    if not relations:
        return []
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT DISTINCT a.pid, a.usename, a.application_name, a.state,
                   extract(epoch FROM now() - a.xact_start)::int, left(a.query, 120), l.mode
              FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE l.granted AND l.locktype = 'relation' AND a.pid <> pg_backend_pid()
               AND l.relation = ANY (SELECT to_regclass(r) FROM unnest(%s::text[]) r)
             ORDER BY 5 DESC NULLS LAST
            """,
            (list(relations),),
        )
        keys = ("pid", "user", "application", "state", "transaction_seconds", "query", "mode")
        return [dict(zip(keys, row)) for row in cur.fetchall()]


def _describe_blocker(b: dict) -> str:
    return (
        f"pid {b['pid']} ({b['user']}, {b['application'] or 'no app'}, {b['state']}, "
        f"transaction open {b['transaction_seconds']}s, holds {b['mode']})"
    )


def _run_step(state: RunState, cur, migration: Migration) -> StepResult:
    """Run one file's statements and write its history and log rows, inside the caller's transaction.

    On a failing statement: ROLLBACK, log the failure in its own transaction, raise MigrationFailed
    naming file and line. The database is left as it was before the transaction began.
    """
    conn, target = state.conn, state.target
    attempt = Attempt(migration, state.direction.file(migration))
    notices_before = len(conn.notices)
    statement = None
    try:
        _fresh_session(cur, target, timeouts="transaction")  # each migration starts from the same state
        if not _ran_whole(conn, cur, attempt.sql_file):
            for statement in attempt.sql_file.statements:
                cur.execute(statement.sql)
        elapsed = _ms_since(attempt.t0)
    except psycopg2.Error as exc:
        raise _step_failed(state, attempt, statement, exc) from None
    except BaseException:  # Ctrl-C or a bug: never leave the transaction open
        _rollback_quietly(conn)
        raise
    try:
        # The file may have changed role, search_path or read-only mode: the engine's writes get the
        # engine's session back, and their failure is the engine's, never blamed on the file.
        _write_history(
            conn,
            target,
            migration,
            partial(_record_in_engine_session, state, cur, attempt, elapsed),
        )
    except BaseException:
        _rollback_quietly(conn)
        raise
    skipped = sum(1 for n in conn.notices[notices_before:] if "already exists, skipping" in n)
    return StepResult(state.direction, migration.version, migration.name, attempt.sql_file.path.name, elapsed, skipped)


# A savepoint before a file sent whole: a statement that fails takes the file back to it, and the file
# then runs again statement by statement to find the failing one. A migration cannot touch it: discovery
# refuses transaction control (SAVEPOINT, ROLLBACK TO, RELEASE) in a file.
_FILE_SAVEPOINT = "bridge_db_file"


def _ran_whole(conn, cur, sql_file: SqlFile) -> bool:
    """Run a transactional file of several statements in the caller's transaction in one round trip (a
    simple query of several statements runs them in order, each under statement_timeout and
    lock_timeout, as one by one), behind a savepoint. True when it ran; False when the file has one
    statement, or when a statement failed: the file is then rolled back to the savepoint, and the caller
    runs it statement by statement, so that the failure is raised by the statement itself (its file and
    line, the tables it waited for, its retry, exactly as before)."""
    if len(sql_file.statements) < 2:
        return False
    try:
        cur.execute(f"SAVEPOINT {_FILE_SAVEPOINT};\n{sql_file.text}")
        return True
    except psycopg2.Error:
        if conn.closed:
            raise
        cur.execute(f"ROLLBACK TO SAVEPOINT {_FILE_SAVEPOINT}")
        return False


def _record_in_engine_session(state: RunState, cur, attempt: Attempt, elapsed: int) -> None:
    _fresh_session(cur, state.target, timeouts="transaction", after=attempt.migration)
    _record_done(state, cur, attempt, elapsed)


def _record_done(state: RunState, cur, attempt: Attempt, elapsed: int) -> None:
    """The history row (added or removed) and the success log row, in the caller's transaction."""
    m = attempt.migration
    if state.direction is Direction.UP:
        record_applied(cur, m.version, m.name, m.checksum, elapsed, m.rollback_checksum)
    else:
        record_rolled_back(cur, m.version)
    log_step(
        cur,
        state.run,
        state.direction,
        m.version,
        m.name,
        m.checksum,
        success=True,
        started_at=attempt.started_at,
        execution_ms=elapsed,
    )


def _check_or_fail(state: RunState, cur, check: Callable) -> None:
    problems = check(cur)
    if problems:
        _rollback_quietly(state.conn)
        raise MigrationFailed(
            f"post-apply schema check failed, everything was rolled back: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            "the database already differs from what the migrations declare; run `verify` and fix the drift",
            problems=problems,
        )


def _confirm_plan(confirm, target: Target, direction: Direction, plan: list[Migration], database: str) -> None:
    names = ", ".join(m.label for m in plan)
    question = (
        f"{'Apply' if direction is Direction.UP else 'Roll back'} {len(plan)} migration(s) on database "
        f"{database} ({target.label}): {names}?"
    )
    reached_by = "the DSN reaches" if target.dsn is not None else "libpq's variables name"
    why = (
        f"{reached_by} database {database}, which is not environment {target.environment.name}'s: a rollback there"
        if target.foreign and not target.environment.policy.require_confirmation
        else target.environment.name
    )
    if confirm is None or not confirm(question):
        raise RefusedByPolicy(
            f"{why} requires confirmation and it was not given; nothing changed",
            "answer yes on a terminal, or pass --yes",
        )


def _backup_first(target: Target, backup_dir: Path | None, run: RunContext, progress: Progress) -> str:
    """Check the disk, take and verify a backup, and record it in the run's log rows."""
    from .backup import free_space_for_backup, take_backup

    if backup_dir is None:
        raise UsageError(
            f"{target.environment.name} backs up before migrating but no backup folder was given",
            "set backup_dir in environments.toml",
        )
    needed, free = free_space_for_backup(target, backup_dir)
    if free < needed:
        raise BackupFailed(
            f"not enough free space in {backup_dir} for a backup: {free // 2**20} MiB free, "
            f"up to {needed // 2**20} MiB needed (the database's size); nothing was changed",
            "free space or point backup_dir elsewhere, then run again",
        )
    progress.backing_up(backup_dir)
    # a scheduled backup may hold the folder: wait for it as long as for the migration lock
    result = take_backup(target, backup_dir, on_wait=progress.waiting_for_backup_folder)
    run.details.update(backup=result.path, backup_sha256=result.manifest.sha256)
    return result.path


# --------------------------------------------------------------------------- restore points (docs/recovery.md)

MAX_RESTORE_POINT_NAME = 63  # MAXFNAMELEN - 1: pg_create_restore_point refuses a longer name
_GRANT_RESTORE_POINT = "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal() TO {user}"


def restore_point_name(run_id: str, head: int | None) -> str:
    """bridge-<run id>-before-<head>: names the run and the head it started from (at most 61 bytes)."""
    name = f"bridge-{run_id}-before-{head or 0:03d}"
    if len(name.encode()) > MAX_RESTORE_POINT_NAME:
        raise AssertionError(f"restore point name too long: {name}")  # a uuid and an int cannot make it
    return name


@dataclass
class ArchiveState:
    mode: str  # archive_mode: off | on | always
    last_archived_wal: str | None
    last_archived_at: datetime | None
    last_failed_wal: str | None
    last_failed_at: datetime | None

    @property
    def on(self) -> bool:
        return self.mode != "off"

    @property
    def failing(self) -> bool:
        """The archiver's newest attempt failed: WAL piles up in pg_wal and nothing newer is recoverable."""
        return self.on and self.last_failed_at is not None and (
            self.last_archived_at is None or self.last_failed_at > self.last_archived_at
        )


def read_archive_state(cur) -> ArchiveState:
    cur.execute(
        "SELECT current_setting('archive_mode'), last_archived_wal, last_archived_time, last_failed_wal, "
        "last_failed_time FROM pg_stat_archiver"
    )
    return ArchiveState(*cur.fetchone())


def _archive_trouble(target: Target, result: RunResult, progress: Progress, cause: str, next_step: str) -> None:
    """A production run cannot get its recovery point: warn once, or refuse (archive_failure = refuse)
    before the backup and any DDL."""
    if target.environment.policy.archive_failure == "refuse":
        raise RefusedByPolicy(
            f"{cause}; archive_failure = refuse, so nothing was changed", next_step, archive_problem=cause
        )
    message = f"{cause}; going on without a restore point ({next_step})"
    result.warnings.append(message)
    progress.warning(message)


def _archive_before_run(cur, target: Target, result: RunResult, progress: Progress) -> ArchiveState | None:
    """Before a production run: is the WAL archive healthy? None when no restore point is to be taken."""
    if not target.environment.policy.restore_points:
        return None
    archive = read_archive_state(cur)
    if not archive.on:
        message = (
            "WAL archiving is off on this server (archive_mode = off): no restore point is taken, the backup "
            "taken first is the way back (set up pgBackRest with the postgresql_pitr role, docs/recovery.md)"
        )
        result.warnings.append(message)
        progress.warning(message)
        return None
    if archive.failing:
        _archive_trouble(
            target, result, progress,
            f"the WAL archive is failing (last failed {archive.last_failed_wal} at "
            f"{archive.last_failed_at:%Y-%m-%d %H:%M:%S%z}, last archived {archive.last_archived_wal or 'none'})",
            "run `bridge-db pitr status` and fix the archive (the server log names the archive_command's error)",
        )  # fmt: skip
        return None
    return archive


def _restore_point_first(
    cur, target: Target, run: RunContext, result: RunResult, progress: Progress
) -> dict | None:
    """pg_create_restore_point('bridge-<run id>-before-<head>') as the login user (not the owner role),
    then pg_switch_wal() so that the segment holding it reaches the archive now; the name and LSN go
    into every log row of the run (details.restore_point)."""
    name = restore_point_name(run.run_id, result.head_before)
    cur.execute("RESET ROLE")  # the grant is the migration user's; _fresh_session sets the owner role again
    try:
        cur.execute("SELECT pg_create_restore_point(%s)::text, current_user", (name,))
        lsn, user = cur.fetchone()
    except psycopg2.errors.InsufficientPrivilege:
        cur.execute("SELECT current_user")
        user = cur.fetchone()[0]
        _archive_trouble(
            target, result, progress,
            f"{user} may not create a restore point (pg_create_restore_point needs a superuser or a grant)",
            "as a superuser, in this database: " + _GRANT_RESTORE_POINT.format(user=user),
        )  # fmt: skip
        return None
    point = {"name": name, "lsn": lsn}
    try:
        cur.execute("SELECT pg_switch_wal()")
    except psycopg2.errors.InsufficientPrivilege:
        message = (
            f"restore point {name} created, but {user} may not force its WAL segment to the archive "
            "(pg_switch_wal); it is archived when the segment fills or at archive_timeout. As a superuser, in this "
            "database: "
            + _GRANT_RESTORE_POINT.format(user=user)
        )
        result.warnings.append(message)
        progress.warning(message)
    run.details["restore_point"] = point
    return point


def _declared_schema_check(migrations: list[Migration], applied: dict, plan: list[Migration]):
    from .inspection import _missing_objects, declared_objects  # inspection builds on this module

    versions = set(applied) | {m.version for m in plan}
    expected = declared_objects([m for m in migrations if m.version in versions])
    return lambda cur: _missing_objects(cur, expected)


def _commit_or_fail(state: RunState, cur, last: Migration) -> None:
    try:
        cur.execute("COMMIT")
    except psycopg2.Error as exc:  # deferred constraints fire here
        raise _step_failed(state, Attempt(last, state.direction.file(last)), None, exc) from None


def _step_failed(state: RunState, attempt: Attempt, statement: Statement | None, exc: psycopg2.Error) -> Exception:
    """The error to raise for a failed statement (or COMMIT), after rolling back and logging the failure."""
    conn, migration, sql_file = state.conn, attempt.migration, attempt.sql_file
    if conn.closed:
        return lost_connection(state.target, exc)
    _rollback_quietly(conn)
    error = (getattr(exc, "pgerror", None) or str(exc)).strip()
    first_line = error.splitlines()[0] if error else type(exc).__name__
    for prefix in ("ERROR:  ", "FATAL:  "):
        first_line = first_line.removeprefix(prefix)
    line = None
    if statement is not None:
        line = statement.line
        position = getattr(getattr(exc, "diag", None), "statement_position", None)
        if position:
            line += statement.sql[: int(position) - 1].count("\n")
    try:  # the failure is worth a log row even though the step's changes are gone
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            log_step(
                cur,
                state.run,
                state.direction,
                migration.version,
                migration.name,
                migration.checksum,
                success=False,
                started_at=attempt.started_at,
                execution_ms=_ms_since(attempt.t0),
                error=first_line,
            )
            cur.execute("COMMIT")
    except psycopg2.Error:
        _rollback_quietly(conn)
    if isinstance(exc, psycopg2.errors.LockNotAvailable) and statement is not None:
        return LockBlocked(sql_file.path.name, statement.line, blockers_of(conn, statement.relations))
    where = f"{sql_file.path.name}:{line}" if line else sql_file.path.name
    if exc.pgcode == UNDEFINED_FILE:  # the server cannot load a library: the host lacks a package, not the SQL
        from .extensions import missing_library

        return missing_library(f"{where} (rolled back, nothing recorded)", exc)
    return MigrationFailed(
        f"{where}: {first_line} (sqlstate {getattr(exc, 'pgcode', None) or '?'})",
        f"{'migration' if state.direction is Direction.UP else 'rollback'} rolled back, nothing from it was "
        "recorded; fix the SQL and run again",
        file=str(sql_file.path),
        line=line,
        version=migration.version,
        sqlstate=getattr(exc, "pgcode", None),
    )


def _database_error(target: Target, conn, exc: psycopg2.Error) -> BridgeDbError:
    """A database error outside a migration's own statements: a lost connection, missing privileges,
    or something unexpected; never mislabelled as one of the others."""
    if conn.closed or isinstance(exc, psycopg2.OperationalError) and exc.pgcode is None:
        return lost_connection(target, exc)
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if exc.pgcode == UNDEFINED_FILE:
        from .extensions import missing_library

        return missing_library(target.label, exc)
    if exc.pgcode == "42501":
        return PrerequisiteMissing(
            f"{target.label}: {first_line}",
            "the migration user needs CREATE on schema public (GRANT CREATE ON SCHEMA public TO <user>, "
            "or make it the database owner); see README: Troubleshooting",
        )
    return BridgeDbError(
        f"{target.label}: unexpected database error: {first_line} (sqlstate {exc.pgcode})",
        "run again with the same arguments; if it persists, report it with this output",
    )


def _rollback_quietly(conn) -> None:
    if conn.closed:
        return
    try:
        with conn.cursor() as cur:
            cur.execute("ROLLBACK")
    except psycopg2.Error:
        pass


# --------------------------------------------------------------------------- reset (dev)


def reset_schema(
    target: Target, lock_wait: float | None = None, confirm: Callable[[str], bool] | None = None
) -> list[str]:
    """Drop and recreate schema public (tables, history and all) in ONE transaction, recreating the
    extensions that lived in it. The caller migrates afterwards. Refused unless the policy of the
    database it reaches allows it; anywhere but the embedded dev cluster it also asks first, naming
    the database (no terminal and no --yes: refused, nothing changed)."""
    if not target.environment.policy.allow_reset:
        raise RefusedByPolicy(
            f"reset is refused on environment {target.environment.name!r}: it drops every table",
            "reset is for dev; on other environments roll back with `rollback --to VERSION`",
        )
    if target.embedded is not None and not _is_embedded_cluster(target):
        # PGHOSTADDR or a service's hostaddr sent the connection elsewhere: not the cluster, so ask
        target = replace(target, embedded=None)
    if target.embedded is None:
        database = target.database or _current_database(target)
        question = (
            f"Reset drops every table of database {database} ({target.label}), which is not the embedded dev cluster."
        )
        if confirm is None or not confirm(question):
            raise RefusedByPolicy(
                f"reset of database {database} ({target.label}) was not confirmed: outside the embedded dev "
                "cluster it needs a confirmation; nothing changed",
                f"answer yes on a terminal, or pass --yes if you mean to empty {database}",
            )
    conn = connect(target)
    try:
        with migration_lock(conn, target.environment.policy.lock_wait_seconds if lock_wait is None else lock_wait):
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                    "WHERE n.nspname = 'public' ORDER BY e.extname"
                )
                extensions = [r[0] for r in cur.fetchall()]
                cur.execute("SELECT current_setting('server_version_num')::int")
                owner = "pg_database_owner" if cur.fetchone()[0] >= 140000 else "CURRENT_USER"
                cur.execute("BEGIN")
                try:
                    cur.execute("DROP SCHEMA public CASCADE")
                    cur.execute("CREATE SCHEMA public")
                    cur.execute(f"ALTER SCHEMA public OWNER TO {owner}")
                    cur.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
                    for ext in extensions:
                        cur.execute(
                            psycopg2.sql.SQL("CREATE EXTENSION {} SCHEMA public").format(psycopg2.sql.Identifier(ext))
                        )
                    cur.execute("COMMIT")
                except psycopg2.Error as exc:
                    if conn.closed:
                        raise
                    _rollback_quietly(conn)
                    raise MigrationFailed(
                        f"reset failed: {str(exc).strip().splitlines()[0]}",
                        "nothing was dropped; check the database owner's privileges",
                    ) from None
        return extensions
    except psycopg2.Error as exc:
        raise _database_error(target, conn, exc) from None
    finally:
        conn.close()


def _current_database(target: Target) -> str:
    """The database a target reaches when its connection does not name one (a service, PGDATABASE)."""
    with cursor_for(target) as cur:
        cur.execute("SELECT current_database()")
        return cur.fetchone()[0]


def _is_embedded_cluster(target: Target) -> bool:
    """Whether the connection reaches the embedded cluster itself (its socket, its data directory), and
    not whatever address PGHOSTADDR or a service's hostaddr names instead of the socket."""
    try:
        with cursor_for(target) as cur:
            cur.execute("SELECT inet_server_addr() IS NULL, current_setting('data_directory')")
            over_socket, data_directory = cur.fetchone()
    except psycopg2.Error:
        return False
    expected = getattr(target.embedded, "data_dir", None)
    return bool(over_socket) and expected is not None and os.path.realpath(data_directory) == os.path.realpath(expected)


# --------------------------------------------------------------------------- helpers


def _locked(conn, target: Target, lock_wait: float | None, progress: Progress, dry_run: bool):
    """The advisory lock for a run that writes; a dry run only reads and never waits on a lock."""
    from contextlib import nullcontext

    if dry_run:
        return nullcontext()
    wait = target.environment.policy.lock_wait_seconds if lock_wait is None else lock_wait
    return migration_lock(conn, wait, progress.waiting_for_lock)


# What a migration may have changed in its session, undone before the next one and before the engine's
# own writes. DISCARD ALL would do it but also drops the advisory lock and cannot run in a transaction.
# RESET ALL returns every setting to the session's default (ALTER DATABASE/ROLE ... SET included), but
# leaves the role alone: that is reset first, and the owner role set again afterwards.
_RESET_SESSION = (
    "SET SESSION AUTHORIZATION DEFAULT; RESET ROLE; RESET ALL; DEALLOCATE ALL; CLOSE ALL; UNLISTEN *; "
    "DISCARD TEMP; DISCARD SEQUENCES"
)


# Whether this session still holds the migration lock: a migration may have released it
# (pg_advisory_unlock_all(), pg_advisory_unlock(...)), and then nothing serialises the run any more.
_HOLDS_LOCK = (
    "EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted "
    f"AND classid = {(LOCK_KEY >> 32) & 0xFFFFFFFF} AND objid = {LOCK_KEY & 0xFFFFFFFF} AND objsubid = 1)"
)


def _fresh_session(
    cur, target: Target, timeouts: str | None = None, locked: bool = True, after: Migration | None = None
) -> None:
    """The same session state for every migration: settings reset, the login user's identity, then the
    owner role and (for a migration) the policy's timeouts, for the transaction or for the session.
    Under the migration lock (`locked`), also checks that it is still held: a migration that released
    it (`after`, when known) fails, and its transaction is not committed. One round trip (two with an
    owner role)."""
    policy = target.environment.policy
    local = timeouts == "transaction"
    cur.execute(
        _RESET_SESSION + "; " + NO_IDLE_TIMEOUTS + "; SELECT "
        # psycopg2 reads dates in ISO and sets it at connect when the server's default differs: again here
        "CASE WHEN current_setting('datestyle') NOT LIKE 'ISO%%' THEN set_config('datestyle', 'ISO', false) END, "
        + (_HOLDS_LOCK if locked else "true")
        + (", set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)" if timeouts else ""),
        (f"{policy.lock_timeout_ms}ms", local, f"{policy.statement_timeout_ms}ms", local) if timeouts else None,
    )
    if not cur.fetchone()[1]:
        _rollback_quietly(cur.connection)
        who = after.label if after else "a migration of this run"
        raise MigrationFailed(
            f"{who} released bridge-db's migration lock (pg_advisory_unlock_all() or pg_advisory_unlock of "
            "its key), so the run was no longer serialised with other runners; it was stopped and that "
            "migration's transaction was not committed",
            "release only the application's own advisory locks (pg_advisory_unlock(<its key>)) in migrations, "
            "then run again",
        )
    _become_owner(cur, target)


def _write_history(
    conn, target: Target, migration: Migration, write: Callable[[], object], transactional: bool = True
) -> None:
    """An engine write (history, log, progress rows). Its failure is the engine's: its own message and
    exit code, never "fix the SQL" against the migration file that ran before it."""
    try:
        write()
    except psycopg2.Error as exc:
        if conn.closed or isinstance(exc, psycopg2.OperationalError) and exc.pgcode is None:
            raise lost_connection(target, exc) from None
        _rollback_quietly(conn)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HistoryUnusable(
            f"{migration.label}: its statements ran, but bridge-db could not write its history: {first} "
            f"(sqlstate {exc.pgcode}); "
            + (
                "nothing from the migration's transaction was kept"
                if transactional
                else "the statements that ran stay (no-transaction file); a rerun resumes after the last recorded one"
            ),
            "check public.schema_migrations and public.schema_migrations_log (owner, privileges, triggers) "
            "or the migration's session changes (SET TRANSACTION READ ONLY), then run again",
            version=migration.version,
            sqlstate=exc.pgcode,
        ) from None


def _already_done(cur, statement) -> bool:
    """For a no-transaction statement that would fail when repeated: has it already done its work?"""
    check = statement.repeat_check
    if check is None:
        return False
    if check[0] == "index exists":
        # built by this statement: valid, and on its table (another table's index of that name means the
        # statement has not run, and it fails as PostgreSQL says)
        cur.execute(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s) AND indrelid = to_regclass(%s)",
            check[1:3],
        )
        row = cur.fetchone()
        return bool(row and row[0])
    if check[0] == "index absent":
        cur.execute("SELECT to_regclass(%s) IS NULL", (check[1],))
        return bool(cur.fetchone()[0])
    if check[0] == "enum value exists":
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_enum WHERE enumtypid = to_regtype(%s) AND enumlabel = %s)", check[1:]
        )
        return bool(cur.fetchone()[0])
    return False


def _become_owner(cur, target: Target) -> None:
    """Run DDL as the declared owner role, so that what migrations create is owned by it and covered
    by its default privileges (see privileges.py)."""
    owner = target.environment.policy.owner_role
    if not owner:
        return
    cur.execute("SELECT current_user")
    if cur.fetchone()[0] == owner:
        return
    try:
        cur.execute(psycopg2.sql.SQL("SET ROLE {}").format(psycopg2.sql.Identifier(owner)))
    except psycopg2.errors.InsufficientPrivilege:
        raise PrerequisiteMissing(
            f"{target.label}: the migration user may not act as owner role {owner}",
            f"GRANT {owner} TO <migration user> (the grant command creates the role), or clear owner_role",
        ) from None


def _raise_on_problems(problems: list[Problem]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more problem(s); `status` lists them)" if len(problems) > 1 else ""
        first = problems[0]
        raise ValidationFailed(first.cause + more, first.next_step, problems=[str(p) for p in problems])


def _check_version_arg(migrations: list[Migration], to_version: int | None) -> None:
    if to_version is not None and not any(m.version == to_version for m in migrations):
        known = f"{migrations[0].version:03d}..{migrations[-1].version:03d}" if migrations else "none"
        raise UsageError(f"--to {to_version}: no such migration (known: {known})", "pass an existing migration number")


def _planned(direction: Direction, migration: Migration) -> StepResult:
    sql_file = direction.file(migration)
    return StepResult(direction, migration.version, migration.name, sql_file.path.name, sql=sql_file.text)


def _parse_all(files: Iterable[SqlFile]) -> None:
    for sql_file in files:
        _ = sql_file.statements  # parsed once and cached; raises ValidationFailed with file and line


def _ms_since(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1000)
