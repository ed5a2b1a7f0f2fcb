"""What a person reads: tables, one-line summaries and progress on stderr, for every result the facade
returns (a machine gets `--json` instead: each result's as_dict())."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .engine import Direction, Progress

if TYPE_CHECKING:
    from .backup import BackupResult, RestoreResult
    from .discovery import Migration
    from .embedded import ClusterStatus
    from .engine import RunResult, StepResult
    from .inspection import StatusReport, VerifyReport
    from .maintenance import BaselineResult, HistoryReport, RepairedFile, RepairResult, WaitResult
    from .monitoring import StatsReport
    from .pitr import PitrRestoreResult, PitrStatus
    from .privileges import PrivilegeReport
    from .results import BackupListing, LintResult, NewMigration, PreloadedExtensions, PruneResult, ToolsReport


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def say_waiting(folder: Path, wait_seconds: float, stream: IO[str] | None = None) -> None:
    print(
        f"waiting for another backup or prune in {folder} to finish (at most {wait_seconds:g}s) ...",
        file=stream or sys.stderr,
        flush=True,
    )


# --------------------------------------------------------------------------- migrations


def run_result(result: RunResult) -> None:
    verb = "apply" if result.direction is Direction.UP else "roll back"
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
            print((step.sql or "").rstrip())
        return
    head = f"{result.head_after:03d}" if result.head_after else "none"
    if not result.steps:
        print(f"nothing to {verb}: {result.target} is at {head}")
        return
    adopted = sum(1 for s in result.steps if s.already_existed)
    done = "applied" if result.direction is Direction.UP else "rolled back"
    if result.backup:
        print(f"backup taken first: {result.backup}")
    if result.restore_point:
        print(f"restore point before it: {result.restore_point['name']} at {result.restore_point['lsn']}")
    print(
        f"{done} {len(result.steps)} migration(s) in {result.total_ms} ms; {result.target} is now at {head}"
        + (f" ({adopted} adopted existing objects)" if adopted else "")
    )
    if result.schema_file:
        print(f"schema written: {result.schema_file}")


def status(report: StatusReport) -> None:
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
    table(rows)
    head = f"{report.head:03d}" if report.head else "none"
    print(f"head {head}, {report.pending} pending")
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)


def verify(report: VerifyReport) -> None:
    for line in report.schema_diff:
        print(line, file=sys.stderr)
    if report.ok:
        what = (
            "match in type, NOT NULL, default, constraints and indexes"
            if report.compared == "definitions"
            else "are present (names only)"
        )
        print(
            f"ok: {report.target}: {report.checked_migrations} applied migration(s) match their files; "
            f"{report.checked_objects} declared tables, columns and indexes {what}"
        )
    else:
        print(f"verify failed: {report.target}", file=sys.stderr)
        for problem in report.problems:
            print(f"problem: {problem}", file=sys.stderr)
    if report.note:  # names only: types, defaults and constraints were not compared
        note(report.note)


def history(report: HistoryReport) -> None:
    print(report.target)
    if not report.runs:
        print("no runs recorded")
        return
    rows = [("WHEN (UTC)", "ENV", "WHO", "ACTION", "VERSIONS", "RESULT", "MS", "BACKUP / RESTORE POINT")]
    for r in report.runs:
        who = f"{r.os_user or '?'}@{r.client_host or '?'} as {r.db_user}"
        versions = ",".join(f"{v:03d}" for v in r.versions)
        result = "ok" if r.success else f"failed: {(r.error or '')[:60]}"
        if r.reason:
            result += f" ({r.reason[:60]})"
        saved = []
        if r.backup:
            saved.append(f"backup {r.backup}")
        if r.restore_point:
            saved.append(f"restore point {r.restore_point.get('name')} at {r.restore_point.get('lsn')}")
        when = r.started_at[:19].replace("T", " ")
        rows.append((when, r.environment or "-", who, r.action, versions, result, str(r.execution_ms),
                     "; ".join(saved) or "-"))  # fmt: skip
    table(rows)


def repair_change(entry: RepairedFile) -> None:
    """Shown before repair asks: what changed in the applied file."""
    out = sys.stderr
    print(f"{entry.file}: applied with checksum {entry.recorded_checksum[:12]}, now {entry.file_checksum[:12]}",
          file=out)  # fmt: skip
    if entry.applied_text_from is None:
        print("  the applied text is not in git history (only its checksum is recorded): no diff to show", file=out)
        return
    for line in entry.diff:
        print(f"  {line}", file=out)
    if entry.statements_changed is False:
        print("  the statements are unchanged: only comments or layout differ", file=out)
    elif entry.statements_changed:
        print(
            "  the STATEMENTS differ: databases that ran the old file do not have what the new one says; "
            "prefer a new migration (restore this file with git)",
            file=out,
        )


def repaired(result: RepairResult) -> None:
    if not result.repaired:
        print(f"nothing to repair: every applied file on {result.target} matches its recorded checksum")
        return
    names = ", ".join(Path(r.file).name for r in result.repaired)
    print(f"repaired {result.target}: accepted {names}; logged as run {result.run_id} ({result.reason})")


def baselined(result: BaselineResult) -> None:
    print(
        f"baseline: {result.target} recorded 001..{result.baseline_to:03d} as applied ({len(result.recorded)} "
        f"migration(s); {result.checked_objects} declared tables, columns and indexes found)"
    )


def waited(result: WaitResult) -> None:
    print(f"ready: {result.target} (PostgreSQL {result.server_version}) after {result.waited_s:g} s")


def new_migration(result: NewMigration) -> None:
    print(f"created {result.forward}\ncreated {result.rollback}")


def lint(result: LintResult) -> None:
    for finding in result.findings:
        print(finding)
    print(f"lint: {result.migrations} migration pair(s), {len(result.findings)} finding(s)")


# --------------------------------------------------------------------------- administration


def extensions(result: PreloadedExtensions, check: bool) -> None:
    report = result.report
    todo = report.missing if check else report.created
    verb = "would create" if check else "created"
    print(f"{report.target}: {verb} {', '.join(todo) or 'nothing'}; present: {', '.join(report.present) or 'none'}")
    for hint in report.hints:
        warn(hint)


def privileges(report: PrivilegeReport, check: bool) -> None:
    roles = ", ".join(f"{k}={v}" for k, v in report.roles.items())
    if not report.changes:
        print(f"{report.target}: privileges already match ({roles})")
        return
    print(f"{report.target}: {'would run' if check else 'ran'} {len(report.changes)} statement(s) ({roles})")
    for change in report.changes:
        print(f"  {change.statement};  -- {change.reason}")


def stats(report: StatsReport, top: int) -> None:
    print(report.target)
    print("\nTables")
    table(
        [("SCHEMA", "TABLE", "ROWS", "DEAD", "SEQ SCANS", "IDX SCANS", "SIZE")]
        + [
            (
                t["schema"],
                t["table"],
                str(t["row_count"]),
                str(t["dead_rows"]),
                str(t["seq_scans"]),
                str(t["index_scans"]),
                size(t["total_bytes"]),
            )
            for t in report.tables
        ]  # fmt: skip
    )
    print("\nIndexes (most used first)")
    table(
        [("TABLE", "INDEX", "SCANS", "SIZE")]
        + [(i["table"], i["index"], str(i["index_scans"]), size(i["bytes"])) for i in report.indexes]
    )
    if report.queries is not None:
        print(f"\nSlowest statements by mean time (top {top})")
        table(
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
            ]  # fmt: skip
        )
    for text in report.notes:
        note(text)


# --------------------------------------------------------------------------- backups


def stale_removed(names: list[str]) -> None:
    for name in names:
        note(f"dropped {name}, a scratch database a killed run left behind")


def backup(result: BackupResult) -> None:
    m = result.manifest
    print(
        f"backup {result.path}: {size(m.size_bytes)} in {m.duration_s:.1f}s ({result.throughput_mb_s} MB/s), "
        f"head {m.migration_head or 'none'}, {m.verified}"
    )


def untrusted(entries: list[Any]) -> None:
    for e in entries:
        if e.problem:
            warn(f"{Path(e.path).name}: manifest not trusted: {e.problem}; kept")


def backups(listing: BackupListing) -> None:
    entries = listing.entries
    print(f"{listing.folder}: {len(entries)} backup(s)")
    if entries:
        table(
            [("FILE", "AGE", "SIZE", "HEAD", "STATE")]
            + [
                (
                    Path(e.path).name,
                    age(e.age_s),
                    size(e.size_bytes),
                    str(e.manifest.migration_head) if e.manifest and not e.problem else "?",
                    e.state,
                )
                for e in entries
            ]  # fmt: skip
        )
    untrusted(entries)


def pruned(result: PruneResult) -> None:
    policy = result.policy
    verb = "would delete" if result.dry_run else "deleted"
    print(
        f"{verb} {len(result.deleted)} file(s) (keep last {policy.keep_last}, daily {policy.keep_daily}, "
        f"weekly {policy.keep_weekly})"
    )
    for path in result.deleted:
        print(f"  {path}")
    untrusted(result.untrusted)


def restored(result: RestoreResult) -> None:
    print(
        f"restored {Path(result.file).name} into {result.database} in {result.duration_s:.1f}s "
        f"({result.throughput_mb_s} MB/s); row counts {'match' if result.row_counts_checked else 'not recorded'}"
        + (f"; previous database kept as {result.replaced}" if result.replaced else "")
    )


# --------------------------------------------------------------------------- embedded cluster, tools


def pitr_status(report: PitrStatus) -> None:
    print(f"{report.target}: stanza {report.stanza}, archive_mode {report.archive_mode}")
    archived = report.last_archived_wal or "none"
    when = f", {age(report.archive_age_seconds)} ago" if report.archive_age_seconds is not None else ""
    print(f"  last archived WAL: {archived}{when}")
    if report.last_failed_wal:
        print(f"  last failed WAL:   {report.last_failed_wal} at {(report.last_failed_at or '')[:19]}")
    for kind, entry in (("full", report.last_full), ("diff", report.last_diff)):
        if entry:
            print(f"  last {kind} backup:  {entry['label']} finished {(entry['finished_at'] or '')[:19]} "
                  f"({size(entry['size_bytes'] or 0)})")  # fmt: skip
        else:
            print(f"  last {kind} backup:  none")
    print(f"  repository: {report.repository}, {report.backups} backup(s)")
    if report.restore_points:
        rows = [("RESTORE POINT", "LSN", "RUN", "VERSIONS", "AT")]
        for p in report.restore_points:
            versions = f"{p['action']} {p['first_version']:03d}-{p['last_version']:03d}"
            outcome = "ok" if p["success"] else "failed"
            rows.append((p["name"], p["lsn"] or "-", outcome, versions, str(p["started_at"])[:19]))
        table(rows)
    else:
        print("  no restore point recorded by a production run yet")
    for problem in report.problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("archive: " + ("ok" if report.ok else "NOT OK"))


def pitr_restored(result: PitrRestoreResult) -> None:
    for text in result.notes:
        note(text)
    if result.live:
        print(f"live cluster restored from {result.backup_set} to {result.target_type} {result.to}")
        return
    head = f"{result.head:03d}" if result.head else "none"
    print(
        f"restored {result.backup_set} to {result.target_type} {result.to} in a scratch cluster: "
        f"{result.restore_seconds:.1f}s restore, {result.recovery_seconds:.1f}s replay; {result.database} is at {head}"
    )
    table([("TABLE", "ROWS"), *((name, str(n)) for name, n in result.row_counts.items())])
    if result.kept:
        print(f"kept running: psql -h {result.socket_dir} -p {result.port} -d {result.database}")
        print(f"stop and remove it: {result.stop_command}")


def cluster(status: ClusterStatus, database: str | None) -> None:
    state = f"running (pid {status.pid})" if status.running else ("stopped" if status.initialised else "not created")
    print(f"embedded dev database: {state}")
    print(f"  data:    {status.data_dir}")
    print(f"  socket:  {status.socket_dir} port {status.port}")
    print(f"  log:     {status.log_file}")
    if status.server_version:
        print(f"  version: PostgreSQL {status.server_version} ({status.bindir or 'binaries not found'})")
    if status.running:
        command = ["psql", "-h", str(status.socket_dir), "-p", str(status.port), "-U", "postgres"]
        import shlex

        print(f"  connect: {shlex.join([*command, '-d', str(database)])}")


def tools(report: ToolsReport) -> None:
    if report.installed:
        build = report.installed
        print(f"PostgreSQL {build.version} client tools in {build.bindir} ({build.source}, sha256 {build.sha256})")
        print("backups now find them; nothing else to configure")
        return
    for name, found in report.found.items():
        print(f"{name}: " + (", ".join(f"{t.major} ({t.path})" for t in found) or "none found"))


# --------------------------------------------------------------------------- progress


class HumanProgress(Progress):
    """Each migration's name as it starts and its time when it ends; on a terminal, a ticking clock."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self._label = ""

    @classmethod
    @contextmanager
    def unless(cls, quiet: bool) -> Iterator[HumanProgress | None]:
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

    def backing_up(self, folder: Path) -> None:
        print(f"  backing up into {folder} before migrating ...", file=self.stream, flush=True)

    def waiting_for_backup_folder(self, folder: Path, wait_seconds: float) -> None:
        say_waiting(folder, wait_seconds, self.stream)

    def retrying(self, migration: Migration, attempt: int, retries: int, delay: float, blockers: list) -> None:
        self._stop_ticker(newline=True)
        who = ", ".join(f"pid {b['pid']} ({b['application'] or b['user']}, {b['state']})" for b in blockers)
        print(
            f"  lock timeout on {migration.label}{': held by ' + who if who else ''}; "
            f"retry {attempt}/{retries} in {delay:.1f}s",
            file=self.stream,
            flush=True,
        )

    def warning(self, message: str) -> None:
        self._stop_ticker(newline=True)
        print(f"warning: {message}", file=self.stream, flush=True)

    def step_started(self, direction: Direction, migration: Migration, index: int, total: int) -> None:
        label = f"  [{index}/{total}] {'apply' if direction is Direction.UP else 'rollback'} {migration.label}"
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

    def step_finished(self, step: StepResult) -> None:
        note = f", {step.already_existed} object(s) already existed" if step.already_existed else ""
        if self._stop_ticker():
            print(f"\r{self._label} ... ok ({step.execution_ms} ms{note})   ", file=self.stream, flush=True)
        else:
            print(f"  ok {step.file} ({step.execution_ms} ms{note})", file=self.stream, flush=True)
