"""Point-in-time recovery with pgBackRest: `pitr status` (archive health, backups, the restore points
production runs recorded) and `pitr restore --to` (by default a drill: a NEW cluster built from the
repository in a scratch folder, recovered to a restore point, a time or an LSN, then row counts and the
migration head read there). docs/recovery.md is the runbook.

pgBackRest and the server binaries run as the invoking user, or, when that is root (which PostgreSQL
and the repository's owner refuse), as the cluster's OS user (postgres, or $BRIDGE_DEVDB_OS_USER).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

from .connection import Target, connect
from .errors import BackupFailed, BridgeDbError, PrerequisiteMissing, RefusedByPolicy, UsageError

LSN_RE = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")
MAX_NAME = 63  # MAXFNAMELEN - 1
SERVER_START_WAIT = 60  # pg_ctl -w for the postmaster itself; recovery is waited for separately


@dataclass
class PitrSettings:
    stanza: str
    config: Path | None
    os_user: str | None  # run pgBackRest and the server as this user (None: as ourselves)

    def pgbackrest(self, *args: str) -> list[str]:
        return ["pgbackrest", *([f"--config={self.config}"] if self.config else []), f"--stanza={self.stanza}", *args]


def settings_for(target: Target, config_path: Path | None) -> PitrSettings:
    from .embedded import _pick_service_user

    return PitrSettings(
        target.environment.policy.pitr_stanza, config_path, _pick_service_user() if os.geteuid() == 0 else None
    )


def _run(settings: PitrSettings, cmd: list[str], timeout: float = 3600) -> subprocess.CompletedProcess:
    kwargs: dict[str, Any] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") or k.startswith("PGBACKREST_")}
    env["LC_ALL"] = "C"
    cwd = "/"
    if settings.os_user:
        entry = pwd.getpwnam(settings.os_user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        env["HOME"] = entry.pw_dir
    if cmd[0] == "pgbackrest" and not shutil.which("pgbackrest"):
        raise PrerequisiteMissing(
            "pgbackrest is not installed on this machine",
            "install it (Debian/Ubuntu: apt-get install pgbackrest), or run the postgresql_pitr role",
        )
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise BackupFailed(f"{cmd[0]} did not finish within {timeout:.0f}s", "read its log, then run again") from None


def _last_error(result: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("ERROR", "FATAL"))]
    return (errors or lines or [f"exit {result.returncode}"])[0]


def stanza_info(settings: PitrSettings) -> dict:
    """`pgbackrest info --output=json` of the stanza (its backups, archive range and status)."""
    result = _run(settings, settings.pgbackrest("--log-level-file=off", "--output=json", "info"), timeout=120)
    if result.returncode != 0:
        raise BackupFailed(
            f"pgbackrest info failed for stanza {settings.stanza}: {_last_error(result)}",
            "check pitr_stanza and pitr_config in environments.toml (and that the repository is reachable)",
        )
    try:
        info = json.loads(result.stdout)
    except ValueError:
        raise BackupFailed(f"pgbackrest info printed no JSON: {result.stdout[:200]!r}", "run it by hand") from None
    return info[0] if info else {}


# --------------------------------------------------------------------------- status


@dataclass
class PitrStatus:
    target: str
    stanza: str
    archive_mode: str | None = None
    archive_command: str | None = None
    last_archived_wal: str | None = None
    last_archived_at: str | None = None
    archive_age_seconds: float | None = None
    last_failed_wal: str | None = None
    last_failed_at: str | None = None
    repository: str | None = None  # pgBackRest's status message of the stanza
    last_full: dict | None = None
    last_diff: dict | None = None
    backups: int = 0
    restore_points: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {**self.__dict__, "ok": self.ok}


def _backup_summary(entry: dict) -> dict:
    stop = entry.get("timestamp", {}).get("stop")
    return {
        "label": entry.get("label"),
        "type": entry.get("type"),
        "finished_at": datetime.fromtimestamp(stop, UTC).isoformat() if stop else None,
        "size_bytes": entry.get("info", {}).get("size"),
        "repository_bytes": entry.get("info", {}).get("repository", {}).get("size"),
        "lsn_stop": entry.get("lsn", {}).get("stop"),
        "error": entry.get("error", False),
    }


def pitr_status(target: Target, config_path: Path | None) -> PitrStatus:
    """Archive health from the server (pg_stat_archiver), backups from the repository, restore points
    from the run log. A failing archive, no archiving, or a stanza without a backup is a problem."""
    from .engine import read_archive_state
    from .inspection import recorded_restore_points

    settings = settings_for(target, config_path)
    report = PitrStatus(target.label, settings.stanza)
    conn = connect(target)
    try:
        with conn.cursor() as cur:
            archive = read_archive_state(cur)
            cur.execute("SELECT current_setting('archive_command'), now()")
            report.archive_command, now = cur.fetchone()
            cur.execute("SELECT to_regclass('public.schema_migrations_log') IS NOT NULL")
            if cur.fetchone()[0]:
                report.restore_points = recorded_restore_points(cur)
    finally:
        conn.close()
    report.archive_mode = archive.mode
    report.last_archived_wal, report.last_failed_wal = archive.last_archived_wal, archive.last_failed_wal
    if archive.last_archived_at:
        report.last_archived_at = archive.last_archived_at.isoformat()
        report.archive_age_seconds = round((now - archive.last_archived_at).total_seconds(), 1)
    if archive.last_failed_at:
        report.last_failed_at = archive.last_failed_at.isoformat()
    if not archive.on:
        report.problems.append("WAL archiving is off (archive_mode = off): no point-in-time recovery")
    elif archive.failing:
        report.problems.append(
            f"the WAL archive is failing: {archive.last_failed_wal} could not be archived "
            f"(last success: {archive.last_archived_wal or 'none'}); the server log names the archive_command's error"
        )
    info = stanza_info(settings)
    report.repository = info.get("status", {}).get("message")
    if info.get("status", {}).get("code") not in (0, None):
        report.problems.append(f"stanza {settings.stanza}: {report.repository}")
    backups = info.get("backup", [])
    report.backups = len(backups)
    fulls = [b for b in backups if b.get("type") == "full"]
    diffs = [b for b in backups if b.get("type") in ("diff", "incr")]
    report.last_full = _backup_summary(fulls[-1]) if fulls else None
    report.last_diff = _backup_summary(diffs[-1]) if diffs else None
    if not fulls and report.repository == "ok":
        report.problems.append(f"stanza {settings.stanza} has no full backup yet")
    return report


# --------------------------------------------------------------------------- restore


@dataclass
class PitrRestoreResult:
    target_type: str  # name | time | lsn
    to: str
    backup_set: str | None
    live: bool = False
    data_dir: str | None = None
    port: int | None = None
    socket_dir: str | None = None
    database: str | None = None
    head: int | None = None
    row_counts: dict[str, int] = field(default_factory=dict)
    restore_seconds: float = 0.0  # pgbackrest restore (files)
    recovery_seconds: float = 0.0  # start, WAL replay to the target, promotion
    kept: bool = False
    stop_command: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def target_type(to: str) -> str:
    """What --to names: an LSN (0/3000028), a time with its zone (2026-11-29 14:03:00+00), else a
    restore point name."""
    if not to or "\0" in to:
        raise UsageError("--to is empty", "give a restore point name, a time with its zone, or an LSN")
    if LSN_RE.match(to):
        return "lsn"
    if re.match(r"^\d{4}-\d{2}-\d{2}[ T]\d", to):
        try:
            when = datetime.fromisoformat(to)
        except ValueError:
            raise UsageError(f"--to {to!r} is not a time", "e.g. --to '2026-11-29 14:03:00+00:00'") from None
        if when.tzinfo is None:
            raise UsageError(
                f"--to {to!r} has no time zone, and the server's would be guessed",
                f"add it, e.g. --to '{to}+00:00'",
            )
        return "time"
    if len(to.encode()) > MAX_NAME:
        raise UsageError(f"--to {to[:20]}...: a restore point name has at most {MAX_NAME} bytes", "check the name")
    return "name"


def _choose_set(info: dict, kind: str, to: str, point_lsn: str | None) -> tuple[str | None, list[str]]:
    """The newest backup that ended before the target (pgBackRest takes the newest backup for a name
    target, which may end after it: recovery would then never reach the point)."""
    backups = [b for b in info.get("backup", []) if not b.get("error")]
    if not backups:
        raise BackupFailed(
            f"stanza {info.get('name')} has no backup to restore from", "take one: pgbackrest --type=full backup"
        )
    notes: list[str] = []

    def lsn_value(text: str) -> int:
        high, low = text.split("/")
        return (int(high, 16) << 32) + int(low, 16)

    if kind == "time":
        limit = datetime.fromisoformat(to).timestamp()
        fitting = [b for b in backups if b["timestamp"]["stop"] <= limit]
    elif kind == "lsn" or point_lsn:
        limit_lsn = lsn_value(to if kind == "lsn" else point_lsn or "0/0")
        fitting = [b for b in backups if lsn_value(b["lsn"]["stop"]) <= limit_lsn]
    else:
        notes.append(f"restore point {to} is not in this database's run log: the newest backup is used")
        fitting = backups
    if not fitting:
        raise BackupFailed(
            f"no backup of stanza {info.get('name')} ended before {to}: the repository cannot reach it",
            "choose a later target (bridge-db pitr status lists backups and restore points)",
        )
    return fitting[-1]["label"], notes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recorded_lsn(target: Target, name: str) -> str | None:
    from .inspection import recorded_restore_points

    try:
        conn = connect(target)
    except BridgeDbError:
        return None  # the host is lost: restore without knowing it
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.schema_migrations_log') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            points = recorded_restore_points(cur, limit=100000)
    except psycopg2.Error:
        return None
    finally:
        conn.close()
    return next((p["lsn"] for p in points if p["name"] == name), None)


def _server_running(target: Target) -> bool:
    try:
        conn = connect(target, start_embedded=False)
    except BridgeDbError:
        return False
    conn.close()
    return True


def pitr_restore(
    target: Target,
    config_path: Path | None,
    to: str,
    *,
    scratch_dir: str | os.PathLike | None = None,
    port: int | None = None,
    keep: bool = False,
    replace_live: bool = False,
    confirm=None,
    admin_user: str | None = None,
) -> PitrRestoreResult:
    kind = target_type(to)
    settings = settings_for(target, config_path)
    if replace_live:
        return _replace_live(target, settings, kind, to, confirm)
    info = stanza_info(settings)
    point_lsn = _recorded_lsn(target, to) if kind == "name" else None
    backup_set, notes = _choose_set(info, kind, to, point_lsn)
    result = PitrRestoreResult(kind, to, backup_set, notes=notes)
    scratch = _scratch_folder(scratch_dir, settings)
    data, run = scratch / "data", scratch / "run"
    size = next((b["info"]["size"] for b in info.get("backup", []) if b["label"] == backup_set), 0)
    if shutil.disk_usage(scratch).free < size:
        _remove(scratch)
        raise BackupFailed(
            f"{scratch} has {shutil.disk_usage(scratch).free // 2**20} MiB free, the backup needs {size // 2**20} MiB",
            "pass --scratch-dir on a larger file system",
        )
    result.port = port or _free_port()
    result.data_dir, result.socket_dir = str(data), str(run)
    result.database = str(target.database or "postgres")
    bindir: Path | None = None
    started = False
    try:
        t0 = time.monotonic()
        restored = _run(settings, settings.pgbackrest(
            f"--pg1-path={data}", f"--set={backup_set}", f"--type={kind}", f"--target={to}",
            "--target-action=promote", "--archive-mode=off", "--log-level-console=warn", "restore",
        ))  # fmt: skip
        if restored.returncode != 0:
            raise BackupFailed(
                f"pgbackrest restore of {backup_set} failed: {_last_error(restored)}",
                "nothing was changed on the server; fix the cause and run again",
            )
        result.restore_seconds = round(time.monotonic() - t0, 2)
        from .embedded import find_server_binaries

        bindir = find_server_binaries(data)
        _write_scratch_conf(scratch, result.port, settings)
        t1 = time.monotonic()
        start = _run(settings, [
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(scratch / "server.log"),
            "-o", f"-c config_file={scratch / 'bridge_pitr.conf'}", "-w", "-t", str(SERVER_START_WAIT), "start",
        ])  # fmt: skip
        started = True
        if start.returncode != 0:
            raise BackupFailed(f"the restored cluster did not start: {_log_tail(scratch)}", "read its server.log")
        _wait_for_promotion(settings, bindir, data, scratch, result.port, run)
        result.recovery_seconds = round(time.monotonic() - t1, 2)
        _inspect(result, run, [u for u in (admin_user, target.user, "postgres") if u])
        if keep:
            result.kept = True
            result.stop_command = f"{bindir / 'pg_ctl'} -D {data} -m fast stop && rm -rf {scratch}"
        return result
    except BaseException:
        keep = False
        raise
    finally:
        if not keep:
            if started and bindir:
                _run(settings, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], timeout=120)
            _remove(scratch)


def _scratch_folder(scratch_dir: str | os.PathLike | None, settings: PitrSettings) -> Path:
    if scratch_dir:
        scratch = Path(scratch_dir)
        if scratch.exists() and any(scratch.iterdir()):
            raise UsageError(f"--scratch-dir {scratch} is not empty", "pass a new or empty folder")
        scratch.mkdir(parents=True, exist_ok=True)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="bridge-pitr-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    for folder in (scratch, scratch / "run"):
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o700)
        if settings.os_user:
            entry = pwd.getpwnam(settings.os_user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
    return scratch


def _write_scratch_conf(scratch: Path, port: int, settings: PitrSettings) -> None:
    """The drill's own settings, instead of the source's postgresql.conf (on Debian it is not even in the
    data folder): a private socket, no TCP, no archiving into the repository it came from, and no hot
    standby, so that it accepts connections only once recovery reached the target and it was promoted."""
    run = scratch / "run"
    files = {
        "bridge_pitr.conf": (
            "# bridge-db pitr restore: a scratch cluster\n"
            f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{run}'\n"
            "unix_socket_permissions = 0700\n"
            f"hba_file = '{scratch / 'pg_hba.conf'}'\nident_file = '{scratch / 'pg_ident.conf'}'\n"
            "hot_standby = off\narchive_mode = off\nshared_preload_libraries = ''\ntimezone = 'UTC'\n"
            "log_timezone = 'UTC'\n"
        ),
        "pg_hba.conf": "local all all trust\n",
        "pg_ident.conf": "",
    }
    for name, text in files.items():
        (scratch / name).write_text(text)
        if settings.os_user:
            entry = pwd.getpwnam(settings.os_user)
            os.chown(scratch / name, entry.pw_uid, entry.pw_gid)


def _wait_for_promotion(settings: PitrSettings, bindir: Path, data: Path, scratch: Path, port: int, run: Path) -> None:
    """Until the cluster accepts connections out of recovery; a recovery that fails (target never
    reached, WAL missing) stops the server, and its log line is the error."""
    while True:
        status = _run(settings, [str(bindir / "pg_ctl"), "-D", str(data), "status"], timeout=60)
        if status.returncode != 0:
            raise BackupFailed(
                f"recovery stopped before the target: {_log_tail(scratch)}",
                "choose a target the archive reaches (bridge-db pitr status), then run again",
            )
        try:  # any role will do: until promotion the server refuses every login (hot_standby = off)
            conn = psycopg2.connect(host=str(run), port=port, dbname="postgres", user="bridge_db_probe",
                                    connect_timeout=5)  # fmt: skip
            conn.close()
            return
        except psycopg2.OperationalError as exc:
            text = str(exc)
            if "not accepting connections" not in text and "starting up" not in text and "No such file" not in text:
                return  # it answers as a primary (the role does not exist): recovery is over
        time.sleep(0.5)


def _inspect(result: PitrRestoreResult, run: Path, users: list[str]) -> None:
    """Row counts of every table in schema public and the migration head, in the restored database."""
    last: Exception | None = None
    conn: Any
    for user in users:
        try:
            conn = psycopg2.connect(host=str(run), port=result.port, dbname=result.database, user=user)
            break
        except psycopg2.OperationalError as exc:
            last = exc
    else:
        raise BackupFailed(f"the restored database {result.database} cannot be read: {last}", "run with --keep")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1"
            )
            for (table,) in cur.fetchall():
                cur.execute(sql.SQL("SELECT count(*) FROM public.{}").format(sql.Identifier(table)))
                result.row_counts[table] = cur.fetchone()[0]
            if "schema_migrations" in result.row_counts:
                cur.execute("SELECT max(version) FROM public.schema_migrations")
                result.head = cur.fetchone()[0]
    finally:
        conn.close()


def _log_tail(scratch: Path) -> str:
    try:
        lines = [ln for ln in (scratch / "server.log").read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no server log"
    serious = [ln for ln in lines if "FATAL:" in ln or "PANIC:" in ln]
    return (serious or lines or [""])[-1].split("] ", 1)[-1]


def _remove(scratch: Path) -> None:
    shutil.rmtree(scratch, ignore_errors=True)


def _replace_live(target: Target, settings: PitrSettings, kind: str, to: str, confirm) -> PitrRestoreResult:
    """The live cluster's data folder (pg1-path of the stanza) rewritten by `pgbackrest restore --delta`
    to the target: only with the server stopped and a confirmation. The server is not started here."""
    if _server_running(target):
        raise RefusedByPolicy(
            f"{target.label} is running: the live cluster is replaced only while its server is stopped; "
            "nothing was changed",
            "stop the server (systemctl stop postgresql@15-main, or pg_ctl stop), then run again; "
            "or restore into a scratch cluster first (without --replace-live)",
        )
    info = stanza_info(settings)
    backup_set, notes = _choose_set(info, kind, to, None)  # the log is in the stopped cluster: no LSN for a name
    question = (
        f"Replace the data folder of stanza {settings.stanza} ({target.label}) with backup {backup_set} "
        f"recovered to {to}? Everything written after that target is lost."
    )
    if confirm is None or not confirm(question):
        raise RefusedByPolicy("the live replacement was not confirmed; nothing changed", "answer yes, or pass --yes")
    restored = _run(settings, settings.pgbackrest(
        "--delta", f"--set={backup_set}", f"--type={kind}", f"--target={to}", "--target-action=promote",
        "--log-level-console=warn", "restore",
    ))  # fmt: skip
    if restored.returncode != 0:
        raise BackupFailed(
            f"pgbackrest restore --delta failed: {_last_error(restored)}",
            "the server is still stopped; fix the cause and run the same command again (--delta resumes)",
        )
    notes.append("start the server now: it replays the archive up to the target, then promotes")
    return PitrRestoreResult(kind, to, backup_set, live=True, notes=notes)
