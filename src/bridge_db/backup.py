"""Backups: pg_dump into a per-environment folder with a manifest beside each dump, verification,
retention, and restore (into a new database by default).

A dump is written under a temporary name (`.NAME.partial`) and renamed only once pg_dump succeeded and
`pg_restore --list` read it back, so a file without the partial prefix and with a manifest is complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from . import pgtools
from .connection import NO_IDLE_TIMEOUTS, Target, connect, cursor_for, libpq_environment, with_database
from .errors import BackupFailed, PrerequisiteMissing, RefusedByPolicy, UsageError
from .history import applied_head

MANIFEST_SUFFIX = ".manifest.json"
GLOBALS_SUFFIX = ".globals.sql"
PARTIAL_PREFIX = "."
PARTIAL_SUFFIX = ".partial"
STAMP = "%Y%m%dT%H%M%SZ"


@dataclass
class BackupManifest:
    file: str
    environment: str
    database: str
    format: str
    server_version: str
    pg_dump_version: str
    migration_head: int | None
    size_bytes: int
    sha256: str
    started_at: str
    finished_at: str
    duration_s: float
    row_counts: dict[str, int] | None = None
    verification: dict = field(default_factory=dict)  # {"listed": bool, "restored": bool|None, "verified_at"}
    globals_file: str | None = None
    tool: str = "bridge-db"

    @property
    def verified(self) -> str:
        if self.verification.get("restored"):
            return "restored"
        return "listed" if self.verification.get("listed") else "unverified"


@dataclass
class BackupEntry:
    path: str
    manifest: BackupManifest | None
    age_s: float
    size_bytes: int
    state: str  # restored | listed | unverified | no-manifest | invalid-manifest
    problem: str | None = None  # why the manifest is not trusted (the backup is then never deleted)
    unsafe: bool = False  # the manifest names a file outside its own exact names: prune refuses

    def as_dict(self) -> dict:
        return {**asdict(self), "manifest": asdict(self.manifest) if self.manifest else None}


# --------------------------------------------------------------------------- tools


MAX_ERROR_LINES = 12  # of a failing tool's output, in the error message


def _run_tool(cmd: list[str], env: dict[str, str], what: str, timeout: float | None = None, umask: int = -1) -> str:
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, umask=umask)
    except subprocess.TimeoutExpired:
        raise BackupFailed(f"{what} did not finish within {timeout:.0f}s", "check the server and run again") from None
    if result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
        # pg_restore's last line is often only "Command was: ..."; its error is the line before: say all
        detail = " / ".join(lines[-MAX_ERROR_LINES:]) if lines else f"exit {result.returncode}"
        if result.returncode < 0:  # killed: SIGXFSZ is a file-size limit, SIGKILL an operator or the OOM killer
            import signal

            detail = f"killed by {signal.Signals(-result.returncode).name}" + (f" ({detail})" if lines else "")
        raise BackupFailed(f"{what} failed: {detail}", "nothing was kept; fix the cause above and run again")
    return result.stdout


# --------------------------------------------------------------------------- backup


@dataclass
class BackupResult:
    path: str
    manifest: BackupManifest
    throughput_mb_s: float
    pruned: list[str] = field(default_factory=list)
    stale_removed: list[str] = field(default_factory=list)  # scratch databases of killed runs, dropped

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "manifest": asdict(self.manifest),
            "throughput_mb_s": self.throughput_mb_s,
            "pruned": self.pruned,
            "stale_removed": self.stale_removed,
        }


def take_backup(
    target: Target,
    folder: Path,
    *,
    fmt: str | None = None,
    jobs: int | None = None,
    verify_restore: bool = False,
    with_globals: bool = False,
    admin: Target | None = None,
    lock_wait: float | None = None,
    on_wait: Callable[[Path, float], None] | None = None,
) -> BackupResult:
    """pg_dump the target into `folder`, verify it, and write its manifest. Raises BackupFailed and
    leaves no file behind on any failure; earlier backups are never touched. Another backup or prune
    of the same folder is waited for, at most `lock_wait` seconds (default: the policy's lock wait)."""
    policy = target.environment.policy
    fmt = fmt or policy.backup_format
    jobs = jobs or policy.backup_jobs
    if fmt not in ("custom", "directory"):
        raise UsageError(f"unknown backup format {fmt!r}", "use custom or directory")
    folder = private_folder(folder)
    wait = policy.lock_wait_seconds if lock_wait is None else lock_wait
    stale: list[str] = []
    with _folder_lock(folder, wait, on_wait):
        if verify_restore:
            stale = clean_stale_scratch_databases(admin or target)
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        conn = connect(target)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT current_setting('server_version_num')::int, current_setting('server_version'), "
                    "current_database()"
                )
                version_num, server_version, database = cur.fetchone()
                cur.execute(NO_IDLE_TIMEOUTS)  # it idles in its snapshot's transaction for the whole dump
                cur.execute(NO_STATEMENT_TIMEOUT)  # row counts of big tables, as pg_dump's own queries
                _remove_stale_partials(folder, database)
                dump_tool = pgtools.dump_tool("pg_dump", version_num // 10000)
                pg_dump, dump_major = dump_tool.path, dump_tool.major
                head = applied_head(cur)
                # One snapshot for pg_dump and for the row counts, so that they describe the same data.
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute("SELECT pg_export_snapshot()")
                snapshot = cur.fetchone()[0]
                row_counts = _row_counts(cur) if verify_restore else None
                name = _unique_name(folder, database, started, fmt)
                partial = folder / f"{PARTIAL_PREFIX}{name}{PARTIAL_SUFFIX}"
                cmd = [
                    str(pg_dump),
                    f"--format={fmt}",
                    f"--file={partial}",
                    f"--snapshot={snapshot}",
                    "--no-password",
                    # at least 1 ms: 0 would mean no limit (a lock_wait_seconds of 0 means do not wait)
                    f"--lock-wait-timeout={max(1, math.ceil(policy.lock_wait_seconds * 1000))}",
                ]
                if fmt == "directory":
                    cmd.append(f"--jobs={jobs}")
                try:
                    _run_tool(cmd, libpq_environment(target), "pg_dump", umask=0o077)
                    cur.execute("COMMIT")
                except BaseException:
                    _discard(partial)
                    raise
        except psycopg2.Error as exc:
            raise BackupFailed(
                f"backup of {target.label} failed: {str(exc).strip().splitlines()[0]}",
                "check the connection and privileges, then run again",
            ) from None
        finally:
            conn.close()

        try:
            _make_private(partial)
            pg_restore = pgtools.restore_tool(version_num // 10000, dump_major).path
            # Read the dump back while hashing it: two passes over the file at once, not one after the other.
            with ThreadPoolExecutor(max_workers=1) as pool:
                listed = pool.submit(
                    _run_tool, [str(pg_restore), "--list", str(partial)], dict(os.environ), "pg_restore --list"
                )
                size, digest = _size_and_sha256(partial)
                listed.result()
            verification = {"listed": True, "restored": None, "verified_at": datetime.now(UTC).isoformat()}
            if verify_restore:
                _restore_and_compare(admin or target, partial, row_counts or {}, jobs, pg_restore)
                verification["restored"] = True
            final = folder / name
            globals_file = _dump_globals(admin or target, folder, name, version_num // 10000) if with_globals else None
            finished = datetime.now(UTC)
            manifest = BackupManifest(
                file=name,
                environment=target.environment.name,
                database=database,
                format=fmt,
                server_version=server_version,
                pg_dump_version=str(dump_major),
                migration_head=head,
                size_bytes=size,
                sha256=digest,
                started_at=started.isoformat(),
                finished_at=finished.isoformat(),
                duration_s=round(time.perf_counter() - t0, 3),
                row_counts=row_counts,
                verification=verification,
                globals_file=globals_file,
            )
            os.replace(partial, final)
            _write_manifest(final, manifest)
        except BaseException:
            _discard(partial)
            raise
    elapsed = max(time.perf_counter() - t0, 1e-6)
    return BackupResult(str(final), manifest, round(size / 1e6 / elapsed, 1), stale_removed=stale)


def _row_counts(cur) -> dict[str, int]:
    cur.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace "
        "AND c.relkind IN ('r', 'p') AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid "
        "AND d.deptype = 'e') ORDER BY 1"
    )
    counts = {}
    for (table,) in cur.fetchall():
        cur.execute(sql.SQL("SELECT count(*) FROM public.{}").format(sql.Identifier(table)))
        counts[table] = cur.fetchone()[0]
    return counts


def _restore_and_compare(admin: Target, dump: Path, expected: dict[str, int], jobs: int, pg_restore: Path) -> None:
    """Restore into a scratch database, compare per-table row counts with the snapshot's, drop it."""
    scratch = f"{VERIFY_PREFIX}{uuid.uuid4().hex[:12]}"
    _restore_into(
        admin,
        dump,
        scratch,
        pg_restore,
        jobs,
        expected,
        ["--no-owner", "--no-privileges"],
        "the dump is not trustworthy; nothing was kept; run the backup again",
        then=lambda: _drop_database(admin, scratch),
    )


def _restore_into(
    admin: Target,
    dump: Path,
    database: str,
    pg_restore: Path,
    jobs: int,
    expected: dict[str, int] | None,
    options: list[str],
    next_step: str,
    then: Callable[[], None],
) -> None:
    """Create `database` marked as a scratch database of this run, pg_restore `dump` into it and, when
    `expected` is given, compare its per-table row counts; then `then()` (drop it, keep it, swap it in)
    while the run still holds the mark. On any failure the database is dropped again, so nothing
    half-restored is left; if the process is killed instead, the mark stays and the next run drops it."""
    with _scratch_database(admin, database):
        try:
            target = with_database(admin, database)
            _run_tool(
                [
                    str(pg_restore),
                    "--exit-on-error",
                    "--no-password",
                    *options,
                    f"--jobs={jobs}",
                    # a connection string, so that any database name (a '-', an '=') is taken literally
                    "--dbname=" + psycopg2.extensions.make_dsn(dbname=database),
                    str(dump),
                ],
                libpq_environment(target),
                "pg_restore",
            )
            if expected is not None:
                with cursor_for(target) as cur:
                    cur.execute(NO_STATEMENT_TIMEOUT)
                    actual = _row_counts(cur)
                if actual != expected:
                    diff = {
                        t: (expected.get(t), actual.get(t))
                        for t in sorted(set(expected) | set(actual))
                        if expected.get(t) != actual.get(t)
                    }
                    raise BackupFailed(f"restored row counts differ (table: expected, restored): {diff}", next_step)
            then()
        except BaseException:
            _drop_database(admin, database)
            raise


# pg_dump and pg_restore turn statement_timeout off for their sessions; the backup's own sessions too.
NO_STATEMENT_TIMEOUT = "SELECT set_config('statement_timeout', '0', false)"


# --------------------------------------------------------------------------- scratch databases
#
# A database that a backup or restore builds (bridge_verify_*, the drill database, <db>_incoming_*)
# carries a COMMENT marking it as ours while it is built, and its builder holds a session advisory lock
# named after it. A killed run leaves the mark without the lock: the next run drops such a database,
# and only when nobody is connected to it. Databases without the mark are never touched.

SCRATCH_MARK = "bridge-db scratch database"
VERIFY_PREFIX = "bridge_verify_"


def _scratch_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(b"bridge-db scratch:" + name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def _scratch_database(admin: Target, name: str):
    import socket

    keeper = connect(with_database(admin, "postgres"))
    try:
        with keeper.cursor() as cur:
            cur.execute(NO_IDLE_TIMEOUTS)  # idle while pg_restore runs: its lock must outlive that
            cur.execute("SELECT pg_advisory_lock(%s)", (_scratch_key(name),))
        _create_database(admin, name)
        mark = (
            f"{SCRATCH_MARK}: built by pid {os.getpid()} on {socket.gethostname()} at "
            f"{datetime.now(UTC).isoformat(timespec='seconds')}; dropped by the next run if it was left behind"
        )
        try:
            with keeper.cursor() as cur:
                cur.execute(sql.SQL("COMMENT ON DATABASE {} IS %s").format(sql.Identifier(name)), (mark,))
        except BaseException:
            _drop_database(admin, name)
            raise
        yield
    finally:
        keeper.close()  # releases the advisory lock


def _unmark(admin: Target, name: str) -> None:
    """The database is finished and kept: it is no longer a scratch database."""
    with _maintenance(admin) as cur:
        cur.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(name)))


def clean_stale_scratch_databases(admin: Target) -> list[str]:
    """Drop scratch databases that killed runs left behind: marked as ours, their builder gone (its
    lock is free), and no session connected. Anything else is left alone. Returns what was dropped."""
    dropped: list[str] = []
    with _maintenance(admin) as cur:
        cur.execute(
            "SELECT datname FROM pg_database WHERE starts_with(shobj_description(oid, 'pg_database'), %s)",
            (SCRATCH_MARK + ":",),
        )
        for (name,) in cur.fetchall():
            cur.execute("SELECT pg_try_advisory_lock(%s)", (_scratch_key(name),))
            if not cur.fetchone()[0]:
                continue  # its builder is still at work
            try:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,))
                if cur.fetchone()[0] == 0:
                    cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                    dropped.append(name)
            except psycopg2.Error:
                pass  # in use after all, or not ours to drop: leave it
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_scratch_key(name),))
    return dropped


def _dump_globals(admin: Target, folder: Path, name: str, server_major: int) -> str:
    """Roles and tablespaces, without password hashes (--no-role-passwords)."""
    pg_dumpall = pgtools.dump_tool("pg_dumpall", server_major).path
    globals_name = f"{name}{GLOBALS_SUFFIX}"
    partial = folder / f"{PARTIAL_PREFIX}{globals_name}{PARTIAL_SUFFIX}"
    env = libpq_environment(admin)
    env.pop("PGDATABASE", None)
    try:
        _run_tool(
            [str(pg_dumpall), "--globals-only", "--no-role-passwords", "--no-password", f"--file={partial}"],
            env,
            "pg_dumpall --globals-only",
        )
        _make_private(partial)
        os.replace(partial, folder / globals_name)
    except BaseException:
        _discard(partial)
        raise
    return globals_name


def write_status_marker(
    path: Path, environment: str, result: BackupResult | None, error=None, prune_error=None
) -> None:
    """The freshness marker monitoring reads: when the last backup ran, how it ended, and where the
    dump is. Replaced atomically, written on failure too (and when the backup is good but pruning
    after it failed: `result` stays ok, `prune_error` says why)."""
    marker = {
        "environment": environment,
        "finished_at": datetime.now(UTC).isoformat(),
        "result": "ok" if error is None else "failed",
        "exit_code": 0 if error is None else error.exit_code,
        "message": None if error is None else error.message,
        "path": result.path if result else None,
        "size_bytes": result.manifest.size_bytes if result else None,
        "verified": result.manifest.verified if result else None,
        "prune_error": None if prune_error is None else prune_error.message,
    }
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        # replaced atomically by rename: a device, FIFO or symlink there would be replaced, not written to
        raise BackupFailed(
            f"the status file {path} is not a regular file (a symlink, device, FIFO or folder); it was left alone",
            "point --status-file at a regular file (or a path that does not exist yet)",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as exc:
        raise BackupFailed(
            f"cannot write the status file {path}: {exc.strerror or exc}",
            "check --status-file's folder and its permissions; monitoring will see the marker as stale",
        ) from None


# --------------------------------------------------------------------------- listing and retention


def list_backups(folder: Path) -> list[BackupEntry]:
    """Complete backups, newest first. Dumps without a manifest are listed as such, never as good; a
    manifest that names files other than its backup's own, or has no time zone, is listed as invalid.
    Symlinks and anything else that is neither a file nor a folder are not backups (never created here)."""
    if not folder.is_dir():
        return []
    now = time.time()
    entries = []
    for path in folder.iterdir():
        if path.name.startswith(PARTIAL_PREFIX) or path.name.endswith((MANIFEST_SUFFIX, GLOBALS_SUFFIX)):
            continue
        try:
            info = path.lstat()
        except OSError:
            continue  # gone meanwhile
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            continue
        manifest = read_manifest(path)
        problem, unsafe = _manifest_problem(path, manifest) if manifest else (None, False)
        try:
            size = manifest.size_bytes if manifest and not problem else _size_and_sha256(path, digest=False)[0]
        except OSError:
            size = 0
        entries.append(
            BackupEntry(
                path=str(path),
                manifest=manifest,
                age_s=round(now - info.st_mtime, 1),
                size_bytes=size,
                state=("invalid-manifest" if problem else manifest.verified) if manifest else "no-manifest",
                problem=problem,
                unsafe=unsafe,
            )
        )
    return sorted(entries, key=lambda e: (_finished(e) or datetime.min.replace(tzinfo=UTC), e.path), reverse=True)


def read_manifest(dump: Path) -> BackupManifest | None:
    path = dump.with_name(dump.name + MANIFEST_SUFFIX)
    try:
        if path.is_symlink():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return BackupManifest(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


def _manifest_problem(dump: Path, manifest: BackupManifest) -> tuple[str | None, bool]:
    """(why the manifest is not trusted, whether it names files that are not its backup's own). A path
    read from a manifest is data: it must be exactly the name this program gives that file."""
    wrong = _wrong_types(manifest)
    if wrong:
        return wrong, False
    if manifest.file != dump.name:
        return f"its file {manifest.file!r} is not {dump.name!r}", True
    # only what this program names and makes: <database>-<UTC stamp>[-N].dump (a file) or .dir (a folder)
    ext = {"custom": ".dump", "directory": ".dir"}.get(manifest.format)
    if ext is None or not _is_our_name(dump.name, str(manifest.database), ext):
        return f"{dump.name!r} is not the name bridge-db gives a {manifest.format!r} backup", True
    if dump.is_dir() != (ext == ".dir"):
        return f"{dump.name!r} is a {'folder' if dump.is_dir() else 'file'}, not what a {ext} backup is", True
    if manifest.globals_file is not None:
        expected = dump.name + GLOBALS_SUFFIX
        if manifest.globals_file != expected:
            return f"its globals_file {manifest.globals_file!r} is not {expected!r}", True
        globals_path = dump.with_name(expected)
        if globals_path.is_symlink() or (globals_path.exists() and not globals_path.is_file()):
            return f"its globals file {expected} is not a regular file", True
    for key in ("started_at", "finished_at"):
        try:
            when = datetime.fromisoformat(getattr(manifest, key))
        except (TypeError, ValueError):
            return f"{key} is not an ISO 8601 time", False
        if when.tzinfo is None:
            return f"{key} has no time zone", False
    return None, False


def _wrong_types(manifest: BackupManifest) -> str | None:
    """Which field of a manifest (JSON, i.e. data) does not have the type this program writes, if any."""

    def number(value, whole: bool) -> bool:
        return not isinstance(value, bool) and isinstance(value, int if whole else (int, float))

    for key in ("file", "environment", "database", "format", "sha256", "started_at", "finished_at"):
        if not isinstance(getattr(manifest, key), str):
            return f"{key} is not a string"
    checks = {
        "size_bytes": number(manifest.size_bytes, True) and manifest.size_bytes >= 0,
        "duration_s": number(manifest.duration_s, False),
        "migration_head": manifest.migration_head is None or number(manifest.migration_head, True),
        "verification": isinstance(manifest.verification, dict),
        "row_counts": manifest.row_counts is None
        or (
            isinstance(manifest.row_counts, dict)
            and all(isinstance(k, str) and number(v, True) for k, v in manifest.row_counts.items())
        ),
        "globals_file": manifest.globals_file is None or isinstance(manifest.globals_file, str),
    }
    bad = [key for key, ok in checks.items() if not ok]
    return f"{bad[0]} has the wrong type" if bad else None


def _finished(entry: BackupEntry) -> datetime | None:
    if entry.manifest is None or entry.problem:
        return None
    return datetime.fromisoformat(entry.manifest.finished_at)


def plan_retention(
    entries: list[BackupEntry], keep_last: int, keep_daily: int, keep_weekly: int, now: datetime | None = None
) -> tuple[list[BackupEntry], list[BackupEntry]]:
    """(keep, delete), for each environment's database in the folder: the newest `keep_last`, the newest
    of each of the last `keep_daily` days and `keep_weekly` ISO weeks, and always the newest verified
    backup. Backups without a manifest, or with one that is not trusted, are kept."""
    now = now or datetime.now(UTC)
    keep: set[str] = {e.path for e in entries if not e.manifest or e.problem}
    # Each environment's database on its own: a folder shared by several (a backup_dir without {env})
    # must not let one database's newer backups push out another's, its newest verified one included.
    groups: dict[tuple[str, str], list[BackupEntry]] = {}
    for entry in entries:  # newest first
        if entry.manifest and not entry.problem:
            groups.setdefault((str(entry.manifest.environment), str(entry.manifest.database)), []).append(entry)
    for good in groups.values():
        keep |= {e.path for e in good[:keep_last]}
        days_seen: set = set()
        weeks_seen: set = set()
        for entry in good:  # newest first
            when = _finished(entry)
            assert when is not None  # `good` holds only entries with a trusted manifest
            day, week = when.date(), when.isocalendar()[:2]
            if now - when < timedelta(days=keep_daily) and day not in days_seen:
                days_seen.add(day)
                keep.add(entry.path)
            if now - when < timedelta(weeks=keep_weekly) and week not in weeks_seen:
                weeks_seen.add(week)
                keep.add(entry.path)
        verified = [e for e in good if e.state in ("restored", "listed")]
        if verified:
            keep.add(verified[0].path)
    return [e for e in entries if e.path in keep], [e for e in entries if e.path not in keep]


def prune(
    folder: Path,
    keep_last: int,
    keep_daily: int,
    keep_weekly: int,
    dry_run: bool = False,
    lock_wait: float = 0,
    on_wait: Callable[[Path, float], None] | None = None,
) -> list[str]:
    """Apply retention. Returns every file deleted (or, with `dry_run`, that would be): exactly the
    dump, its manifest and its globals file, by the names this program gave them, inside `folder`.
    A manifest that names anything else makes the whole prune refuse (exit 8) before deleting."""
    folder = Path(folder)
    with _folder_lock(folder, lock_wait, on_wait) if folder.is_dir() else _nothing():
        entries = list_backups(folder)
        unsafe = [e for e in entries if e.unsafe]
        if unsafe:
            raise BackupFailed(
                f"{Path(unsafe[0].path).name}{MANIFEST_SUFFIX}: {unsafe[0].problem}; "
                "prune refused, nothing was deleted",
                "a manifest may only name its own backup's files: inspect that manifest (it may have been "
                "tampered with), then fix or move it",
            )
        _, delete = plan_retention(entries, keep_last, keep_daily, keep_weekly)
        files = [str(folder / name) for entry in delete for name in _own_files(entry)]
        if not dry_run:
            for path in files:
                _discard_own(folder, Path(path).name)
    return files


def _own_files(entry: BackupEntry) -> list[str]:
    """The exact names of the files that make up one backup, as this program names them."""
    name = Path(entry.path).name
    names = [name, name + MANIFEST_SUFFIX]
    if entry.manifest and entry.manifest.globals_file:
        names.append(name + GLOBALS_SUFFIX)
    return names


def _discard_own(folder: Path, name: str) -> None:
    """Delete `folder/name`, a file (or dump folder) this program created; never a path from elsewhere."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise BackupFailed(f"refusing to delete {name!r}: not a plain file name", "report it with this output")
    _discard(folder / name)


@dataclass
class RestoreResult:
    file: str
    database: str
    replaced: str | None  # the old database, renamed and kept, when --overwrite replaced it
    row_counts_checked: bool
    duration_s: float
    throughput_mb_s: float
    stale_removed: list[str] = field(default_factory=list)  # scratch databases of killed runs, dropped

    def as_dict(self) -> dict:
        return asdict(self)


def restore_backup(
    target: Target,
    admin: Target,
    dump: Path,
    *,
    target_db: str | None = None,
    overwrite: bool = False,
    confirm: Callable[[str], bool],
    jobs: int | None = None,
) -> RestoreResult:
    """Check the sha256, restore into a new database (default `<db>_restore_<time>`), compare row
    counts with the manifest. Replacing the environment's own database needs `overwrite` and a
    confirmation; the old one is renamed and kept, never dropped."""
    dump = Path(dump)
    manifest = read_manifest(dump)
    if not dump.exists() or manifest is None:
        raise BackupFailed(
            f"{dump}: not a complete backup (file or manifest missing)", "pick one from `bridge-db backups`"
        )
    wrong = _wrong_types(manifest)
    if wrong:
        raise BackupFailed(
            f"{dump.name}: its manifest is not one bridge-db wrote ({wrong})", "pick one from `bridge-db backups`"
        )
    size, digest = _size_and_sha256(dump)
    if digest != manifest.sha256:
        raise BackupFailed(
            f"{dump.name}: sha256 {digest} does not match the manifest's {manifest.sha256}",
            "the file is damaged or was altered: restore another backup",
        )
    # The database the environment reaches: named in its connection, or else (a `service`, libpq's
    # defaults) as the server says; never the manifest's name, which is another environment's when
    # refreshing one from another's backup.
    env_db = target.database or (_reached_database(target) if overwrite else None) or manifest.database
    if overwrite and target_db not in (None, env_db):
        raise UsageError(
            f"--overwrite replaces the environment's database {env_db}, but --target-db names {target_db}",
            "drop --target-db to replace the environment's database, or drop --overwrite for a drill",
        )
    stamp = datetime.now(UTC).strftime(STAMP).lower()
    dest = target_db or (env_db if overwrite else _database_name(manifest.database, f"_restore_{stamp}"))
    _check_database_name(dest)
    replacing = dest == env_db
    if replacing and not overwrite:
        raise RefusedByPolicy(
            f"restoring over {env_db}, the environment's database, needs --overwrite",
            "restore into a new database (the default) and check it first",
        )
    if replacing and not confirm(
        # named as the admin connection reaches it: that is where the renames happen
        f"Replace database {env_db} ({with_database(admin, env_db).label}) with {dump.name}? "
        "(the current one is kept, renamed)"
    ):
        raise RefusedByPolicy("restore not confirmed; nothing changed", "answer yes, or pass --yes")
    if replacing:
        _check_same_server(target, admin, env_db)
    stale = clean_stale_scratch_databases(admin)
    if replacing:
        _check_can_replace(admin, env_db)
    elif _database_exists(admin, dest):
        raise UsageError(f"database {dest} already exists", "choose another --target-db")

    t0 = time.perf_counter()
    staging = _database_name(dest, f"_incoming_{uuid.uuid4().hex[:8]}") if replacing else dest
    made_by = manifest.pg_dump_version if str(manifest.pg_dump_version).isdigit() else None
    pg_restore = pgtools.restore_tool(_server_major(admin), int(made_by) if made_by else None).path
    keep_as = _database_name(env_db, f"_before_restore_{stamp}")
    replaced = keep_as if replacing else None
    _restore_into(
        admin,
        dump,
        staging,
        pg_restore,
        jobs or 2,
        manifest.row_counts,
        [],
        "the restored copy was dropped; try another backup",
        then=(lambda: _swap_databases(admin, env_db, staging, keep_as))
        if replacing
        else (lambda: _unmark(admin, dest)),
    )
    elapsed = time.perf_counter() - t0
    return RestoreResult(
        str(dump),
        dest,
        replaced,
        manifest.row_counts is not None,
        round(elapsed, 3),
        round(size / 1e6 / max(elapsed, 1e-6), 1),
        stale_removed=stale,
    )


def _reached_database(target: Target) -> str:
    """current_database() of the target's own connection, for a target whose database name is not
    written in its connection (a service entry, PGDATABASE, the user name)."""
    from .errors import ConnectionFailed

    try:
        with cursor_for(target) as cur:
            cur.execute("SELECT current_database()")
            return cur.fetchone()[0]
    except (ConnectionFailed, psycopg2.Error) as exc:
        raise UsageError(
            f"--overwrite: cannot tell which database {target.label} reaches ({getattr(exc, 'message', exc)})",
            "name the database in the environment (database = ...) or in --dsn, then run again",
        ) from None


def _database_name(base: str, suffix: str) -> str:
    """base + suffix, with base shortened so that the whole fits PostgreSQL's 63 bytes (a longer name
    would be cut silently by the server, and then not be the name we use)."""
    room = 63 - len(suffix.encode())
    short = base.encode()[:room].decode(errors="ignore")
    return short + suffix


def _check_database_name(name: str) -> None:
    if not name or len(name.encode()) > 63 or "\0" in name:
        raise UsageError(
            f"invalid database name {name!r}", "use a name of 1 to 63 bytes (any characters PostgreSQL accepts)"
        )


def _server_identity(target: Target) -> int | None:
    """The cluster's system identifier (pg_control), or None when this role may not read it."""
    from .errors import ConnectionFailed

    try:
        with cursor_for(target) as cur:
            cur.execute("SELECT system_identifier FROM pg_control_system()")
            return cur.fetchone()[0]
    except (psycopg2.Error, ConnectionFailed):
        return None


def _check_same_server(target: Target, admin: Target, database: str) -> None:
    """The renames of --overwrite run on the admin connection's server: it must be the server of the
    environment's database, never another one that happens to hold a database of that name."""
    if admin.dsn == target.dsn and admin.params == target.params:
        return
    own = _server_identity(target)  # its own connection: the environment's database, as it reaches it
    theirs = _server_identity(with_database(admin, "postgres"))
    # unknown on either side (the database is missing, a server that hides pg_control): the checks that
    # follow decide, as before
    if own is not None and theirs is not None and own != theirs:
        raise UsageError(
            f"--overwrite: the admin connection ({admin.label}) reaches another server than database "
            f"{database} ({target.label}); nothing was changed",
            "point --admin-dsn / $BRIDGE_DB_ADMIN_DSN (or admin_user) at the environment's own server",
        )


def _check_can_replace(admin: Target, database: str) -> None:
    """Before any copy is made: the admin connection must be able to rename the environment's database
    and end the sessions on it, i.e. be a superuser, or its owner with CREATEDB (and pg_signal_backend
    while other roles are connected to it)."""
    with _maintenance(admin) as cur:
        cur.execute(
            "SELECT r.rolsuper, r.rolcreatedb, pg_has_role(current_user, d.datdba, 'MEMBER'), "
            "pg_has_role(current_user, 'pg_signal_backend', 'MEMBER'), current_user, "
            "(SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname AND a.usename <> current_user) "
            "FROM pg_roles r, pg_database d WHERE r.rolname = current_user AND d.datname = %s",
            (database,),
        )
        row = cur.fetchone()
    if row is None:
        raise UsageError(
            f"database {database} does not exist, so there is nothing to overwrite",
            "restore into a new database instead (drop --overwrite)",
        )
    superuser, createdb, owner, can_signal, user, others = row
    needs = [("CREATEDB", createdb), (f"ownership of {database}", owner)]
    if others:
        needs.append((f"pg_signal_backend (other roles have {others} session(s) on it)", can_signal))
    missing = [what for what, ok in needs if not ok]
    if not superuser and missing:
        raise PrerequisiteMissing(
            f"replacing database {database} needs a superuser, or its owner with CREATEDB; {user} lacks "
            f"{', '.join(missing)}; nothing was restored",
            "pass --admin-dsn for a superuser (or set admin_user), or grant what is missing",
        )


def _swap_databases(admin: Target, current: str, incoming: str, keep_as: str) -> None:
    """current -> keep_as, incoming -> current, and the incoming copy's scratch mark removed, in ONE
    transaction: a failure, SIGTERM or SIGKILL between the two renames leaves neither (the server rolls
    back), so the environment's database is never left renamed away; the caller drops the copy."""

    def rename(cur, old: str, new: str) -> None:
        cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))

    try:
        with _maintenance(admin) as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (current,),
            )
            cur.execute("BEGIN")
            cur.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(incoming)))
            rename(cur, current, keep_as)
            rename(cur, incoming, current)
            cur.execute("COMMIT")  # on any exception the connection closes and the server rolls back
    except psycopg2.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BackupFailed(
            f"swapping the restored copy in for {current} failed: {first}; {current} is unchanged and the "
            "copy was dropped",
            "check the admin connection's rights (superuser, or owner with CREATEDB) and run again",
        ) from None


# --------------------------------------------------------------------------- helpers


def free_space_for_backup(target: Target, folder: Path) -> tuple[int, int]:
    """(needed, free) bytes: the database's size is an upper bound for its dump."""
    folder = private_folder(folder)
    with cursor_for(target) as cur:
        cur.execute("SELECT pg_database_size(current_database())")
        needed = cur.fetchone()[0]
    return needed, shutil.disk_usage(folder).free


def _server_major(target: Target) -> int:
    with cursor_for(target) as cur:
        cur.execute("SELECT current_setting('server_version_num')::int / 10000")
        return cur.fetchone()[0]


def _maintenance(admin: Target):
    """A cursor on the server's maintenance database, for CREATE/DROP/ALTER DATABASE."""
    return _unlimited(with_database(admin, "postgres"))


@contextmanager
def _unlimited(target: Target):
    """A cursor whose statements no role- or database-level statement_timeout cancels (CREATE/DROP
    DATABASE of a large database takes its time), like pg_dump's and pg_restore's own sessions."""
    with cursor_for(target) as cur:
        cur.execute(NO_STATEMENT_TIMEOUT)
        yield cur


def _database_exists(admin: Target, name: str) -> bool:
    with _maintenance(admin) as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        return cur.fetchone() is not None


def _create_database(admin: Target, name: str) -> None:
    try:
        with _maintenance(admin) as cur:
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    except psycopg2.errors.InsufficientPrivilege:
        raise PrerequisiteMissing(
            f"creating database {name} needs CREATEDB ({admin.label})",
            "set admin_user (or --admin-dsn) to a role with CREATEDB",
        ) from None
    except psycopg2.errors.DuplicateDatabase:  # created meanwhile, e.g. by a concurrent restore: not ours
        raise UsageError(
            f"database {name} already exists (it was created while this run was starting); it was left alone",
            "choose another --target-db, or run the restore again for a new default name",
        ) from None


def _drop_database(admin: Target, name: str) -> None:
    with _maintenance(admin) as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def private_folder(folder: Path) -> Path:
    """`folder`, with every missing part created 0700. An existing folder is used as it is: its mode
    belongs to whoever made it (e.g. a shared 1777 folder) and is never changed."""
    folder = Path(folder)
    try:
        missing = []
        for part in (folder, *folder.parents):
            if part.is_dir():
                break
            missing.append(part)
        for part in reversed(missing):
            try:
                os.mkdir(part, 0o700)
            except FileExistsError:
                if not part.is_dir():
                    raise
        if not folder.is_dir():
            raise NotADirectoryError(20, "Not a directory")
    except OSError as exc:
        raise BackupFailed(
            f"cannot use folder {folder}: {exc.strerror or exc}",
            "check the path and its permissions (backup_dir / log_dir in environments.toml)",
        ) from None
    return folder


def _make_private(path: Path) -> None:
    if path.is_dir():
        os.chmod(path, 0o700)
        for child in path.iterdir():
            os.chmod(child, 0o600)
    else:
        os.chmod(path, 0o600)


def _size_and_sha256(path: Path, digest: bool = True) -> tuple[int, str]:
    """Size and SHA-256 of a dump file, or of a directory dump's files in name order."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    hasher = hashlib.sha256()
    size = 0
    for file in files:
        size += file.stat().st_size
        if not digest:
            continue
        if path.is_dir():
            hasher.update(file.name.encode() + b"\0")
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
    return size, hasher.hexdigest() if digest else ""


def _file_stem(database: str) -> str:
    """The database name as the start of a file name: a name PostgreSQL accepts may hold '/' or start
    with '.', which must neither leave the folder nor hide the file."""
    stem = database.replace("/", "_")
    return "_" + stem[1:] if stem.startswith(".") else stem


def _unique_name(folder: Path, database: str, when: datetime, fmt: str) -> str:
    base = f"{_file_stem(database)}-{when.strftime(STAMP)}"
    ext = ".dump" if fmt == "custom" else ".dir"
    name, n = base + ext, 1
    while (folder / name).exists():
        n += 1
        name = f"{base}-{n}{ext}"
    return name


def _write_manifest(dump: Path, manifest: BackupManifest) -> None:
    path = dump.with_name(dump.name + MANIFEST_SUFFIX)
    partial = path.with_name(PARTIAL_PREFIX + path.name + PARTIAL_SUFFIX)
    partial.write_text(json.dumps(asdict(manifest), indent=2) + "\n", encoding="utf-8")
    os.chmod(partial, 0o600)
    os.replace(partial, path)


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _remove_stale_partials(folder: Path, database: str) -> None:
    """Leftovers of a killed backup of `database`: never shown as backups, removed by the next one.
    Only names this program gives its own partial files are removed; another program's `.*.partial`
    files are left alone. The folder lock is held, so no backup of ours is writing them."""
    for path in folder.iterdir():
        if _is_our_partial(path.name, database):
            _discard(path)


def _is_our_partial(name: str, database: str) -> bool:
    """`.<database>-<UTC stamp>[-N].(dump|dir)[.manifest.json|.globals.sql].partial`"""
    if not (name.startswith(PARTIAL_PREFIX) and name.endswith(PARTIAL_SUFFIX)):
        return False
    inner = name[len(PARTIAL_PREFIX) : -len(PARTIAL_SUFFIX)]
    for suffix in (MANIFEST_SUFFIX, GLOBALS_SUFFIX):
        inner = inner.removesuffix(suffix)
    return any(_is_our_name(inner, database, ext) for ext in (".dump", ".dir"))


def _is_our_name(name: str, database: str, ext: str) -> bool:
    """`<database>-<UTC stamp>[-N]<ext>`, as _unique_name makes it."""
    stem = _file_stem(database)
    if not (name.startswith(stem + "-") and name.endswith(ext)):
        return False
    stamp, _, counter = name[len(stem) + 1 : -len(ext)].partition("-")
    try:
        datetime.strptime(stamp, STAMP)
    except ValueError:
        return False
    return counter == "" or (counter.isascii() and counter.isdigit())


@contextmanager
def _folder_lock(folder: Path, wait_seconds: float = 0, on_wait: Callable[[Path, float], None] | None = None):
    """One backup or prune at a time per folder (cron and a person at once). Another holder is
    waited for, at most `wait_seconds`, like the migration lock."""
    try:
        fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:  # a folder, a symlink, another user's file of that name
        raise BackupFailed(
            f"cannot open the lock file {folder / '.lock'}: {exc.strerror or exc}",
            "the backup folder's .lock must be a regular file bridge-db may write: remove or fix it, "
            "or choose another --backup-dir / backup_dir",
        ) from None
    with os.fdopen(fd, "w") as handle:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BackupFailed(
                        f"another backup or prune is running in {folder}"
                        + (f"; waited {wait_seconds:g}s" if wait_seconds else ""),
                        "wait for it to finish and run again; scheduled runs should not overlap",
                    ) from None
                if on_wait:
                    on_wait(folder, wait_seconds)
                    on_wait = None  # say it once
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _nothing():
    yield
