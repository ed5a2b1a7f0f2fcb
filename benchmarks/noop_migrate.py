"""No-op `migrate` wall time (everything applied): the console script against the Invoke task.

    python benchmarks/noop_migrate.py                 # the embedded dev database
    python benchmarks/noop_migrate.py --dsn "host=127.0.0.1 dbname=x user=postgres"
    python benchmarks/noop_migrate.py --runs 20 --json

Runs the two commands interleaved, after a warm-up, and prints median, min and max per command.
A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# As installed on a person's machine: bytecode cached (the warm-up writes it), not recompiled per run.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dsn", default=None, help="benchmark this database instead of the embedded dev one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    target = ["--dsn", args.dsn] if args.dsn is not None else []
    commands = {
        "console script (bridge-db migrate)": [str(BIN / "bridge-db"), "migrate", *target],
        "invoke migrate": [str(BIN / "invoke"), "migrate", *target],
    }
    # Bring the database up to date first, so that every timed run is a no-op.
    subprocess.run(commands["console script (bridge-db migrate)"], cwd=ROOT, check=True, env=ENV)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for round_number in range(args.warmup + args.runs):
        for name, command in commands.items():
            elapsed = measure(command)
            if round_number >= args.warmup:
                samples[name].append(elapsed)

    results = {
        name: {
            "median_ms": round(statistics.median(s), 1),
            "min_ms": round(min(s), 1),
            "max_ms": round(max(s), 1),
            "runs": len(s),
        }
        for name, s in samples.items()
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"no-op migrate, {args.runs} runs each after {args.warmup} warm-up, interleaved")
    for name, r in results.items():
        print(f"  {name:<36} median {r['median_ms']:7.1f} ms   min {r['min_ms']:7.1f}   max {r['max_ms']:7.1f}")


if __name__ == "__main__":
    main()
