"""`bridge-db`: the console front-end for cron, CI and Ansible (Invoke's tasks call `execute()` in-process).

It parses arguments (rendered from the option table in `options`), calls the facade in `api` and renders
the result with `render`: a table for a person, `--json` for a machine. Every BridgeDbError becomes its
one-line cause, its next step and its exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from types import FrameType, SimpleNamespace
from typing import Any

from . import __version__, render
from .api import Bridge, tools
from .errors import EXIT_CODES, PENDING_EXIT_CODE, BridgeDbError, RefusedByPolicy, Terminated, UsageError
from .options import VERB_HELP, VERBS, add_arguments, values_for
from .output import hide_connection_strings, redacting, run_log, secrets_in

# --------------------------------------------------------------------------- argument parsing


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 itself; keep our one-line cause + next step
        raise UsageError(message, f"see `{self.prog} --help`")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only` (the verb the command line names), that verb alone: a run
    never needs the other verbs' parsers, and building them all was a sixth of a no-op's time."""
    parser = _Parser(
        prog="bridge-db",
        description="OmniNode Bridge database migrations and operations.",
        epilog="exit codes:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bridge-db {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    for verb in VERBS if only is None else (only,):
        add_arguments(verbs.add_parser(verb, help=VERB_HELP[verb]), verb)
    return parser


# --------------------------------------------------------------------------- main


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    secrets = secrets_in(argv)
    with _interruptible():
        with redacting(secrets):
            try:
                args = build_parser(argv[0] if argv and argv[0] in VERBS else None).parse_args(argv)
            except BridgeDbError as exc:
                exc.message = hide_connection_strings(exc.message, argv)
                _print_error(exc, as_json=False)
                return exc.exit_code
            if not args.verb:
                build_parser().print_help()
                return 2
        values = vars(args)
        return execute(values.pop("verb"), values, secrets)


def execute(verb: str, given: Mapping[str, Any], secrets: list[str] | None = None) -> int:
    """Run one verb with its options (by their names in `options`), as the CLI does after parsing:
    run log, redaction, SIGTERM, errors and exit codes alike. Invoke's tasks call this."""
    values = values_for(verb, given)
    if secrets is None:
        secrets = secrets_in([str(v) for v in values.values() if isinstance(v, str)])
    a = SimpleNamespace(**values)
    with _interruptible():
        bridge = Bridge(
            getattr(a, "env", None), getattr(a, "dsn", None), getattr(a, "config", None),
            getattr(a, "migrations_dir", None), getattr(a, "backup_dir", None), warn=render.warn, note=render.note,
            wait_seconds=_wait_seconds(verb, a),
        )  # fmt: skip
        # redaction inside the run log's copy, so that the log file gets the redacted text too
        with run_log(verb, bridge, bool(getattr(a, "dry_run", False))), redacting(secrets):
            return _dispatch(verb, bridge, a)


def _wait_seconds(verb: str, a: SimpleNamespace) -> float:
    """--wait-timeout S (which implies --wait), else --wait's default; `wait` always waits."""
    from .options import DEFAULT_WAIT_SECONDS

    timeout = getattr(a, "wait_timeout", None)
    if timeout is not None:
        return timeout
    return DEFAULT_WAIT_SECONDS if verb == "wait" or getattr(a, "wait", False) else 0.0


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


def _dispatch(verb: str, bridge: Bridge, a: SimpleNamespace) -> int:
    as_json = bool(getattr(a, "json", False))
    try:
        return COMMANDS[verb](bridge, a)
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
        import json

        print(json.dumps(exc.as_dict(), default=str))
        return
    print(f"error: {exc.message}", file=sys.stderr)
    notes = exc.details.get("notes")
    for note in notes if isinstance(notes, list) else ():
        print(f"  note: {note}", file=sys.stderr)
    if exc.next_step:
        print(f"  next: {exc.next_step}", file=sys.stderr)


def confirmer(yes: bool) -> Callable[[str], bool]:
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


# --------------------------------------------------------------------------- commands: call, then render


def _show(a: SimpleNamespace, result: Any, human: Callable[[], None], code: int = 0) -> int:
    if a.json:
        import json

        print(json.dumps(result.as_dict(), default=str))
    else:
        human()
    return code


def cmd_migrate(b: Bridge, a: SimpleNamespace) -> int:
    with render.HumanProgress.unless(a.json) as progress:
        result = b.migrate(a.to, dry_run=a.dry_run, single_transaction=a.single_transaction, lock_wait=a.lock_wait,
                           progress=progress, confirm=confirmer(a.yes))  # fmt: skip
    return _show(a, result, lambda: render.run_result(result))


def cmd_rollback(b: Bridge, a: SimpleNamespace) -> int:
    with render.HumanProgress.unless(a.json) as progress:
        result = b.rollback(a.steps, a.to, dry_run=a.dry_run, single_transaction=a.single_transaction,
                            lock_wait=a.lock_wait, progress=progress, confirm=confirmer(a.yes))  # fmt: skip
    return _show(a, result, lambda: render.run_result(result))


def cmd_reset(b: Bridge, a: SimpleNamespace) -> int:
    with render.HumanProgress.unless(a.json) as progress:

        def said(label: str) -> None:
            print(f"reset {label}: schema public dropped and recreated", file=sys.stderr)

        result = b.reset(lock_wait=a.lock_wait, progress=progress, confirm=confirmer(a.yes),
                         on_reset=said if progress else None)  # fmt: skip
    return _show(a, result, lambda: render.run_result(result))


def cmd_status(b: Bridge, a: SimpleNamespace) -> int:
    report = b.status()
    code = 5 if report.problems else PENDING_EXIT_CODE if a.exit_code and report.pending else 0
    return _show(a, report, lambda: render.status(report), code)


def cmd_verify(b: Bridge, a: SimpleNamespace) -> int:
    report = b.verify(schema=a.schema)
    return _show(a, report, lambda: render.verify(report), 0 if report.ok else 5)


def cmd_history(b: Bridge, a: SimpleNamespace) -> int:
    report = b.history(a.limit)
    return _show(a, report, lambda: render.history(report))


def cmd_repair(b: Bridge, a: SimpleNamespace) -> int:
    result = b.repair(a.version, reason=a.reason, confirm=confirmer(a.yes),
                      show=None if a.json else render.repair_change)  # fmt: skip
    return _show(a, result, lambda: render.repaired(result))


def cmd_baseline(b: Bridge, a: SimpleNamespace) -> int:
    result = b.baseline(a.to, confirm=confirmer(a.yes))
    return _show(a, result, lambda: render.baselined(result))


def cmd_wait(b: Bridge, a: SimpleNamespace) -> int:
    result = b.wait()
    return _show(a, result, lambda: render.waited(result))


def cmd_new(b: Bridge, a: SimpleNamespace) -> int:
    created = b.new(a.name)
    return _show(a, created, lambda: render.new_migration(created))


def cmd_lint(b: Bridge, a: SimpleNamespace) -> int:
    result = b.lint(use_squawk=not a.no_squawk)
    return _show(a, result, lambda: render.lint(result), 5 if result.findings else 0)


def cmd_setup_extensions(b: Bridge, a: SimpleNamespace) -> int:
    result = b.setup_extensions(check=a.check, admin_dsn=a.admin_dsn)
    return _show(a, result.report, lambda: render.extensions(result, a.check))


def cmd_grant(b: Bridge, a: SimpleNamespace) -> int:
    report = b.grant(check=a.check, admin_dsn=a.admin_dsn)
    return _show(a, report, lambda: render.privileges(report, a.check))


def cmd_stats(b: Bridge, a: SimpleNamespace) -> int:
    report = b.stats(top=a.top)
    return _show(a, report, lambda: render.stats(report, a.top))


def cmd_backup(b: Bridge, a: SimpleNamespace) -> int:
    result = b.backup(format=a.format, jobs=a.jobs, verify_restore=a.verify_restore, globals=a.globals,
                      admin_dsn=a.admin_dsn, status_file=a.status_file, prune=a.prune,
                      on_wait=None if a.json else render.say_waiting)  # fmt: skip
    render.stale_removed(result.stale_removed)
    return _show(a, result, lambda: render.backup(result))


def cmd_backups(b: Bridge, a: SimpleNamespace) -> int:
    listing = b.backups()
    return _show(a, listing, lambda: render.backups(listing))


def cmd_prune(b: Bridge, a: SimpleNamespace) -> int:
    result = b.prune(dry_run=a.dry_run, on_wait=None if a.json else render.say_waiting)
    return _show(a, result, lambda: render.pruned(result))


def cmd_restore(b: Bridge, a: SimpleNamespace) -> int:
    result = b.restore(a.file, target_db=a.target_db, overwrite=a.overwrite, confirm=confirmer(a.yes), jobs=a.jobs,
                       admin_dsn=a.admin_dsn)  # fmt: skip
    render.stale_removed(result.stale_removed)
    return _show(a, result, lambda: render.restored(result))


def cmd_pitr(b: Bridge, a: SimpleNamespace) -> int:
    if a.action == "status":
        report = b.pitr_status()
        return _show(a, report, lambda: render.pitr_status(report), 0 if report.ok else 8)
    result = b.pitr_restore(a.to, scratch_dir=a.scratch_dir, port=a.port, keep=a.keep, replace_live=a.replace_live,
                            confirm=confirmer(a.yes))  # fmt: skip
    return _show(a, result, lambda: render.pitr_restored(result))


def cmd_db(b: Bridge, a: SimpleNamespace) -> int:
    status, database = b.db(a.action)
    return _show(a, status, lambda: render.cluster(status, database))


def cmd_tools(_: Bridge, a: SimpleNamespace) -> int:
    report = tools(a.action, a.major)
    return _show(a, report, lambda: render.tools(report))


COMMANDS: dict[str, Callable[[Bridge, SimpleNamespace], int]] = {
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
    "pitr": cmd_pitr,
    "db": cmd_db,
    "tools": cmd_tools,
    "history": cmd_history,
    "repair": cmd_repair,
    "baseline": cmd_baseline,
    "wait": cmd_wait,
}
