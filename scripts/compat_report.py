"""Run the compatibility suite on every supported PostgreSQL major and write docs/compatibility.md.

    .venv/bin/python scripts/compat_report.py [--pg all] [--out docs/compatibility.md]

The table is the run's own result (pytest's JUnit XML): one row per operation, one column per major,
each cell "ok" with the test's time, or what went wrong.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bridge_db import pgbuilds  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default="all")
    parser.add_argument("--out", default=str(ROOT / "docs" / "compatibility.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "compat.xml"
        t0 = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_compat.py"),
             "--pg", args.pg, f"--junitxml={junit}"],
            cwd=ROOT,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        cases = ET.parse(junit).getroot().iter("testcase")
        results: dict[str, dict[int, str]] = {}
        for case in cases:
            name = case.get("name", "")
            test, _, param = name.partition("[")
            parts = param.rstrip("]").split("-")
            major = int(parts[0].removeprefix("pg"))
            label = test.removeprefix("test_").replace("_", " ") + (f" ({'-'.join(parts[1:])})" if parts[1:] else "")
            if case.find("failure") is not None or case.find("error") is not None:
                cell = "**FAILED**"
            elif case.find("skipped") is not None:
                cell = "n/a: " + (case.find("skipped").get("message", "skipped").split(": ", 1)[-1])
            else:
                cell = f"ok {float(case.get('time', 0)):.1f} s"
            results.setdefault(label, {})[major] = cell
    majors = sorted({m for row in results.values() for m in row})
    builds = {m: pgbuilds.cached(m) for m in majors}
    lines = [
        "# Compatibility: every supported PostgreSQL major",
        "",
        f"Written by `scripts/compat_report.py` from a real run of `tests/test_compat.py` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({platform.machine()}, {platform.python_version()}); "
        f"the whole run took {wall:.0f} s, downloads cached. Times are each test's own, on a shared 2-core "
        "machine: read them as sizes, not benchmarks.",
        "",
        "Each server is a real cluster started as the `postgres` OS user on a private socket, from the package "
        "registries (`bridge_db.pgbuilds`):",
        "",
        "| major | server build | source |",
        "|---|---|---|",
    ]
    for major in majors:
        build = builds[major]
        lines.append(f"| {major} | {build.version if build else '?'} | `{build.source if build else '?'}` |")
    lines += [
        "",
        "Client tools: each backup takes the server's own pg_dump where the machine has one (13 has no client "
        "build: the oldest newer one, 14); each restore a pg_restore the target accepts. The last row puts the "
        "18, 17 and 16 tools first on `PATH`, as a machine with several majors may.",
        "",
        "| operation | " + " | ".join(str(m) for m in majors) + " |",
        "|---|" + "---|" * len(majors),
    ]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(row.get(m, "-") for m in majors) + " |")
    lines += [
        "",
        "Run it again: `invoke test` runs the suite for every major (`invoke test --pg 13,16,18` for some), "
        "and `python scripts/compat_report.py` rewrites this page.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}: {len(results)} operations x {len(majors)} majors, pytest exit {run.returncode}")
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
