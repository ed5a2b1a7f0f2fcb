"""`bridge-db`: the console front-end for cron, CI and Ansible (Invoke's tasks call it in-process).

It parses arguments, calls the engine and renders the result: a table for a person, `--json` for a
machine. Every BridgeDbError becomes its one-line cause, its next step and its exit code.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .config import MAX_WAIT_SECONDS
from .errors import EXIT_CODES, BridgeDbError, RefusedByPolicy, UsageError

DEFAULT_ENV_VAR = "BRIDGE_DB_ENV"


# --------------------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 itself; keep our one-line cause + next step
        raise UsageError(message, f"see `{self.prog} --help`")


def seconds(text: str) -> float:
    """A wait in seconds: a finite number from 0 to MAX_WAIT_SECONDS (nan, inf, 1e308 are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds from 0 to {MAX_WAIT_SECONDS}")
    return value


def jobs(text: str) -> int:
    """Parallel jobs for pg_dump/pg_restore: what backup_jobs allows (checked before any dump is made)."""
    from .config import RANGES

    low, high = RANGES["backup_jobs"]
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not low <= value <= (high or value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of jobs from {low} to {high}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--env",
        "-e",
        default=os.environ.get(DEFAULT_ENV_VAR, "dev"),
        help="environment from environments.toml (default: dev, or $BRIDGE_DB_ENV)",
    )
    common.add_argument(
        "--dsn",
        default=None,
        help="libpq connection string or URI overriding the environment's connection "
        "(or $BRIDGE_DB_DSN); prefer PGPASSWORD/.pgpass for the password",
    )
    common.add_argument(
        "--config", default=None, help="environments file (default: environments.toml, or $BRIDGE_DB_CONFIG)"
    )
    common.add_argument("--migrations-dir", default=None, help="folder of migration files (default: from the config)")
    common.add_argument("--json", action="store_true", help="print one JSON object (for machines) instead of text")

    runner = argparse.ArgumentParser(add_help=False)
    runner.add_argument("--dry-run", action="store_true", help="print the plan and its SQL; change nothing")
    runner.add_argument(
        "--lock-wait",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="how long to wait for another runner's lock (default: the environment's policy)",
    )
    runner.add_argument(
        "--single-transaction",
        action="store_true",
        default=None,
        help="run the whole plan in one transaction: all or nothing",
    )
    runner.add_argument(
        "--yes", "-y", action="store_true", help="confirm non-interactively where the environment asks (production)"
    )

    parser = _Parser(
        prog="bridge-db",
        description="OmniNode Bridge database migrations and operations.",
        epilog=_exit_code_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bridge-db {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)

    p = verbs.add_parser("migrate", parents=[common, runner], help="apply pending migrations")
    p.add_argument(
        "--to", type=int, default=None, metavar="VERSION", help="stop after this migration (default: newest)"
    )

    p = verbs.add_parser("rollback", parents=[common, runner], help="roll back applied migrations, newest first")
    p.add_argument("--steps", type=int, default=None, help="how many migrations to roll back (default 1)")
    p.add_argument(
        "--to", type=int, default=None, metavar="VERSION", help="roll back every migration newer than VERSION (0: all)"
    )

    verbs.add_parser("status", parents=[common], help="show applied and pending migrations (exit 5 on drift)")
    verbs.add_parser(
        "verify",
        parents=[common],
        help="check history against files and the live schema against the applied migrations",
    )

    p = verbs.add_parser("new", parents=[common], help="scaffold the next numbered migration pair")
    p.add_argument("name", help="description in lower_snake_case, e.g. add_index_workflow_steps_status")

    p = verbs.add_parser(
        "lint", parents=[common], help="lint migrations: squawk (locking) plus the project's rules (exit 5 on findings)"
    )
    p.add_argument("--no-squawk", action="store_true", help="only the project's own rules")

    p = verbs.add_parser("reset", parents=[common], help="dev only: drop and recreate schema public, then migrate")
    p.add_argument("--lock-wait", type=seconds, default=None, metavar="SECONDS")
    p.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="confirm a reset outside the embedded dev cluster (without a terminal it is refused otherwise)",
    )

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument(
        "--admin-dsn",
        default=None,
        help="superuser connection for this step (or $BRIDGE_DB_ADMIN_DSN; default: admin_user)",
    )
    admin.add_argument("--check", action="store_true", help="report what would change; change nothing")

    verbs.add_parser(
        "setup-extensions",
        parents=[common, admin],
        help="create the environment's extensions (uuid-ossp, pg_stat_statements) as admin",
    )
    verbs.add_parser(
        "grant",
        parents=[common, admin],
        help="reconcile the owner, read-write and read-only roles and their privileges",
    )
    p = verbs.add_parser("stats", parents=[common], help="row counts, index usage and the slowest queries")
    p.add_argument("--top", type=int, default=20, help="how many statements from pg_stat_statements")

    confirm = argparse.ArgumentParser(add_help=False)
    confirm.add_argument(
        "--yes",
        "-y",
        action="store_true",
        help="confirm non-interactively (without a terminal, commands that ask refuse otherwise)",
    )

    p = verbs.add_parser("backup", parents=[common], help="pg_dump into the environment's backup folder, verified")
    p.add_argument("--format", choices=["custom", "directory"], default=None, help="default: backup_format")
    p.add_argument("--jobs", type=jobs, default=None, help="parallel jobs for the directory format")
    p.add_argument(
        "--verify-restore",
        action="store_true",
        help="also restore into a scratch database and compare per-table row counts",
    )
    p.add_argument("--globals", action="store_true", help="also dump roles (pg_dumpall --globals-only, no passwords)")
    p.add_argument("--admin-dsn", default=None, help="connection for scratch databases and globals")
    p.add_argument("--backup-dir", default=None, help="default: backup_dir from environments.toml")
    p.add_argument(
        "--status-file",
        default=None,
        help="write the time and result of this backup here (JSON), failures included: for monitoring",
    )
    p.add_argument("--prune", action="store_true", help="apply retention after a successful backup")
    p = verbs.add_parser("backups", parents=[common], help="list backups with age, size and verification state")
    p.add_argument("--backup-dir", default=None)
    p = verbs.add_parser("prune", parents=[common], help="apply retention; never deletes the newest verified backup")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    p.add_argument("--backup-dir", default=None)
    p = verbs.add_parser(
        "restore",
        parents=[common, confirm],
        help="restore a backup into a new database (default) or, with --overwrite, over the environment's",
    )
    p.add_argument("--file", required=True, help="the dump to restore (its manifest must be beside it)")
    p.add_argument("--target-db", default=None, help="database to create (default: <db>_restore_<time>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the environment's database (asks; the old one is kept, renamed)",
    )
    p.add_argument("--jobs", type=jobs, default=None)
    p.add_argument("--admin-dsn", default=None, help="connection with CREATEDB (default: admin_user)")

    p = verbs.add_parser("db", parents=[common], help="the embedded dev database: up, down, status")
    p.add_argument("action", choices=["up", "down", "status"])
    return parser


def _exit_code_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES)


# --------------------------------------------------------------------------- main


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that every cleanup path of Ctrl-C runs."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    secrets = _secrets(argv)
    with _interruptible():
        with _redacting(secrets):
            try:
                args = build_parser().parse_args(argv)
            except BridgeDbError as exc:
                exc.message = _hide_connection_strings(exc.message, argv)
                _print_error(exc, as_json=False)
                return exc.exit_code
            if not args.verb:
                build_parser().print_help()
                return 2
        # redaction inside the run log's copy, so that the log file gets the redacted text too
        with _run_log(args), _redacting(secrets):
            return _dispatch(args)


def _hide_connection_strings(message: str, argv: list[str]) -> str:
    """argparse quotes what it did not understand; a connection string there may carry a password
    that libpq would not even read as one (an unencoded '/' in a URI), so it is never repeated."""
    import psycopg2.extensions

    from .connection import URI_PREFIXES

    for arg in sorted(argv, key=len, reverse=True):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        try:
            is_dsn = bool(psycopg2.extensions.parse_dsn(value)) or value.lstrip().startswith(URI_PREFIXES)
        except Exception:
            is_dsn = value.lstrip().startswith(URI_PREFIXES) or "password" in value
        if is_dsn and value:
            for shown in (value, repr(value)[1:-1]):  # argparse quotes with repr()
                message = message.replace(shown, "<connection string not shown>")
    return message


def _secrets(argv: list[str]) -> list[str]:
    """Every password a DSN on the command line or in the environment carries, as libpq reads it."""
    from .connection import ADMIN_DSN_ENV_VAR, DSN_ENV_VAR, dsn_secrets

    found: list[str] = []
    for arg in argv:
        found += dsn_secrets(arg)
        if arg.startswith("--") and "=" in arg:  # --dsn=...
            found += dsn_secrets(arg.split("=", 1)[1])
    for var in (DSN_ENV_VAR, ADMIN_DSN_ENV_VAR):
        found += dsn_secrets(os.environ.get(var))
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    # as printed: plain, inside JSON (--json, error details), inside a repr()
    shown = {form for secret in found for form in (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1])}
    return sorted(shown, key=len, reverse=True)


@contextmanager
def _redacting(secrets: list[str]):
    """Whatever the command prints (errors, --json, the run log) passes through this: a known secret
    is replaced, whichever code path would have printed it."""
    if not secrets:
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacted(out, secrets), _Redacted(err, secrets)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


class _Redacted:
    def __init__(self, stream, secrets: list[str]) -> None:
        self.stream, self.secrets = stream, secrets

    def write(self, text: str) -> int:
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


@contextmanager
def _interruptible():
    """SIGTERM (a service manager, `kill`) ends the run like Ctrl-C: the exception unwinds every
    cleanup path, the open transaction is rolled back with its connection, and the exit code says so.
    A statement already running at the server finishes or fails first (libpq waits for it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dispatch(args) -> int:
    as_json = bool(getattr(args, "json", False))
    try:
        return COMMANDS[args.verb](args)
    except BridgeDbError as exc:
        _print_error(exc, as_json)
        return exc.exit_code
    except Terminated:
        print(
            "terminated (SIGTERM): the open transaction was rolled back, nothing from it was committed; "
            "run the same command again to finish",
            file=sys.stderr,
        )
        return 143
    except KeyboardInterrupt:
        print("interrupted: the running transaction was rolled back by the server", file=sys.stderr)
        return 130
    except Exception as exc:  # a database error no verb anticipated: still one line and an exit code
        if not type(exc).__module__.startswith("psycopg2"):
            raise
        error = _unexpected_database_error(exc)
        _print_error(error, as_json)
        return error.exit_code


# Verbs that change something: where the environment says so (staging), each run leaves a log file.
LOGGED_VERBS = {"migrate", "rollback", "reset", "backup", "restore", "prune", "grant", "setup-extensions"}


@contextmanager
def _run_log(args):
    """Copy everything the command prints into log_dir/<env>-<verb>-<UTC time>.log (0600, in a folder
    created 0700) when the environment's policy names a log_dir. The log never gets the command line
    (it may hold a DSN). A log that cannot be written (unwritable, full, size-limited) is a warning:
    it never turns the command's result into a failure."""
    log_dir = None
    if args.verb in LOGGED_VERBS and not getattr(args, "dry_run", False):
        try:
            from .config import load_config

            config = load_config(args.config)
            policy = config.environments[args.env].policy
            if policy.log_dir:
                log_dir = Path(policy.log_dir)
                log_dir = log_dir if log_dir.is_absolute() else config.project_root / log_dir
        except (BridgeDbError, KeyError):
            log_dir = None  # the command itself reports a bad config or environment
    if log_dir is None:
        yield
        return
    from datetime import UTC, datetime

    from .backup import private_folder

    now = datetime.now(UTC)
    path = log_dir / f"{args.env}-{args.verb}-{now.strftime('%Y%m%dT%H%M%S%fZ')}.log"
    try:
        private_folder(log_dir)
        log = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8")
        log.write(f"# bridge-db {__version__} {args.verb} --env {args.env} at {now.isoformat()}\n")
    except (OSError, BridgeDbError) as exc:
        _log_warning(log_dir, exc)
        yield
        return
    out, err = sys.stdout, sys.stderr
    tee_out, tee_err = _Tee(out, log, err), _Tee(err, log, err)
    sys.stdout, sys.stderr = tee_out, tee_err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        try:
            log.close()
        except OSError as exc:
            tee_out.failed = tee_out.failed or _log_warning(path, exc)
    if not (tee_out.failed or tee_err.failed):
        print(f"log: {path}", file=sys.stderr)


def _log_warning(where, exc) -> bool:
    reason = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc)
    print(
        f"warning: the run log {where} could not be written ({reason}); the command's result is unaffected",
        file=sys.stderr,
    )
    return True


class _Tee:
    """A stream that also copies into the run log; the first failed log write warns once and stops
    the copying, and the stream itself goes on."""

    def __init__(self, stream, log, warn_to) -> None:
        self.stream, self.log, self.warn_to = stream, log, warn_to
        self.failed = False

    def _to_log(self, action) -> None:
        if self.failed:
            return
        try:
            action()
        except (OSError, ValueError) as exc:
            self.failed = True
            print(
                f"warning: the run log could not be written ({getattr(exc, 'strerror', None) or exc}); "
                "the command's result is unaffected",
                file=self.warn_to,
            )

    def write(self, text: str) -> int:
        self._to_log(lambda: self.log.write(text.replace("\r", "\n")))
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self._to_log(self.log.flush)

    def isatty(self) -> bool:
        return self.stream.isatty()


def run() -> None:
    """Console-script entry point."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `bridge-db stats | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


def _unexpected_database_error(exc: Exception) -> BridgeDbError:
    from .errors import ConnectionFailed

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    code = getattr(exc, "pgcode", None)
    if code is None and type(exc).__name__ in ("OperationalError", "InterfaceError"):
        return ConnectionFailed(
            f"database connection failed: {first}", "check the server, then run the same command again"
        )
    return BridgeDbError(
        f"unexpected database error: {first} (sqlstate {code})",
        "nothing was committed; run again, and report it with this output if it persists",
    )


def _print_error(exc: BridgeDbError, as_json: bool) -> None:
    if as_json:
        print(json.dumps(exc.as_dict(), default=str))
        return
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.next_step:
        print(f"  next: {exc.next_step}", file=sys.stderr)


def _context(args, discover: bool = True):
    """Config, the target to connect to, and the discovered migrations (validated before connecting)."""
    from .config import load_config
    from .connection import resolve_target
    from .discovery import discover_migrations

    config = load_config(args.config)
    target = resolve_target(config, args.env, args.dsn)
    for note in target.notes:
        print(f"note: {note}", file=sys.stderr)
    if not discover:
        return config, target, []
    folder = Path(args.migrations_dir) if args.migrations_dir else config.migrations_dir
    return config, target, discover_migrations(folder, warn=_warn)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- commands


def cmd_migrate(args) -> int:
    return _run_verb(args, "migrate", to_version=args.to)


def cmd_rollback(args) -> int:
    return _run_verb(args, "rollback", steps=args.steps, to_version=args.to)


def _run_verb(args, verb: str, **selection) -> int:
    from . import engine

    config, target, migrations = _context(args)
    selection["confirm"] = confirmer(args.yes)
    selection["backup_dir"] = _backup_dir(config, target, args)
    with HumanProgress.unless(args.json) as progress:
        result = getattr(engine, verb)(
            target,
            migrations,
            dry_run=args.dry_run,
            single_transaction=args.single_transaction,
            lock_wait=args.lock_wait,
            progress=progress,
            **selection,
        )
    _render_run(result, args.json)
    return 0


def cmd_status(args) -> int:
    from . import engine

    _, target, migrations = _context(args)
    report = engine.status(target, migrations)
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
    else:
        print(f"{report.target}")
        rows = [("VERSION", "NAME", "STATE", "APPLIED AT", "BY", "MS")]
        for m in report.migrations:
            rows.append(
                (
                    f"{m.version:03d}",
                    m.name,
                    m.state,
                    (m.applied_at or "-")[:19].replace("T", " "),
                    m.applied_by or "-",
                    "-" if m.execution_ms is None else str(m.execution_ms),
                )
            )
        _print_table(rows)
        head = f"{report.head:03d}" if report.head else "none"
        print(f"head {head}, {report.pending} pending")
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
    return 5 if report.problems else 0


def cmd_verify(args) -> int:
    from . import engine

    _, target, migrations = _context(args)
    report = engine.verify(target, migrations)
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
    elif report.ok:
        what = (
            "match in type, NOT NULL, default, constraints and indexes"
            if report.compared == "definitions"
            else "are present (names only)"
        )
        print(
            f"ok: {report.target}: {report.checked_migrations} applied migration(s) match their files; "
            f"{report.checked_objects} declared tables, columns and indexes {what}"
        )
        if report.note:
            print(f"note: {report.note}", file=sys.stderr)
    else:
        print(f"verify failed: {report.target}", file=sys.stderr)
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
        if report.note:  # names only: types, defaults and constraints were not compared
            print(f"note: {report.note}", file=sys.stderr)
    return 0 if report.ok else 5


def cmd_new(args) -> int:
    from .config import load_config
    from .discovery import scaffold_migration

    config = load_config(args.config)
    folder = Path(args.migrations_dir) if args.migrations_dir else config.migrations_dir
    forward, rollback = scaffold_migration(folder, args.name)
    if args.json:
        print(json.dumps({"forward": str(forward), "rollback": str(rollback)}))
    else:
        print(f"created {forward}\ncreated {rollback}")
    return 0


def cmd_reset(args) -> int:
    from . import engine

    _, target, migrations = _context(args)
    with HumanProgress.unless(args.json) as progress:
        engine.reset_schema(target, lock_wait=args.lock_wait, confirm=confirmer(args.yes))
        if progress:
            print(f"reset {target.label}: schema public dropped and recreated", file=sys.stderr)
        result = engine.migrate(target, migrations, lock_wait=args.lock_wait, progress=progress)
    _render_run(result, args.json)
    return 0


def cmd_db(args) -> int:
    from .config import load_config
    from .connection import resolve_target

    target = resolve_target(load_config(args.config), args.env)
    cluster = target.embedded
    if cluster is None:
        raise UsageError(
            f"environment {args.env!r} is not embedded",
            "db up/down/status manage the embedded dev database (--env dev)",
        )
    if args.action == "up":
        status = cluster.up(database=target.database)
    elif args.action == "down":
        status = cluster.down()
    else:
        status = cluster.status()
    if args.json:
        print(json.dumps(status.as_dict()))
    else:
        state = (
            f"running (pid {status.pid})" if status.running else ("stopped" if status.initialised else "not created")
        )
        print(f"embedded dev database: {state}")
        print(f"  data:    {status.data_dir}")
        print(f"  socket:  {status.socket_dir} port {status.port}")
        print(f"  log:     {status.log_file}")
        if status.server_version:
            print(f"  version: PostgreSQL {status.server_version} ({status.bindir or 'binaries not found'})")
        if status.running:
            command = ["psql", "-h", str(status.socket_dir), "-p", str(status.port), "-U", "postgres"]
            print(f"  connect: {shlex.join([*command, '-d', str(target.database)])}")
    return 0


def cmd_setup_extensions(args) -> int:
    from .connection import admin_target
    from .extensions import setup_extensions

    _, target, _ = _context(args, discover=False)
    report = setup_extensions(
        admin_target(target, args.admin_dsn), target.environment.policy.extensions, check=args.check
    )
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    verb = "would create" if args.check else "created"
    todo = report.missing if args.check else report.created
    print(f"{report.target}: {verb} {', '.join(todo) or 'nothing'}; present: {', '.join(report.present) or 'none'}")
    for hint in report.hints:
        print(f"warning: {hint}", file=sys.stderr)
    return 0


def cmd_grant(args) -> int:
    from .connection import admin_target
    from .privileges import declared_roles, reconcile_privileges

    _, target, _ = _context(args, discover=False)
    report = reconcile_privileges(admin_target(target, args.admin_dsn), declared_roles(target), check=args.check)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    roles = ", ".join(f"{k}={v}" for k, v in report.roles.items())
    if not report.changes:
        print(f"{report.target}: privileges already match ({roles})")
        return 0
    print(f"{report.target}: {'would run' if args.check else 'ran'} {len(report.changes)} statement(s) ({roles})")
    for change in report.changes:
        print(f"  {change.statement};  -- {change.reason}")
    return 0


def cmd_stats(args) -> int:
    from .monitoring import collect_stats

    _, target, _ = _context(args, discover=False)
    report = collect_stats(target, top=args.top)
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
        return 0
    print(report.target)
    print("\nTables")
    _print_table(
        [("SCHEMA", "TABLE", "ROWS", "DEAD", "SEQ SCANS", "IDX SCANS", "SIZE")]
        + [
            (
                t["schema"],
                t["table"],
                str(t["row_count"]),
                str(t["dead_rows"]),
                str(t["seq_scans"]),
                str(t["index_scans"]),
                _size(t["total_bytes"]),
            )
            for t in report.tables
        ]
    )
    print("\nIndexes (most used first)")
    _print_table(
        [("TABLE", "INDEX", "SCANS", "SIZE")]
        + [(i["table"], i["index"], str(i["index_scans"]), _size(i["bytes"])) for i in report.indexes]
    )
    if report.queries is not None:
        print(f"\nSlowest statements by mean time (top {args.top})")
        _print_table(
            [("MEAN MS", "MAX MS", "CALLS", "TOTAL MS", "QUERY")]
            + [
                (
                    f"{q['mean_ms']:.3f}",
                    f"{q['max_ms']:.3f}",
                    str(q["calls"]),
                    f"{q['total_ms']:.1f}",
                    " ".join(q["query"].split()),
                )
                for q in report.queries
            ]
        )
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _backup_dir(config, target, args) -> Path:
    return Path(args.backup_dir) if getattr(args, "backup_dir", None) else config.backup_folder(target.environment)


def _say_waiting(folder, wait_seconds: float, stream=None) -> None:
    print(
        f"waiting for another backup or prune in {folder} to finish (at most {wait_seconds:g}s) ...",
        file=stream or sys.stderr,
        flush=True,
    )


def cmd_backup(args) -> int:
    from .backup import prune, take_backup, write_status_marker
    from .connection import admin_target

    status_file = Path(args.status_file) if args.status_file else None
    env_name = args.env
    try:
        config, target, _ = _context(args, discover=False)
        env_name = target.environment.name
        folder = _backup_dir(config, target, args)
        result = take_backup(
            target,
            folder,
            fmt=args.format,
            jobs=args.jobs,
            verify_restore=args.verify_restore,
            with_globals=args.globals,
            admin=admin_target(target, args.admin_dsn),
            on_wait=None if args.json else _say_waiting,
        )
    except BaseException as exc:  # monitoring hears of every failure, a crash included
        if status_file:
            write_status_marker(status_file, env_name, None, _as_bridge_error(exc))
        raise
    prune_error: BridgeDbError | None = None
    if args.prune:
        policy = target.environment.policy
        try:
            result.pruned = prune(
                folder,
                policy.keep_last,
                policy.keep_daily,
                policy.keep_weekly,
                lock_wait=policy.lock_wait_seconds,
                on_wait=None if args.json else _say_waiting,
            )
        except BaseException as exc:
            prune_error = _as_bridge_error(exc)
            if status_file:  # the backup is good and fresh; the marker says so, and that pruning failed
                write_status_marker(status_file, env_name, result, prune_error=prune_error)
            raise
    if status_file:
        write_status_marker(status_file, env_name, result)
    for name in result.stale_removed:
        print(f"note: dropped {name}, a scratch database a killed run left behind", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        m = result.manifest
        print(
            f"backup {result.path}: {_size(m.size_bytes)} in {m.duration_s:.1f}s ({result.throughput_mb_s} MB/s), "
            f"head {m.migration_head or 'none'}, {m.verified}"
        )
    return 0


def _as_bridge_error(exc: BaseException) -> BridgeDbError:
    if isinstance(exc, BridgeDbError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        error = BridgeDbError("interrupted", "run the backup again")
        error.exit_code = 143 if isinstance(exc, Terminated) else 130
        return error
    return BridgeDbError(f"unexpected error: {type(exc).__name__}: {exc}", "report it with this output")


def cmd_backups(args) -> int:
    from .backup import list_backups

    config, target, _ = _context(args, discover=False)
    folder = _backup_dir(config, target, args)
    entries = list_backups(folder)
    if args.json:
        print(json.dumps({"folder": str(folder), "backups": [e.as_dict() for e in entries]}))
        return 0
    print(f"{folder}: {len(entries)} backup(s)")
    if entries:
        _print_table(
            [("FILE", "AGE", "SIZE", "HEAD", "STATE")]
            + [
                (
                    Path(e.path).name,
                    _age(e.age_s),
                    _size(e.size_bytes),
                    str(e.manifest.migration_head) if e.manifest and not e.problem else "?",
                    e.state,
                )
                for e in entries
            ]
        )
    for e in entries:
        if e.problem:
            print(f"warning: {Path(e.path).name}: manifest not trusted: {e.problem}; kept", file=sys.stderr)
    return 0


def cmd_prune(args) -> int:
    from .backup import list_backups, prune

    config, target, _ = _context(args, discover=False)
    policy = target.environment.policy
    folder = _backup_dir(config, target, args)
    deleted = prune(
        folder,
        policy.keep_last,
        policy.keep_daily,
        policy.keep_weekly,
        dry_run=args.dry_run,
        lock_wait=policy.lock_wait_seconds,
        on_wait=None if args.json else _say_waiting,
    )
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "deleted": deleted}))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(
            f"{verb} {len(deleted)} file(s) (keep last {policy.keep_last}, daily {policy.keep_daily}, "
            f"weekly {policy.keep_weekly})"
        )
        for path in deleted:
            print(f"  {path}")
        for e in list_backups(folder):
            if e.problem:
                print(f"warning: {Path(e.path).name}: manifest not trusted: {e.problem}; kept", file=sys.stderr)
    return 0


def cmd_restore(args) -> int:
    from .backup import restore_backup
    from .connection import admin_target

    _, target, _ = _context(args, discover=False)
    result = restore_backup(
        target,
        admin_target(target, args.admin_dsn),
        Path(args.file),
        target_db=args.target_db,
        overwrite=args.overwrite,
        confirm=confirmer(args.yes),
        jobs=args.jobs,
    )
    for name in result.stale_removed:
        print(f"note: dropped {name}, a scratch database a killed run left behind", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(
            f"restored {Path(result.file).name} into {result.database} in {result.duration_s:.1f}s "
            f"({result.throughput_mb_s} MB/s); row counts {'match' if result.row_counts_checked else 'not recorded'}"
            + (f"; previous database kept as {result.replaced}" if result.replaced else "")
        )
    return 0


def confirmer(yes: bool):
    """Ask on a terminal; `--yes` answers for a machine; with neither, refuse and change nothing."""

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise RefusedByPolicy(
                f"not confirmed, there is no terminal to ask: {question} Nothing was changed.",
                "pass --yes to confirm non-interactively",
            )
        return input(f"{question} Type yes to continue: ").strip().lower() == "yes"

    return confirm


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_lint(args) -> int:
    from .config import load_config
    from .discovery import discover_migrations
    from .lint import lint_migrations

    config = load_config(args.config)
    folder = Path(args.migrations_dir) if args.migrations_dir else config.migrations_dir
    # A pair just scaffolded by `new` has no statement yet: lint checks its header; migrate refuses it.
    migrations = discover_migrations(folder, warn=_warn, allow_empty=True)
    findings = lint_migrations(migrations, use_squawk=not args.no_squawk)
    if args.json:
        print(json.dumps({"migrations": len(migrations), "findings": [f.__dict__ for f in findings]}))
    else:
        for finding in findings:
            print(finding)
        print(f"lint: {len(migrations)} migration pair(s), {len(findings)} finding(s)")
    return 5 if findings else 0


COMMANDS = {
    "migrate": cmd_migrate,
    "rollback": cmd_rollback,
    "status": cmd_status,
    "verify": cmd_verify,
    "new": cmd_new,
    "reset": cmd_reset,
    "lint": cmd_lint,
    "setup-extensions": cmd_setup_extensions,
    "grant": cmd_grant,
    "stats": cmd_stats,
    "backup": cmd_backup,
    "backups": cmd_backups,
    "prune": cmd_prune,
    "restore": cmd_restore,
    "db": cmd_db,
}


# --------------------------------------------------------------------------- rendering


def _render_run(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.as_dict(), default=str))
        return
    verb = "apply" if result.action == "migrate" else "roll back"
    if result.dry_run:
        if not result.steps:
            print(f"dry run: nothing to {verb} on {result.target}")
            return
        print(
            f"dry run on {result.target}: would {verb} {len(result.steps)} migration(s)"
            f"{' in one transaction' if result.single_transaction else ''}; nothing was changed"
        )
        for step in result.steps:
            print(f"\n-- ===== {step.file} =====")
            print(step.sql.rstrip())
        return
    head = f"{result.head_after:03d}" if result.head_after else "none"
    if not result.steps:
        print(f"nothing to {verb}: {result.target} is at {head}")
        return
    adopted = sum(1 for s in result.steps if s.already_existed)
    done = "applied" if result.action == "migrate" else "rolled back"
    if result.backup:
        print(f"backup taken first: {result.backup}")
    print(
        f"{done} {len(result.steps)} migration(s) in {result.total_ms} ms; {result.target} is now at {head}"
        + (f" ({adopted} adopted existing objects)" if adopted else "")
    )


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


class HumanProgress:
    """Each migration's name as it starts and its time when it ends; on a terminal, a ticking clock."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._label = ""

    @classmethod
    @contextmanager
    def unless(cls, quiet: bool):
        """A progress printer for people (None when output is JSON); its clock stops on any exit."""
        progress = None if quiet else cls()
        try:
            yield progress
        finally:
            if progress:
                progress._stop_ticker(newline=True)

    def _stop_ticker(self, newline: bool = False) -> bool:
        if not self._ticker:
            return False
        self._stop.set()
        self._ticker.join()
        self._ticker = None
        if newline:
            print(file=self.stream, flush=True)
        return True

    def waiting_for_lock(self, holders: list[dict]) -> None:
        who = ", ".join(f"pid {h['pid']} ({h['application'] or h['user']})" for h in holders) or "another session"
        print(f"waiting for the migration lock held by {who} ...", file=self.stream, flush=True)

    def backing_up(self, folder) -> None:
        print(f"  backing up into {folder} before migrating ...", file=self.stream, flush=True)

    def waiting_for_backup_folder(self, folder, wait_seconds: float) -> None:
        _say_waiting(folder, wait_seconds, self.stream)

    def retrying(self, migration, attempt, retries, delay, blockers) -> None:
        self._stop_ticker(newline=True)
        who = ", ".join(f"pid {b['pid']} ({b['application'] or b['user']}, {b['state']})" for b in blockers)
        print(
            f"  lock timeout on {migration.label}{': held by ' + who if who else ''}; "
            f"retry {attempt}/{retries} in {delay:.1f}s",
            file=self.stream,
            flush=True,
        )

    def step_started(self, action, migration, index, total) -> None:
        label = f"  [{index}/{total}] {'apply' if action == 'apply' else 'rollback'} {migration.label}"
        if not self.tty:
            print(f"{label} ...", file=self.stream, flush=True)
            return
        self._stop.clear()
        started = time.monotonic()

        def tick() -> None:
            while not self._stop.wait(0.5):
                print(f"\r{label} ... {time.monotonic() - started:.1f}s", end="", file=self.stream, flush=True)

        print(f"{label} ...", end="", file=self.stream, flush=True)
        self._label = label
        self._ticker = threading.Thread(target=tick, daemon=True)
        self._ticker.start()

    def step_finished(self, step) -> None:
        note = f", {step.already_existed} object(s) already existed" if step.already_existed else ""
        if self._stop_ticker():
            print(f"\r{self._label} ... ok ({step.execution_ms} ms{note})   ", file=self.stream, flush=True)
        else:
            print(f"  ok {step.file} ({step.execution_ms} ms{note})", file=self.stream, flush=True)
