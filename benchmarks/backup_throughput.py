"""Backup and restore throughput: `bridge-db backup`/`restore` against plain pg_dump/pg_restore.

    python benchmarks/backup_throughput.py [--dsn ADMIN_DSN] [--size-gb 1.0] [--runs 3]

Generates (or reuses) a Bridge database of at least --size-gb with benchmarks/bridge_data.py, then
times, interleaved, each run of: pg_dump -Fc and ours (custom format); pg_dump -Fd -j2 and ours
(directory, 2 jobs); pg_restore -j2 into a new database and ours. Throughput is the database's size
(pg_database_size) over wall time. Ours includes what plain pg_dump does not do: the snapshot, the
pg_restore --list read-back, the sha256 and the manifest. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bridge_data import generate  # noqa: E402

from bridge_db.backup import client_tool  # noqa: E402
from bridge_db.connection import libpq_environment  # noqa: E402

BRIDGE_DB = str(Path(sys.executable).parent / "bridge-db")


def timed(cmd: list[str], env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--database", default="bench_bridge")
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    dsn = generate(args.dsn, args.database, args.size_gb)
    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_database_size(current_database()), current_setting('server_version_num')::int / 10000")
        db_bytes, major = cur.fetchone()
    conn.close()
    pg_dump, _ = client_tool("pg_dump", major)
    pg_restore, _ = client_tool("pg_restore", major)
    from bridge_db.config import parse_config
    from bridge_db.connection import resolve_target

    config = parse_config({"environments": {"bench": {"database": "unused"}}}, ROOT / "environments.toml")
    env = libpq_environment(resolve_target(config, "bench", dsn))
    admin = psycopg2.connect(args.dsn)
    admin.autocommit = True

    def drop(name: str) -> None:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    work = Path(tempfile.mkdtemp(prefix="bridge-bench-", dir=os.environ.get("BENCH_TMP")))
    samples: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}

    def record(name: str, seconds: float) -> None:
        samples.setdefault(name, []).append(seconds)

    try:
        for run in range(args.runs):
            plain_fc = work / f"plain-{run}.dump"
            record("backup custom: pg_dump -Fc", timed([str(pg_dump), "-Fc", "-f", str(plain_fc)], env))
            sizes["custom"] = plain_fc.stat().st_size
            out = work / f"ours-{run}"
            record(
                "backup custom: bridge-db backup", timed([BRIDGE_DB, "backup", "--dsn", dsn, "--backup-dir", str(out)])
            )
            ours_dump = next(out.glob("*.dump"))

            plain_fd = work / f"plain-{run}.dir"
            record(
                "backup directory -j2: pg_dump -Fd -j2", timed([str(pg_dump), "-Fd", "-j2", "-f", str(plain_fd)], env)
            )
            record(
                "backup directory -j2: bridge-db backup",
                timed(
                    [
                        BRIDGE_DB,
                        "backup",
                        "--dsn",
                        dsn,
                        "--backup-dir",
                        str(work / f"ours-dir-{run}"),
                        "--format",
                        "directory",
                        "--jobs",
                        "2",
                    ]
                ),
            )
            shutil.rmtree(plain_fd)
            shutil.rmtree(work / f"ours-dir-{run}")

            target = f"bench_restore_plain_{run}"
            drop(target)
            started = time.perf_counter()
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{target}" TEMPLATE template0')
            subprocess.run(
                [str(pg_restore), "-j2", "-d", target, str(plain_fc)],
                check=True,
                env={**env, "PGDATABASE": target},
                stderr=subprocess.PIPE,
            )
            record("restore -j2: createdb + pg_restore -j2", time.perf_counter() - started)
            drop(target)
            target = f"bench_restore_ours_{run}"
            drop(target)
            record(
                "restore -j2: bridge-db restore",
                timed(
                    [BRIDGE_DB, "restore", "--dsn", dsn, "--file", str(ours_dump), "--target-db", target, "--jobs", "2"]
                ),
            )
            drop(target)
            plain_fc.unlink()
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        admin.close()

    mb = db_bytes / 1e6
    results = {
        name: {
            "median_s": round(statistics.median(s), 2),
            "mb_per_s": round(mb / statistics.median(s), 1),
            "runs": len(s),
        }
        for name, s in samples.items()
    }
    if args.json:
        print(
            json.dumps(
                {"database_mb": round(mb), "dump_mb": round(sizes["custom"] / 1e6), "results": results}, indent=2
            )
        )
        return
    print(
        f"database {mb:.0f} MB (pg_database_size), custom dump {sizes['custom'] / 1e6:.0f} MB, "
        f"median of {args.runs} interleaved runs"
    )
    for name, r in results.items():
        print(f"  {name:<42} {r['median_s']:7.2f} s  {r['mb_per_s']:7.1f} MB/s")


if __name__ == "__main__":
    main()
