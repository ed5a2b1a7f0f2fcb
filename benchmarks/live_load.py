"""Application write latency while a migration that needs a strong lock runs behind a long transaction.

    python benchmarks/live_load.py [--seconds 6]

Three phases on a fresh Bridge database, each with a writer inserting into node_registrations as fast
as it can, one row per transaction:
  baseline  no migration;
  bridge-db a long transaction (a slow report) holds a lock on the table for 3 s while
            `bridge-db migrate` runs ALTER TABLE ... ADD COLUMN (lock_timeout 200 ms, jittered retries);
  psql -f   the same, the same migration through plain `psql -f`, which waits for the lock with no
            timeout and queues every writer behind itself.
Reports p50/p99/max write latency and errors per phase. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MIGRATION = "ALTER TABLE node_registrations ADD COLUMN IF NOT EXISTS region text;\n"


def writer(dsn: str, stop: threading.Event, latencies: list[float], errors: list[str]) -> None:
    conn = psycopg2.connect(dsn, application_name="bench-writer")
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                cur.execute(
                    "INSERT INTO node_registrations (node_id, node_type, node_version) VALUES (%s, 'w', '1')",
                    (uuid.uuid4().hex,),
                )
                latencies.append((time.perf_counter() - started) * 1000)
            except psycopg2.Error as exc:
                errors.append(str(exc).splitlines()[0])
    conn.close()


def phase(dsn: str, seconds: float, migrate: list[str] | None) -> dict:
    stop, latencies, errors = threading.Event(), [], []
    thread = threading.Thread(target=writer, args=(dsn, stop, latencies, errors))
    thread.start()
    time.sleep(0.5)
    report = None
    if migrate:
        report = psycopg2.connect(dsn, application_name="slow-report")
        report.cursor().execute("SELECT count(*) FROM node_registrations")  # holds ACCESS SHARE
        threading.Timer(3.0, report.rollback).start()
        proc = subprocess.Popen(migrate, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    if migrate:
        proc.wait(timeout=120)
        report.close()
    stop.set()
    thread.join()
    ordered = sorted(latencies)
    return {
        "writes": len(ordered),
        "errors": len(errors),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
        "max_ms": round(ordered[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    admin = psycopg2.connect(args.dsn)
    admin.autocommit = True
    results = {}
    folder = Path(tempfile.mkdtemp())
    try:
        for name in ("baseline", "bridge-db", "psql -f"):
            db = "bench_live_load"
            with admin.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
                cur.execute(f'CREATE DATABASE "{db}" TEMPLATE template0')
            dsn = psycopg2.extensions.make_dsn(args.dsn, dbname=db)
            setup = psycopg2.connect(dsn)
            setup.autocommit = True
            setup.cursor().execute('CREATE EXTENSION "uuid-ossp"')
            setup.close()
            subprocess.run(
                [str(BIN / "bridge-db"), "migrate", "--dsn", dsn],
                cwd=ROOT,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            shutil.copytree(ROOT / "migrations", folder / name, dirs_exist_ok=True)
            (folder / name / "007_add_region.sql").write_text("-- Migration 007\n" + MIGRATION)
            (folder / name / "007_rollback_add_region.sql").write_text("-- Rollback 007\nSELECT 1;\n")
            config = folder / f"{name}.toml"
            config.write_text(
                f'[defaults]\nmigrations_dir = "{folder / name}"\n[environments.bench]\n'
                f'database = "{db}"\nlock_timeout_ms = 200\nlock_retries = 30\nretry_backoff_ms = 100\n'
            )
            migrate = {
                "baseline": None,
                "bridge-db": [
                    str(BIN / "bridge-db"),
                    "migrate",
                    "--config",
                    str(config),
                    "--env",
                    "bench",
                    "--dsn",
                    dsn,
                ],
                "psql -f": ["psql", "-X", "-q", "-d", dsn, "-f", str(folder / name / "007_add_region.sql")],
            }[name]
            results[name] = phase(dsn, args.seconds, migrate)
        with admin.cursor() as cur:
            cur.execute('DROP DATABASE IF EXISTS "bench_live_load" WITH (FORCE)')
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print("write latency while a strong-lock migration waits behind a 3 s transaction")
    for name, r in results.items():
        print(
            f"  {name:<10} writes {r['writes']:>6}  errors {r['errors']}  p50 {r['p50_ms']:7.2f} ms  "
            f"p99 {r['p99_ms']:8.2f} ms  max {r['max_ms']:8.1f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
