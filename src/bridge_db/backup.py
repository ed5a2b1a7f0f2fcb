"""Backups: pg_dump into a per-environment folder with a manifest beside each dump, verification,
retention, and restore (into a new database by default).

A dump is written under a temporary name (`.NAME.partial`) and renamed only once pg_dump succeeded and
`pg_restore --list` read it back, so a file without the partial prefix and with a manifest is complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
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
from psycopg2 import sql

from .connection import Target, connect, cursor_for, libpq_environment, with_database
from .errors import BackupFailed, PrerequisiteMissing, RefusedByPolicy, UsageError
from .history import applied_head

MANIFEST_SUFFIX = ".manifest.json"
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
    state: str  # restored | listed | unverified | no-manifest

    def as_dict(self) -> dict:
        return {**asdict(self), "manifest": asdict(self.manifest) if self.manifest else None}


# --------------------------------------------------------------------------- tools


def client_tool(name: str, server_major: int) -> tuple[Path, int]:
    """The newest `name` (pg_dump, pg_restore, pg_dumpall) whose major version is at least the server's:
    an older client cannot dump a newer server correctly."""
    candidates: list[Path] = []
    if os.environ.get("BRIDGE_PG_BINDIR"):
        candidates.append(Path(os.environ["BRIDGE_PG_BINDIR"]) / name)
    else:
        import glob

        candidates += [Path(p) for p in glob.glob(f"/usr/lib/postgresql/*/bin/{name}")]
        candidates += [Path(p) for p in glob.glob(f"/usr/pgsql-*/bin/{name}")]
        on_path = shutil.which(name)
        if on_path:
            candidates.append(Path(on_path))
    found: list[tuple[int, Path]] = []
    for path in candidates:
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        try:
            out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        match = re.search(r"(\d+)(?:\.\d+)?", out)
        if match:
            found.append((int(match.group(1)), path))
    usable = sorted((v, p) for v, p in found if v >= server_major)
    if not usable:
        newest = max(found)[0] if found else None
        raise BackupFailed(
            f"no {name} of version {server_major} or newer (server is {server_major}"
            + (f", newest {name} found is {newest})" if newest else f", no {name} found)"),
            f"install the client tools of PostgreSQL {server_major} (Debian/Ubuntu: apt-get install "
            f"postgresql-client-{server_major}), or point BRIDGE_PG_BINDIR at them",
        )
    version, path = usable[-1]
    return path, version


def _run_tool(cmd: list[str], env: dict[str, str], what: str, timeout: float | None = None) -> str:
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BackupFailed(f"{what} did not finish within {timeout:.0f}s", "check the server and run again") from None
    if result.returncode != 0:
        lines = [ln for ln in (result.stderr or result.stdout).strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit {result.returncode}"
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

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "manifest": asdict(self.manifest),
            "throughput_mb_s": self.throughput_mb_s,
            "pruned": self.pruned,
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
) -> BackupResult:
    """pg_dump the target into `folder`, verify it, and write its manifest. Raises BackupFailed and
    leaves no file behind on any failure; earlier backups are never touched."""
    policy = target.environment.policy
    fmt = fmt or policy.backup_format
    jobs = jobs or policy.backup_jobs
    if fmt not in ("custom", "directory"):
        raise UsageError(f"unknown backup format {fmt!r}", "use custom or directory")
    folder = _private_folder(folder)
    with _folder_lock(folder):
        _remove_stale_partials(folder)
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
                pg_dump, dump_major = client_tool("pg_dump", version_num // 10000)
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
                    f"--lock-wait-timeout={int(policy.lock_wait_seconds * 1000)}",
                ]
                if fmt == "directory":
                    cmd.append(f"--jobs={jobs}")
                try:
                    _run_tool(cmd, libpq_environment(target), "pg_dump")
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
            pg_restore, _ = client_tool("pg_restore", version_num // 10000)
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
    return BackupResult(str(final), manifest, round(size / 1e6 / elapsed, 1))


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
    scratch = f"bridge_verify_{uuid.uuid4().hex[:12]}"
    _restore_into(
        admin,
        dump,
        scratch,
        pg_restore,
        jobs,
        expected,
        ["--no-owner", "--no-privileges"],
        "the dump is not trustworthy; nothing was kept; run the backup again",
    )
    _drop_database(admin, scratch)


def _restore_into(
    admin: Target,
    dump: Path,
    database: str,
    pg_restore: Path,
    jobs: int,
    expected: dict[str, int] | None,
    options: list[str],
    next_step: str,
) -> None:
    """Create `database`, pg_restore `dump` into it and, when `expected` is given, compare its per-table
    row counts. On any failure the database is dropped again, so nothing half-restored is left."""
    _create_database(admin, database)
    try:
        target = with_database(admin, database)
        _run_tool(
            [
                str(pg_restore),
                "--exit-on-error",
                "--no-password",
                *options,
                f"--jobs={jobs}",
                f"--dbname={database}",
                str(dump),
            ],
            libpq_environment(target),
            "pg_restore",
        )
        if expected is not None:
            with cursor_for(target) as cur:
                actual = _row_counts(cur)
            if actual != expected:
                diff = {
                    t: (expected.get(t), actual.get(t))
                    for t in sorted(set(expected) | set(actual))
                    if expected.get(t) != actual.get(t)
                }
                raise BackupFailed(f"restored row counts differ (table: expected, restored): {diff}", next_step)
    except BaseException:
        _drop_database(admin, database)
        raise


def _dump_globals(admin: Target, folder: Path, name: str, server_major: int) -> str:
    """Roles and tablespaces, without password hashes (--no-role-passwords)."""
    pg_dumpall, _ = client_tool("pg_dumpall", server_major)
    globals_name = f"{name}.globals.sql"
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


def write_status_marker(path: Path, environment: str, result: BackupResult | None, error=None) -> None:
    """The freshness marker monitoring reads: when the last backup ran, how it ended, and where the
    dump is. Replaced atomically, written on failure too."""
    marker = {
        "environment": environment,
        "finished_at": datetime.now(UTC).isoformat(),
        "result": "ok" if error is None else "failed",
        "exit_code": 0 if error is None else error.exit_code,
        "message": None if error is None else error.message,
        "path": result.path if result else None,
        "size_bytes": result.manifest.size_bytes if result else None,
        "verified": result.manifest.verified if result else None,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


# --------------------------------------------------------------------------- listing and retention


def list_backups(folder: Path) -> list[BackupEntry]:
    """Complete backups, newest first. Dumps without a manifest are listed as such, never as good."""
    if not folder.is_dir():
        return []
    now = time.time()
    entries = []
    for path in folder.iterdir():
        if path.name.startswith(PARTIAL_PREFIX) or path.name.endswith((MANIFEST_SUFFIX, ".globals.sql")):
            continue
        manifest = read_manifest(path)
        entries.append(
            BackupEntry(
                path=str(path),
                manifest=manifest,
                age_s=round(now - path.stat().st_mtime, 1),
                size_bytes=manifest.size_bytes if manifest else _size_and_sha256(path, digest=False)[0],
                state=manifest.verified if manifest else "no-manifest",
            )
        )
    return sorted(entries, key=lambda e: (e.manifest.finished_at if e.manifest else "", e.path), reverse=True)


def read_manifest(dump: Path) -> BackupManifest | None:
    path = dump.with_name(dump.name + MANIFEST_SUFFIX)
    try:
        return BackupManifest(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def plan_retention(
    entries: list[BackupEntry], keep_last: int, keep_daily: int, keep_weekly: int, now: datetime | None = None
) -> tuple[list[BackupEntry], list[BackupEntry]]:
    """(keep, delete): the newest `keep_last`, the newest of each of the last `keep_daily` days and
    `keep_weekly` ISO weeks, and always the newest verified backup. Unmanifested files are kept."""
    now = now or datetime.now(UTC)
    good = [e for e in entries if e.manifest]
    keep: set[str] = {e.path for e in entries if not e.manifest}
    keep |= {e.path for e in good[:keep_last]}
    days_seen: set = set()
    weeks_seen: set = set()
    for entry in good:  # newest first
        when = datetime.fromisoformat(entry.manifest.finished_at)
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


def prune(folder: Path, keep_last: int, keep_daily: int, keep_weekly: int, dry_run: bool = False) -> list[str]:
    with _folder_lock(folder) if folder.is_dir() else _nothing():
        _, delete = plan_retention(list_backups(folder), keep_last, keep_daily, keep_weekly)
        if not dry_run:
            for entry in delete:
                _delete_backup(Path(entry.path), entry.manifest)
    return [e.path for e in delete]


def _delete_backup(path: Path, manifest: BackupManifest | None) -> None:
    _discard(path)
    _discard(path.with_name(path.name + MANIFEST_SUFFIX))
    if manifest and manifest.globals_file:
        _discard(path.with_name(manifest.globals_file))


# --------------------------------------------------------------------------- restore


@dataclass
class RestoreResult:
    file: str
    database: str
    replaced: str | None  # the old database, renamed and kept, when --overwrite replaced it
    row_counts_checked: bool
    duration_s: float
    throughput_mb_s: float

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
    size, digest = _size_and_sha256(dump)
    if digest != manifest.sha256:
        raise BackupFailed(
            f"{dump.name}: sha256 {digest} does not match the manifest's {manifest.sha256}",
            "the file is damaged or was altered: restore another backup",
        )
    env_db = target.database or manifest.database
    dest = target_db or f"{manifest.database}_restore_{datetime.now(UTC).strftime(STAMP).lower()}"
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$", dest):
        raise UsageError(f"invalid database name {dest!r}", "use letters, digits and _")
    replacing = dest == env_db
    if replacing and not overwrite:
        raise RefusedByPolicy(
            f"restoring over {env_db}, the environment's database, needs --overwrite",
            "restore into a new database (the default) and check it first",
        )
    if replacing and not confirm(
        f"Replace database {env_db} on {target.label} with {dump.name}? (the current one is kept, renamed)"
    ):
        raise RefusedByPolicy("restore not confirmed; nothing changed", "answer yes, or pass --yes")
    if _database_exists(admin, dest) and not replacing:
        raise UsageError(f"database {dest} already exists", "choose another --target-db")

    t0 = time.perf_counter()
    staging = f"{dest}_incoming_{uuid.uuid4().hex[:8]}" if replacing else dest
    pg_restore, _ = client_tool("pg_restore", _server_major(admin))
    _restore_into(
        admin,
        dump,
        staging,
        pg_restore,
        jobs or 2,
        manifest.row_counts,
        [],
        "the restored copy was dropped; try another backup",
    )
    replaced = None
    if replacing:
        replaced = f"{env_db}_before_restore_{datetime.now(UTC).strftime(STAMP).lower()}"
        _swap_databases(admin, env_db, staging, replaced)
    elapsed = time.perf_counter() - t0
    return RestoreResult(
        str(dump),
        dest,
        replaced,
        manifest.row_counts is not None,
        round(elapsed, 3),
        round(size / 1e6 / max(elapsed, 1e-6), 1),
    )


def _swap_databases(admin: Target, current: str, incoming: str, keep_as: str) -> None:
    """current -> keep_as, incoming -> current; on failure the first rename is undone."""

    def rename(cur, old: str, new: str) -> None:
        cur.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))

    with _maintenance(admin) as cur:
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (current,),
        )
        rename(cur, current, keep_as)
        try:
            rename(cur, incoming, current)
        except psycopg2.Error:
            rename(cur, keep_as, current)
            raise


# --------------------------------------------------------------------------- helpers


def free_space_for_backup(target: Target, folder: Path) -> tuple[int, int]:
    """(needed, free) bytes: the database's size is an upper bound for its dump."""
    folder = _private_folder(folder)
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
    return cursor_for(with_database(admin, "postgres"))


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


def _drop_database(admin: Target, name: str) -> None:
    with _maintenance(admin) as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _private_folder(folder: Path) -> Path:
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    except OSError as exc:
        raise BackupFailed(
            f"cannot use backup folder {folder}: {exc.strerror}",
            "check the path and its permissions (backup_dir in environments.toml)",
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


def _unique_name(folder: Path, database: str, when: datetime, fmt: str) -> str:
    base = f"{database}-{when.strftime(STAMP)}"
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


def _remove_stale_partials(folder: Path) -> None:
    """Leftovers of a backup that was killed: never shown as backups, removed by the next one."""
    for path in folder.glob(f"{PARTIAL_PREFIX}*{PARTIAL_SUFFIX}"):
        _discard(path)


@contextmanager
def _folder_lock(folder: Path):
    """One backup or prune at a time per folder (cron and a person at once)."""
    with os.fdopen(os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o600), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupFailed(
                f"another backup or prune is running in {folder}",
                "wait for it to finish; scheduled runs should not overlap",
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _nothing():
    yield
