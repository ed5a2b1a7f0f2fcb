"""PostgreSQL client tools (pg_dump, pg_dumpall, pg_restore) chosen for the server they talk to.

Every candidate on the machine is looked at, not only the first on PATH: $BRIDGE_PG_BINDIR (one
folder or several, separated like PATH), every folder of PATH, /usr/lib/postgresql/*/bin (Debian,
Ubuntu), /usr/pgsql-*/bin (RHEL and friends) and the builds `bridge-db tools install` keeps.

- pg_dump, pg_dumpall: the server's own major first (its dump restores anywhere the server's own
  would), else the oldest newer one; never an older one, which cannot read a newer server.
- pg_restore: one that the target server accepts and that can read the dump: the target's own major
  first; a PostgreSQL 17+ pg_restore sends `SET transaction_timeout`, which 16 and older refuse, so a
  target of 16 or older never gets one while an older fitting one exists.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import PrerequisiteMissing

BINDIR_ENV = "BRIDGE_PG_BINDIR"
TRANSACTION_TIMEOUT_FROM = 17  # the first pg_restore that sets transaction_timeout


@dataclass(frozen=True, order=True)
class Tool:
    major: int
    path: Path


def candidate_folders() -> list[Path]:
    from .pgbuilds import SUPPORTED_MAJORS, cached, trusted_folder

    folders: list[Path] = []
    for env in (BINDIR_ENV, "PATH"):
        folders += [Path(p) for p in os.environ.get(env, "").split(os.pathsep) if p]
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin"):
        folders += [Path(p) for p in sorted(glob.glob(pattern))]
    for major in SUPPORTED_MAJORS:
        build = cached(major)
        if build and trusted_folder(build.root):
            folders.append(build.bindir)
    return folders


def available(name: str) -> list[Tool]:
    """Every `name` on the machine with its major version, one entry per real file, in search order."""
    seen: set[Path] = set()
    tools: list[Tool] = []
    for folder in candidate_folders():
        path = folder / name
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop (RuntimeError before 3.13)
            continue
        if real in seen or not (real.is_file() and os.access(real, os.X_OK)) or real.name == "pg_wrapper":
            continue  # Debian's /usr/bin/pg_dump is pg_wrapper, which picks a version itself
        if _writable_by_anyone(real) or _writable_by_anyone(path.parent):
            continue  # every folder is searched, not only the first: a planted binary must not win
        seen.add(real)
        major = _major_of(str(path))
        if major is not None:
            tools.append(Tool(major, path))
    return tools


def _writable_by_anyone(path: Path) -> bool:
    """World-writable, and not a sticky folder (whose files only their owners may replace)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return True
    return bool(mode & 0o002) and not (path.is_dir() and mode & 0o1000)


def dump_tool(name: str, server_major: int) -> Tool:
    """pg_dump or pg_dumpall for a server of `server_major`."""
    tools = available(name)
    same = [t for t in tools if t.major == server_major]
    newer = sorted(t for t in tools if t.major > server_major)
    if same or newer:
        return (same or newer)[0]
    raise PrerequisiteMissing(
        f"no {name} of PostgreSQL {server_major} or newer on this machine (the server is {server_major}; "
        + (f"found {', '.join(sorted({str(t.major) for t in tools}))})" if tools else f"no {name} found)"),
        install_hint(server_major),
    )


def restore_tool(target_major: int, dump_major: int | None) -> Tool:
    """pg_restore for a target server of `target_major`, able to read a dump made by pg_dump `dump_major`."""
    tools = available("pg_restore")
    readable = [t for t in tools if dump_major is None or t.major >= dump_major]
    same = [t for t in readable if t.major == target_major]
    accepted = [t for t in readable if target_major >= TRANSACTION_TIMEOUT_FROM or t.major < TRANSACTION_TIMEOUT_FROM]
    # the target's own major; else the oldest the target accepts; never a 17+ one for a 16- target
    choice = same or sorted(accepted)
    if choice:
        return choice[0]
    if readable:
        raise PrerequisiteMissing(
            f"this dump was made by pg_dump {dump_major}: every pg_restore that can read it sets "
            f"transaction_timeout, which PostgreSQL {target_major} refuses",
            f"restore it into a PostgreSQL {TRANSACTION_TIMEOUT_FROM} or newer server, or back up again "
            f"with pg_dump {target_major} ({install_hint(target_major)})",
        )
    need = max(target_major, dump_major or 0)
    raise PrerequisiteMissing(f"no pg_restore of PostgreSQL {need} or newer on this machine", install_hint(need))


def install_hint(major: int) -> str:
    return (
        f"install PostgreSQL {major}'s client tools: Debian/Ubuntu `apt-get install postgresql-client-{major}` "
        f"(from the PostgreSQL apt repository, apt.postgresql.org), RHEL-likes `dnf install postgresql{major}`; "
        f"or `bridge-db tools install {major}`; or point {BINDIR_ENV} at their folder"
    )


@cache
def _major_of(path: str) -> int | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\(PostgreSQL\) (\d+)", out) or re.search(r"(\d+)(?:\.\d+)", out)
    return int(match.group(1)) if match else None
