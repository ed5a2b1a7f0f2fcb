"""`invoke bench`: every benchmark in one run, then docs/benchmarks.md and docs/benchmarks.png.

Runs compare_tools.py (no-op, fresh apply, rollback against dbmate, yoyo, Alembic, Sqitch and psql),
backup_throughput.py (1 GB Bridge database), live_load.py (write latency during a strong-lock
migration) and prod_migrate_fleet.py (1, 3 and 10 clusters), and writes the report from their JSON.
The chart is drawn with matplotlib from the peers' scratch venv (.bench/py), not a project dependency.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".bench" / "results"
PY = sys.executable


def run(script: str, *args: str, stdout_json: bool = False) -> dict:
    print(f"bench: {script} {' '.join(args)}", file=sys.stderr, flush=True)
    target = OUT / f"{Path(script).stem}.json"
    if stdout_json:
        out = subprocess.run(
            [PY, str(ROOT / "benchmarks" / script), *args, "--json"], check=True, capture_output=True, text=True
        ).stdout
        target.write_text(out)
    else:
        subprocess.run([PY, str(ROOT / "benchmarks" / script), *args, "--json", str(target)], check=True)
    return json.loads(target.read_text())


def versions() -> dict:
    def first_line(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "n/a"

    bench = ROOT / ".bench"
    dbmate = sorted((bench / "npm/node_modules/@dbmate").glob("*/bin/dbmate"))
    return {
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "postgresql": first_line(
            ["psql", "-X", "-At", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", "SHOW server_version"]
        ),
        "dbmate": first_line([str(dbmate[0]), "--version"]) if dbmate else "n/a",
        "yoyo-migrations": pip_version(bench, "yoyo-migrations"),
        "alembic": first_line([str(bench / "py/bin/alembic"), "--version"]),
        "sqitch": first_line(["sqitch", "--version"]),
    }


def interpreter_start_ms() -> float:
    """Median wall time of starting this Python and importing psycopg2: what any Python tool pays."""
    import statistics
    import time

    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    samples = []
    for _ in range(11):
        started = time.perf_counter()
        subprocess.run([PY, "-c", "import psycopg2"], check=True, env=env)
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples[1:]), 1)


def targets(compare: dict, large: dict | None, backup: dict | None, live: dict | None, start_ms: float) -> list[str]:
    ours, inv, dbmate, floor = (compare[k] for k in ("bridge-db", "bridge-db (invoke)", "dbmate", "psql -1 (floor)"))

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}×"

    rows = [
        (
            "no-op: console script faster than yoyo, Alembic and Sqitch",
            all(ours["noop"] < compare[p]["noop"] for p in ("yoyo", "alembic", "sqitch") if p in compare),
            ", ".join(f"{p} {compare[p]['noop']:.0f} ms" for p in ("yoyo", "alembic", "sqitch") if p in compare)
            + f" vs {ours['noop']:.0f} ms",
        ),
        (
            "no-op, 6 migrations: console script within 2.5× dbmate (and how far from 2×)",
            ours["noop"] <= 2.5 * dbmate["noop"],
            f"{ratio(ours['noop'], dbmate['noop'])} ({ours['noop']:.0f} vs {dbmate['noop']:.0f} ms; 2× would be "
            f"{2 * dbmate['noop']:.0f} ms, {ours['noop'] - 2 * dbmate['noop']:+.0f} ms from it)",
        ),
    ]
    if large:
        big, big_dbmate = large["tools"]["bridge-db"], large["tools"]["dbmate"]
        rows.append(
            (
                f"no-op, {large['migrations']} migrations: console script within 2.5× dbmate (and how far from 2×)",
                big["noop"] <= 2.5 * big_dbmate["noop"],
                f"{ratio(big['noop'], big_dbmate['noop'])} ({big['noop']:.0f} vs {big_dbmate['noop']:.0f} ms; 2× would "
                f"be {2 * big_dbmate['noop']:.0f} ms, {big['noop'] - 2 * big_dbmate['noop']:+.0f} ms from it)",
            )
        )
    rows += [
        (
            "no-op, 6 migrations: Invoke within 4× dbmate",
            inv["noop"] <= 4 * dbmate["noop"],
            f"{ratio(inv['noop'], dbmate['noop'])} ({inv['noop']:.0f} ms)",
        ),
        (
            "fresh apply of the six within 1.3× (psql -1 + interpreter start)",
            ours["apply"] <= 1.3 * (floor["apply"] + start_ms),
            f"{ours['apply'] / (floor['apply'] + start_ms):.2f}× of {floor['apply'] + start_ms:.0f} ms "
            f"({ours['apply']:.0f} ms)",
        ),
    ]
    if backup:
        b = backup["results"]

        def within(a: str, base: str) -> float:
            return b[a]["median_s"] / b[base]["median_s"]

        rows += [
            (
                "backup within 5% of pg_dump, same format",
                max(
                    within("backup custom: bridge-db backup", "backup custom: pg_dump -Fc"),
                    within("backup directory -j2: bridge-db backup", "backup directory -j2: pg_dump -Fd -j2"),
                )
                <= 1.05,
                f"custom {within('backup custom: bridge-db backup', 'backup custom: pg_dump -Fc'):.3f}×, directory "
                f"{within('backup directory -j2: bridge-db backup', 'backup directory -j2: pg_dump -Fd -j2'):.3f}×",
            ),
            (
                "restore within 5% of pg_restore",
                within("restore -j2: bridge-db restore", "restore -j2: createdb + pg_restore -j2") <= 1.05,
                f"{within('restore -j2: bridge-db restore', 'restore -j2: createdb + pg_restore -j2'):.3f}×",
            ),
        ]
    if live:
        rows.append(
            (
                "live load: p99 write latency within 2× the no-migration p99",
                live["bridge-db"]["p99_ms"] <= 2 * live["baseline"]["p99_ms"],
                f"{live['bridge-db']['p99_ms']} vs {live['baseline']['p99_ms']} ms "
                f"(psql -f: p99 {live['psql -f']['p99_ms']}, max {live['psql -f']['max_ms']} ms)",
            )
        )
    return [
        "## Targets",
        "",
        "| target | met | measured |",
        "|---|---|---|",
        *[f"| {name} | {'yes' if ok else '**no**'} | {detail} |" for name, ok, detail in rows],
        "",
    ]


def pip_version(bench: Path, package: str) -> str:
    out = subprocess.run([str(bench / "py/bin/pip"), "show", package], capture_output=True, text=True).stdout
    return next((line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Version: ")), "n/a")


def chart(compare: dict, path: Path) -> None:
    code = f"""
import json, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.loads({json.dumps(json.dumps(compare))})
tools = list(data)
fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
for ax, op, title in zip(axes, ("noop", "apply", "rollback"), ("no-op migrate", "fresh apply of 6", "rollback of 6")):
    values = [data[t][op] for t in tools]
    colors = ["#1f6feb" if t.startswith("bridge-db") else "#8b949e" if t.startswith("psql") else "#d29922"
              for t in tools]
    ax.barh(tools, values, color=colors)
    ax.invert_yaxis()
    ax.set_title(title + " (median ms, lower is better)")
    for i, v in enumerate(values):
        ax.text(v, i, f" {{v:.0f}}", va="center", fontsize=8)
fig.tight_layout()
fig.savefig({str(path)!r}, dpi=110)
"""
    bench_py = ROOT / ".bench/py/bin/python"
    subprocess.run([str(bench_py), "-m", "pip", "install", "-q", "matplotlib"], check=True, capture_output=True)
    subprocess.run([str(bench_py), "-c", code], check=True)


def report(compare, large, backup, live, fleet, info, runs, pitr=None) -> str:
    floor = compare["psql -1 (floor)"]
    lines = [
        "# Benchmarks",
        "",
        f"Written by `invoke bench` on {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} from each benchmark's "
        "latest run (`--only NAME` reruns one), all tools against the same local PostgreSQL server, interleaved "
        "round by round. The machine is shared: compare ratios within one run, not milliseconds across runs.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        *targets(compare, large, backup, live, info["interpreter start (ms)"]),
        f"## Migrations: the six Bridge migrations, median ms of {runs} rounds after a warm-up",
        "",
        "![chart](benchmarks.png)",
        "",
        "A `(baseline)` row is the same command from another checkout (`invoke bench --baseline-src`), run in the "
        "same rounds: before and after a change.",
        "",
        "| tool | no-op | fresh apply | rollback all | apply ÷ psql -1 | no-op ÷ dbmate | no-op CPU ms "
        "| peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    dbmate = compare.get("dbmate")
    for tool, r in compare.items():
        vs_dbmate = f"{r['noop'] / dbmate['noop']:.2f}×" if dbmate else "n/a"
        cpu = r.get("cpu_ms", {}).get("noop")
        lines.append(
            f"| {tool} | {r['noop']:.0f} | {r['apply']:.0f} | {r['rollback']:.0f} | "
            f"{r['apply'] / floor['apply']:.2f}× | {vs_dbmate} | {'n/a' if cpu is None else f'{cpu:.0f}'} | "
            f"{r['peak_rss_kb'] / 1024:.0f} |"
        )
    if large:
        big = large["tools"]
        big_dbmate = big.get("dbmate")
        lines += [
            "",
            f"## Migrations at scale: {large['migrations']} generated migrations, median ms of {large['runs']} rounds "
            "after a warm-up",
            "",
            "Each migration creates a table with a primary key, a default and an index; every tool gets them in its "
            "own format. Status is each tool's own (`status`, `list`, `current`); the psql floors have none.",
            "",
            "| tool | no-op | fresh apply | status | no-op ÷ dbmate | apply ÷ dbmate | no-op CPU ms | peak RSS (MB) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for tool, r in big.items():
            status = f"{r['status']:.0f}" if r.get("status") is not None else "n/a"
            noop_vs = f"{r['noop'] / big_dbmate['noop']:.2f}×" if big_dbmate else "n/a"
            apply_vs = f"{r['apply'] / big_dbmate['apply']:.2f}×" if big_dbmate else "n/a"
            cpu = r.get("cpu_ms", {}).get("noop")
            lines.append(
                f"| {tool} | {r['noop']:.0f} | {r['apply']:.0f} | {status} | {noop_vs} | {apply_vs} | "
                f"{'n/a' if cpu is None else f'{cpu:.0f}'} | {r['peak_rss_kb'] / 1024:.0f} |"
            )
    lines.append("")
    if backup:
        lines += [
            "## Backup and restore of a generated Bridge database",
            "",
            f"Database {backup['database_mb']} MB (`pg_database_size`), custom dump {backup['dump_mb']} MB; "
            f"median of {next(iter(backup['results'].values()))['runs']} interleaved runs.",
            "",
            "| operation | seconds | MB/s |",
            "|---|---|---|",
            *[f"| {k} | {v['median_s']} | {v['mb_per_s']} |" for k, v in backup["results"].items()],
            "",
        ]
    if live:
        lines += [
            "## Application writes while a strong-lock migration waits behind a 3 s transaction",
            "",
            "| phase | writes | errors | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|",
            *[
                f"| {k} | {v['writes']} | {v['errors']} | {v['p50_ms']} | {v['p99_ms']} | {v['max_ms']} |"
                for k, v in live.items()
            ],
            "",
        ]
    if fleet:
        lines += [
            "## prod_migrate.yml on real clusters (production policy, canary batches [1, 25%, 100%])",
            "",
            "`local`: embedded clusters, the engine on the control node. `ssh`: hosts reached over SSH (each an",
            "unprivileged OS user with its own sshd on a loopback address and its own cluster, TLS verify-full,",
            "scram-sha-256), the engine installed on each host by install.yml and run there.",
            "",
            "| mode | hosts | install s | first rollout s | per host s | no-op rollout s |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r.get('mode', 'local')} | {r['hosts']} | {r.get('install_s', '')} | {r['first_rollout_s']} "
                f"| {r['per_host_first_s']} | {r['noop_rollout_s']} |"
                for r in fleet
            ],
            "",
        ]
    if pitr:
        from pitr import markdown  # benchmarks/pitr.py

        lines += [markdown(pitr), ""]
    skipped = [
        name for name, data in (("backup", backup), ("live", live), ("fleet", fleet), ("pitr", pitr)) if not data
    ]
    if skipped:
        lines += [f"Not run in this run (no earlier result either): {', '.join(skipped)}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--large", type=int, default=500, help="migrations in the scale case")
    parser.add_argument("--large-runs", type=int, default=3)
    parser.add_argument("--backup-runs", type=int, default=3)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--baseline-src", default=None, help="another checkout's src/: its bridge-db runs too")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=["compare", "live", "fleet", "backup", "pitr"],
        help="rerun only these; reuse the others' last results from .bench/results (a section with none is left out)",
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    compare_args = ["--runs", str(args.runs), "--large", str(args.large), "--large-runs", str(args.large_runs)]
    if args.baseline_src:
        compare_args += ["--baseline-src", args.baseline_src]
    jobs = {
        "compare": ("compare_tools.py", compare_args, False),
        "live": ("live_load.py", [], False),
        "fleet": ("prod_migrate_fleet.py", ["--hosts", "1", "3", "10", "--mode", "local", "ssh"], True),
        "backup": ("backup_throughput.py", ["--size-gb", str(args.size_gb), "--runs", str(args.backup_runs)], True),
        "pitr": ("pitr.py", ["--size-gb", str(args.size_gb)], True),
    }
    results: dict = {}
    for name, (script, script_args, stdout_json) in jobs.items():
        previous = OUT / f"{Path(script).stem}.json"
        if args.only is None or name in args.only:
            results[name] = run(script, *script_args, stdout_json=stdout_json)
        elif previous.exists():
            results[name] = json.loads(previous.read_text())
        else:
            results[name] = None
    info = versions()
    info["interpreter start (ms)"] = interpreter_start_ms()
    compare = dict(results["compare"])
    large = compare.pop("large", None)
    chart(compare, ROOT / "docs" / "benchmarks.png")
    (ROOT / "docs" / "benchmarks.md").write_text(
        report(
            compare, large, results["backup"], results["live"], results["fleet"], info, args.runs, results.get("pitr")
        )
    )
    print("bench: wrote docs/benchmarks.md and docs/benchmarks.png", file=sys.stderr)


if __name__ == "__main__":
    main()
