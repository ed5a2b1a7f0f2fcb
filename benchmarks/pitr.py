"""Point-in-time recovery against the dump path, on a generated Bridge database under a steady write load.

    python benchmarks/pitr.py [--size-gb 1.0] [--load-seconds 180] [--update-docs]

Runs as root (the cluster and pgBackRest run as the OS user postgres) on a cluster of its own (port
58500, under /var/tmp/bridge-pitr-bench, kept between runs so that the data is generated once). It
measures:

- RPO: every second of the load, the age of the newest archived WAL (now() - last_archived_time of
  pg_stat_archiver), p50/p99/max, with archive_timeout = 60 s (the postgresql_pitr role's default);
- the time of a full and a differential pgBackRest backup (compress-type lz4, process-max 2, the role's
  defaults) against `pg_dump -Fc` of the same database;
- RTO: `bridge-db pitr restore --to <restore point>` (restore + WAL replay + promotion, into a scratch
  cluster) against createdb + `pg_restore` of the custom dump (one job, and -j2).

Prints one JSON object; with --update-docs, writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bridge_data import generate  # noqa: E402

from bridge_db.embedded import EmbeddedCluster  # noqa: E402

BASE = Path("/var/tmp/bridge-pitr-bench")
PORT = 58500
STANZA = "bench"
DATABASE = "bench_bridge"
OUT = ROOT / ".bench" / "results"
SECTION = "## Point-in-time recovery against the dump path"


def as_postgres(*cmd: str) -> float:
    """Run as postgres; the wall time in seconds."""
    entry = pwd.getpwnam("postgres")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"HOME": entry.pw_dir}
    t0 = time.perf_counter()
    subprocess.run(list(cmd), user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], env=env, cwd="/", check=True,
                   capture_output=True, text=True)  # fmt: skip
    return time.perf_counter() - t0


def timed(*cmd: str, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(list(cmd), check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


def sql(dsn: str, statement: str):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def setup(size_gb: float) -> tuple[EmbeddedCluster, str, Path]:
    BASE.mkdir(exist_ok=True)
    shutil.chown(BASE, "postgres", "postgres")
    cluster = EmbeddedCluster(BASE, PORT, service_user="postgres")
    cluster.up()
    socket = str(cluster.socket_dir)
    admin = f"host={socket} port={PORT} user=postgres dbname=postgres"
    print("bench: generating the Bridge database (archiving off) ...", file=sys.stderr)
    sql(admin, "ALTER SYSTEM SET archive_mode = off")
    sql(admin, "ALTER SYSTEM SET max_wal_size = '4GB'")
    cluster.down()
    cluster.up()
    dsn = generate(admin, DATABASE, size_gb)
    conf = BASE / "pgbackrest.conf"
    for folder in ("repo", "log"):
        (BASE / folder).mkdir(exist_ok=True)
        shutil.chown(BASE / folder, "postgres", "postgres")
    conf.write_text(
        f"[global]\nrepo1-path={BASE / 'repo'}\nrepo1-retention-full=2\nlog-path={BASE / 'log'}\n"
        f"lock-path={socket}\nstart-fast=y\ncompress-type=lz4\nprocess-max=2\narchive-async=n\n\n"
        f"[{STANZA}]\npg1-path={cluster.data_dir}\npg1-port={PORT}\npg1-socket-path={socket}\n"
    )
    sql(admin, "ALTER SYSTEM SET archive_mode = on")
    sql(admin, f"ALTER SYSTEM SET archive_command = 'pgbackrest --config={conf} --stanza={STANZA} archive-push %p'")
    sql(admin, "ALTER SYSTEM SET archive_timeout = 60")
    cluster.down()
    cluster.up()
    as_postgres("pgbackrest", f"--config={conf}", f"--stanza={STANZA}", "stanza-create")
    return cluster, dsn, conf


class Load(threading.Thread):
    """The application's steady writes: one workflow and its first step per transaction, ~50 a second."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.stop, self.writes = dsn, threading.Event(), 0

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute(
                    "WITH w AS (INSERT INTO workflow_executions (correlation_id, workflow_type, namespace, "
                    "current_state, metadata) VALUES (uuid_generate_v4(), 'metadata_stamping', 'omninode.load', "
                    "'PROCESSING', '{\"source\": \"load\"}') RETURNING id) "
                    "INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, step_data) "
                    "SELECT id, 'validate_input', 0, 'COMPLETED', '{}' FROM w"
                )
                self.writes += 1
                time.sleep(0.02)
        conn.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--load-seconds", type=int, default=180)
    parser.add_argument("--update-docs", action="store_true")
    parser.add_argument("--json", action="store_true", help="(what run_all passes: the JSON is printed anyway)")
    args = parser.parse_args()
    cluster, dsn, conf = setup(args.size_gb)
    pgbackrest = ["pgbackrest", f"--config={conf}", f"--stanza={STANZA}"]
    result: dict = {"database_mb": sql(dsn, "SELECT pg_database_size(current_database()) / 1048576")[0][0]}
    work = BASE / "dumps"
    work.mkdir(exist_ok=True)
    dump = work / "bench.dump"
    try:
        print("bench: full backup and pg_dump ...", file=sys.stderr)
        result["full_backup_s"] = round(as_postgres(*pgbackrest, "--type=full", "backup"), 1)
        result["pg_dump_s"] = round(timed("pg_dump", "-Fc", "-f", str(dump), "-d", dsn), 1)
        result["dump_mb"] = dump.stat().st_size // 2**20
        load = Load(dsn)
        load.start()
        ages: list[float] = []
        diff_at = args.load_seconds // 2
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.load_seconds:
            age = sql(dsn, "SELECT extract(epoch FROM now() - last_archived_time) FROM pg_stat_archiver")[0][0]
            if age is not None:
                ages.append(float(age))
            if diff_at is not None and time.monotonic() - t0 >= diff_at:
                print("bench: differential backup under load ...", file=sys.stderr)
                result["diff_backup_s"] = round(as_postgres(*pgbackrest, "--type=diff", "backup"), 1)
                diff_at = None
            time.sleep(1)
        point = f"bench-{int(time.time())}"
        sql(dsn, f"SELECT pg_create_restore_point('{point}')")
        time.sleep(2)
        load.stop.set()
        load.join()
        segment = sql(dsn, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        while (sql(dsn, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") < segment:
            time.sleep(0.5)
        result.update(
            load_seconds=args.load_seconds, writes=load.writes, samples=len(ages),
            rpo_p50_s=round(statistics.median(ages), 1), rpo_p99_s=round(percentile(ages, 99), 1),
            rpo_max_s=round(max(ages), 1),
        )  # fmt: skip
        config = work / "environments.toml"
        socket = str(cluster.socket_dir)
        config.write_text(
            f'[environments.bench]\nhost = "{socket}"\nport = {PORT}\ndatabase = "{DATABASE}"\nuser = "postgres"\n'
            f'pitr_stanza = "{STANZA}"\npitr_config = "{conf}"\n'
        )
        print("bench: pitr restore to the restore point ...", file=sys.stderr)
        t1 = time.perf_counter()
        out = subprocess.run(
            [str(Path(sys.executable).parent / "bridge-db"), "pitr", "restore", "--to", point, "--config", str(config),
             "--env", "bench", "--port", str(PORT + 1), "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        restored = json.loads(out.stdout)
        result.update(
            pitr_restore_total_s=round(time.perf_counter() - t1, 1), pitr_files_s=restored["restore_seconds"],
            pitr_replay_s=restored["recovery_seconds"],
        )  # fmt: skip
        admin = f"host={socket} port={PORT} user=postgres dbname=postgres"
        for jobs in (1, 2):
            sql(admin, "DROP DATABASE IF EXISTS bench_restored")
            t2 = time.perf_counter()
            sql(admin, "CREATE DATABASE bench_restored TEMPLATE template0")
            timed("pg_restore", "-j", str(jobs), "-d", f"host={socket} port={PORT} user=postgres dbname=bench_restored",
                  str(dump))  # fmt: skip
            result[f"pg_restore_j{jobs}_s"] = round(time.perf_counter() - t2, 1)
        sql(admin, "DROP DATABASE IF EXISTS bench_restored")
    finally:
        cluster.down()
    result["load_average"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())  # the machine is shared
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pitr.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    if args.update_docs:
        update_docs(result)


def markdown(r: dict) -> str:
    return "\n".join([
        SECTION,
        "",
        f"`benchmarks/pitr.py`: database {r['database_mb']} MB, custom dump {r['dump_mb']} MB; a steady load of "
        f"{r['writes']} application writes over {r['load_seconds']} s (one workflow and its step per transaction); "
        "pgBackRest 2.45, compress-type lz4, process-max 2, archive_timeout 60 s; one run of each. pg_dump and "
        "pg_restore ran against the same archiving cluster (as they would in production: the restore's WAL is "
        "archived too); the scratch cluster of `pitr restore` does not archive. The 2 cores were shared with "
        f"other test runs (load average {r.get('load_average', 'not recorded')} at the end, 1/5/15 min), which "
        "stretches every figure; the ratios are the result, the seconds are this machine's.",
        "",
        "| measure | pgBackRest (PITR) | dump path |",
        "|---|---|---|",
        f"| RPO: age of the newest archived WAL, p50 / p99 / max ({r['samples']} samples, 1 s apart) | "
        f"{r['rpo_p50_s']} s / {r['rpo_p99_s']} s / {r['rpo_max_s']} s | up to the backup interval (a day, nightly) |",
        f"| full backup | {r['full_backup_s']} s | pg_dump -Fc {r['pg_dump_s']} s |",
        f"| differential backup, under the load | {r['diff_backup_s']} s | (none: every dump is whole) |",
        f"| RTO: restore + replay to a restore point, into a new cluster | {r['pitr_restore_total_s']} s "
        f"({r['pitr_files_s']} s files, {r['pitr_replay_s']} s replay and promotion) | createdb + pg_restore "
        f"{r['pg_restore_j1_s']} s (-j2: {r['pg_restore_j2_s']} s) |",
        "",
    ])  # fmt: skip


def update_docs(result: dict) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text()
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        tail = rest.split("\n## ", 1)[1] if "\n## " in rest else ""
        text = head + markdown(result) + ("\n## " + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + markdown(result)
    path.write_text(text)


if __name__ == "__main__":
    main()
