"""bridge-db beside the tools people pick instead, on the same six migrations and the same server.

    python benchmarks/compare_tools.py [--runs 10] [--json results.json]

Installs the peers into .bench/ (git-ignored; none of their code is committed): dbmate from npm,
yoyo-migrations and Alembic from PyPI in a venv of their own, Sqitch from Debian's packages. It writes
the six Bridge migrations in each tool's own format, then, interleaved, round by round, on a fresh
database per tool and round, times: a fresh apply of all six, a no-op run (everything applied), and a
rollback of all six. The seed's psql loop and a single `psql -1` of the six files are the floor.
Median of --runs after one warm-up round. Peak memory (max RSS) of each tool's runs is recorded too.

Then the same at scale: --large (default 500) generated migrations (a table and an index each), every
tool in its own format, timed as a fresh apply, a no-op run and a status query (median of --large-runs
after a warm-up round), under the key "large" of the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
PREFIX = f"bench_cmp_{os.getpid()}_"  # this run's databases: another run on the same server has its own


# --------------------------------------------------------------------------- peers


def install_peers() -> dict[str, str]:
    """What could be installed: name -> executable. A peer that cannot be had is left out, said so."""
    BENCH.mkdir(exist_ok=True)
    found = {}
    if not (BENCH / "npm/node_modules/.bin/dbmate").exists():
        subprocess.run(
            ["npm", "install", "--silent", "--prefix", str(BENCH / "npm"), "dbmate@2"], check=False, capture_output=True
        )
    # the Go binary itself, as a deploy pipeline would run it, not npm's node launcher around it
    native = sorted((BENCH / "npm/node_modules/@dbmate").glob("*/bin/dbmate"))
    if native:
        found["dbmate"] = str(native[0])
    if not (BENCH / "py/bin/yoyo").exists():
        subprocess.run([sys.executable, "-m", "venv", str(BENCH / "py")], check=True)
        subprocess.run(
            [str(BENCH / "py/bin/pip"), "install", "-q", "yoyo-migrations", "alembic", "psycopg2-binary"],
            check=False,
            capture_output=True,
        )
    for tool in ("yoyo", "alembic"):
        if (BENCH / "py/bin" / tool).exists():
            found[tool] = str(BENCH / "py/bin" / tool)
    if not shutil.which("sqitch") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "sqitch", "libdbd-pg-perl"], check=False, capture_output=True)
    if shutil.which("sqitch"):
        found["sqitch"] = shutil.which("sqitch")
    return found


def generate_migrations(folder: Path, count: int) -> Path:
    """`count` bridge-db migration pairs: a table with a primary key, a default and an index each."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for n in range(1, count + 1):
        (folder / f"{n:04d}_create_bench_t{n:04d}.sql").write_text(
            f"-- Migration {n:04d}: bench table {n}\n"
            f"CREATE TABLE IF NOT EXISTS bench_t{n:04d} (\n    id bigint PRIMARY KEY,\n"
            "    name text NOT NULL,\n    created_at timestamptz NOT NULL DEFAULT now()\n);\n"
            f"CREATE INDEX IF NOT EXISTS idx_bench_t{n:04d}_created_at ON bench_t{n:04d} (created_at);\n"
        )
        (folder / f"{n:04d}_rollback_create_bench_t{n:04d}.sql").write_text(
            f"-- Rollback {n:04d}\nDROP TABLE IF EXISTS bench_t{n:04d};\n"
        )
    return folder


def write_projects(migrations, name: str = "projects") -> Path:
    """The migrations in every peer's own layout."""
    root = BENCH / name
    shutil.rmtree(root, ignore_errors=True)
    (root / "dbmate").mkdir(parents=True)
    (root / "yoyo").mkdir()
    (root / "alembic/versions").mkdir(parents=True)
    for sub in ("deploy", "revert", "verify"):
        (root / "sqitch" / sub).mkdir(parents=True)
    plan = ["%syntax-version=1.0.0", "%project=bridge", ""]
    previous = None
    for m in migrations:
        up, down = m.forward.text, m.rollback.text
        (root / "dbmate" / f"{20260101000000 + m.version}_{m.name}.sql").write_text(
            f"-- migrate:up\n{up}\n-- migrate:down\n{down}\n"
        )
        (root / "yoyo" / f"{m.version:04d}_{m.name}.sql").write_text(up)
        (root / "yoyo" / f"{m.version:04d}_{m.name}.rollback.sql").write_text(down)
        (root / "alembic/versions" / f"v{m.version:03d}.py").write_text(
            f"from alembic import op\nrevision = 'v{m.version:03d}'\ndown_revision = "
            f"{repr(previous)}\nbranch_labels = None\ndepends_on = None\n"
            f"def upgrade():\n    op.execute({up!r})\ndef downgrade():\n    op.execute({down!r})\n"
        )
        previous = f"v{m.version:03d}"
        (root / "sqitch/deploy" / f"{m.label}.sql").write_text(f"BEGIN;\n{up}\nCOMMIT;\n")
        (root / "sqitch/revert" / f"{m.label}.sql").write_text(f"BEGIN;\n{down}\nCOMMIT;\n")
        plan.append(f"{m.label} 2026-01-01T00:00:00Z bench <bench@example.invalid> # {m.name}")
    (root / "sqitch/sqitch.plan").write_text("\n".join(plan) + "\n")
    (root / "sqitch/sqitch.conf").write_text("[core]\n\tengine = pg\n")
    (root / "alembic/env.py").write_text(
        "from alembic import context\nfrom sqlalchemy import create_engine\n"
        "engine = create_engine(context.config.get_main_option('sqlalchemy.url'))\n"
        "with engine.connect() as connection:\n"
        "    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)\n"
        "    with context.begin_transaction():\n        context.run_migrations()\n"
    )
    (root / "alembic/script.py.mako").write_text("")
    return root


# --------------------------------------------------------------------------- commands per tool


def commands(
    tool: str, exe: str, dsn: str, url: str, projects: Path, migrations_dir: Path = ROOT / "migrations"
) -> dict[str, list[list[str]]]:
    """apply / noop / rollback / status as lists of commands (a tool that rolls back one at a time gets
    one per migration; the psql floors have no status)."""
    files = sorted(p for p in migrations_dir.glob("0*.sql") if "_rollback_" not in p.name)
    rollbacks = sorted(migrations_dir.glob("*_rollback_*.sql"), reverse=True)
    psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn]
    if tool.startswith("bridge-db"):
        cli = [str(BIN / "invoke")] if "invoke" in tool else [str(BIN / "bridge-db")]
        folder = [] if migrations_dir == ROOT / "migrations" else ["--migrations-dir", str(migrations_dir)]
        return {
            "apply": [[*cli, "migrate", "--dsn", dsn, *folder]],
            "noop": [[*cli, "migrate", "--dsn", dsn, *folder]],
            "rollback": [[*cli, "rollback", "--to", "0", "--dsn", dsn, "--yes", *folder]],
            "status": [[*cli, "status", "--dsn", dsn, *folder]],
        }
    if tool == "psql loop (seed)":
        loop = [[*psql, "-f", str(f)] for f in files]
        return {"apply": loop, "noop": loop, "rollback": [[*psql, "-f", str(f)] for f in rollbacks], "status": []}
    if tool == "psql -1 (floor)":
        one = [*psql, "-1", *[a for f in files for a in ("-f", str(f))]]
        back = [*psql, "-1", *[a for f in rollbacks for a in ("-f", str(f))]]
        return {"apply": [one], "noop": [one], "rollback": [back], "status": []}
    if tool == "dbmate":
        base = [exe, "--url", url, "--migrations-dir", str(projects / "dbmate"), "--no-dump-schema"]
        return {
            "apply": [[*base, "up"]],
            "noop": [[*base, "up"]],
            "rollback": [[*base, "rollback"]] * len(files),
            "status": [[*base, "status"]],
        }
    if tool == "yoyo":
        base = ["--batch", "--no-config-file", "--database", url, str(projects / "yoyo")]
        return {
            "apply": [[exe, "apply", *base]],
            "noop": [[exe, "apply", *base]],
            "rollback": [[exe, "rollback", "--all", *base]],
            "status": [[exe, "list", *base]],
        }
    if tool == "alembic":
        ini = projects / "alembic.ini"
        sa_url = url.replace("postgresql://", "postgresql+psycopg2://")
        ini.write_text(f"[alembic]\nscript_location = {projects / 'alembic'}\nsqlalchemy.url = {sa_url}\n")
        base = [exe, "-c", str(ini)]
        return {
            "apply": [[*base, "upgrade", "head"]],
            "noop": [[*base, "upgrade", "head"]],
            "rollback": [[*base, "downgrade", "base"]],
            "status": [[*base, "current"]],
        }
    if tool == "sqitch":
        target = "db:" + url.replace("postgresql://", "pg://")
        base = [exe, "--chdir", str(projects / "sqitch")]
        return {
            "apply": [[*base, "deploy", target]],
            "noop": [[*base, "deploy", target]],
            "rollback": [[*base, "revert", "-y", target]],
            "status": [[*base, "status", target]],
        }
    raise ValueError(tool)


def timed(cmds: list[list[str]], env: dict | None = None, cwd: Path = ROOT) -> tuple[float, int, float]:
    """Wall ms of running the commands in order, the peak RSS (kB) among them, and their CPU ms (user and
    system: on a shared machine, what the tool itself costs, whatever else competes for the cores)."""
    started = time.perf_counter()
    peak = 0
    cpu = 0.0
    for cmd in cmds:
        proc = subprocess.Popen(cmd, env=env or ENV, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak RSS, not all children's
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = max(peak, usage.ru_maxrss)
        cpu += (usage.ru_utime + usage.ru_stime) * 1000
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {err.decode(errors='replace')[-400:]}")
    return (time.perf_counter() - started) * 1000, peak, cpu


# --------------------------------------------------------------------------- main


def fresh_database(admin, dsn: str, name: str) -> tuple[str, str]:
    """A new database with uuid-ossp: its libpq DSN and URL."""
    params = psycopg2.extensions.parse_dsn(dsn)
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    conn = psycopg2.connect(psycopg2.extensions.make_dsn(dsn, dbname=name))
    conn.autocommit = True
    conn.cursor().execute('CREATE EXTENSION "uuid-ossp"')
    conn.close()
    url = (
        f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:"
        f"{params.get('port', 5432)}/{name}?sslmode=disable"
    )
    return psycopg2.extensions.make_dsn(dsn, dbname=name), url


BASELINE = " (baseline)"  # a tool run from another checkout's src (--baseline-src): before and after


def where(tool: str, baseline_src: Path | None) -> tuple[dict | None, Path]:
    """The environment and folder a tool runs in: a baseline variant imports the other checkout's code
    (PYTHONPATH before the editable install; Invoke reads that checkout's tasks.py)."""
    if baseline_src is None or not tool.endswith(BASELINE):
        return None, ROOT
    return {**ENV, "PYTHONPATH": str(baseline_src)}, baseline_src.parent


def compare(admin, dsn, tools, peers, projects, migrations_dir, runs, ops, baseline_src=None) -> dict:
    """Interleaved rounds: per round and tool a fresh database, then `ops` in order. Median ms and peak RSS."""
    samples: dict[str, dict[str, list[float]]] = {t: {op: [] for op in ops} for t in tools}
    cpu: dict[str, dict[str, list[float]]] = {t: {op: [] for op in ops} for t in tools}
    peak: dict[str, int] = dict.fromkeys(tools, 0)
    for round_number in range(runs + 1):
        for tool in tools:
            name = f"{PREFIX}{tools.index(tool)}"
            tool_dsn, url = fresh_database(admin, dsn, name)
            cmds = commands(tool, peers.get(tool, ""), tool_dsn, url, projects, migrations_dir)
            env, cwd = where(tool, baseline_src)
            for op in ops:
                if not cmds[op]:
                    continue
                ms, rss, cpu_ms = timed(cmds[op], env, cwd)
                if round_number:  # round 0 warms caches up
                    samples[tool][op].append(ms)
                    cpu[tool][op].append(cpu_ms)
                    peak[tool] = max(peak[tool], rss)
    with admin.cursor() as cur:
        for tool in tools:
            cur.execute(f'DROP DATABASE IF EXISTS "{PREFIX}{tools.index(tool)}" WITH (FORCE)')
    return {
        t: {op: round(statistics.median(v), 1) if v else None for op, v in ops_.items()}
        | {
            "peak_rss_kb": peak[t],
            "cpu_ms": {op: round(statistics.median(v), 1) if v else None for op, v in cpu[t].items()},
        }
        for t, ops_ in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--large", type=int, default=500, help="migrations in the scale case (0: skip it)")
    parser.add_argument("--large-runs", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another checkout's src/ (e.g. a worktree of main): its bridge-db and Invoke run too, as '... (baseline)'",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from bridge_db.discovery import discover_migrations

    peers = install_peers()
    tools = ["bridge-db", "bridge-db (invoke)", "psql loop (seed)", "psql -1 (floor)", *peers]
    if args.baseline_src:
        tools[2:2] = ["bridge-db" + BASELINE, "bridge-db (invoke)" + BASELINE]
    baseline = args.baseline_src.resolve() if args.baseline_src else None
    admin = psycopg2.connect(args.dsn)
    admin.autocommit = True
    six = discover_migrations(ROOT / "migrations")[:6]
    six_dir = BENCH / "six"
    shutil.rmtree(six_dir, ignore_errors=True)
    six_dir.mkdir(parents=True)
    for m in six:
        shutil.copy2(m.forward.path, six_dir / m.forward.path.name)
        shutil.copy2(m.rollback.path, six_dir / m.rollback.path.name)
    projects = write_projects(six)
    results = compare(
        admin, args.dsn, tools, peers, projects, six_dir, args.runs, ("apply", "noop", "rollback"), baseline
    )
    print(f"median of {args.runs} interleaved rounds (ms), the six Bridge migrations")
    print(f"  {'tool':<32}{'no-op':>9}{'apply':>9}{'rollback':>10}{'MB':>6}")
    for tool, r in results.items():
        print(f"  {tool:<32}{r['noop']:>9.1f}{r['apply']:>9.1f}{r['rollback']:>10.1f}{r['peak_rss_kb'] / 1024:>6.0f}")
    if args.large:
        large_dir = generate_migrations(BENCH / f"large{args.large}", args.large)
        large_projects = write_projects(discover_migrations(large_dir), f"projects{args.large}")
        # the seed's loop of one psql per file is left out at scale: 1000 processes a round tell nothing new
        at_scale = [t for t in tools if t != "psql loop (seed)"]
        large = compare(
            admin, args.dsn, at_scale, peers, large_projects, large_dir, args.large_runs, ("apply", "noop", "status"),
            baseline,
        )  # fmt: skip
        results["large"] = {"migrations": args.large, "runs": args.large_runs, "tools": large}
        print(f"median of {args.large_runs} interleaved rounds (ms), {args.large} generated migrations")
        print(f"  {'tool':<32}{'no-op':>9}{'apply':>9}{'status':>10}{'MB':>6}")
        for tool, r in large.items():
            status = f"{r['status']:>10.1f}" if r["status"] is not None else f"{'n/a':>10}"
            print(f"  {tool:<32}{r['noop']:>9.1f}{r['apply']:>9.1f}{status}{r['peak_rss_kb'] / 1024:>6.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
