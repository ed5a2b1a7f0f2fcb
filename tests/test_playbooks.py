"""The playbooks target the environment of the inventory they are run with, and refuse an inventory
that gives them nothing to do; `invoke deploy` reaches the inventory's host and passes extra variables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PLAYBOOKS = sorted(p.name for p in (ROOT / "playbooks").glob("*.yml"))
INVENTORIES = ["dev", "staging", "production"]
ENV = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}


def _playbook(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ansible-playbook"), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120
    )


def _plays(list_hosts_output: str) -> list[tuple[str, list[str]]]:
    """(pattern, hosts) of each play in `ansible-playbook --list-hosts` output."""
    plays: list[tuple[str, list[str]]] = []
    for line in list_hosts_output.splitlines():
        head = re.match(r"\s+play #\d+ \(([^)]*)\):", line)
        if head:
            plays.append((head.group(1), []))
        elif plays and re.match(r"\s{6}\S+$", line):
            plays[-1][1].append(line.strip())
    return plays


def test_the_expected_playbooks_are_tested():
    assert PLAYBOOKS == [
        "backup.yml",
        "backup_status.yml",
        "dev_migrate.yml",
        "install.yml",
        "prod_migrate.yml",
        "restore.yml",
        "restore_pitr.yml",
        "rollback.yml",
        "schedule_backups.yml",
        "setup.yml",
        "staging_migrate.yml",
    ]


@pytest.mark.parametrize("inventory", INVENTORIES)
@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_each_playbook_targets_the_inventorys_environment(playbook, inventory):
    out = _playbook("-i", f"inventories/{inventory}", f"playbooks/{playbook}", "--list-hosts")
    assert out.returncode == 0, out.stdout + out.stderr
    plays = _plays(out.stdout)
    # the guard play on the control node, then the play(s) that do the work, on the inventory's host only
    assert plays[0] == ("localhost", ["localhost"]), out.stdout
    work = plays[1:]
    if playbook == "backup_status.yml":  # its report is a play on the control node, after the hosts' play
        assert work[-1] == ("localhost", ["localhost"]), out.stdout
        work = work[:-1]
    assert work and all(hosts == [f"{inventory}-db"] for _, hosts in work), out.stdout


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_each_playbook_refuses_an_empty_inventory(playbook, tmp_path):
    empty = tmp_path / "inventory"
    empty.mkdir()
    out = _playbook("-i", str(empty), f"playbooks/{playbook}")
    assert out.returncode != 0, out.stdout
    assert "group bridge_db is empty" in out.stdout and "-i inventories/staging" in out.stdout
    assert "PLAY RECAP" in out.stdout and "changed=0" in out.stdout


def test_an_inventory_without_bridge_hosts_is_refused_too(tmp_path):
    """A hand-written inventory whose groups are named like the environments, but whose hosts are not
    the plugin's: before, setup.yml targeted `dev` and would have run on such a host."""
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[staging]\nsomewhere ansible_connection=local\n")
    out = _playbook("-i", str(inventory), "playbooks/setup.yml")
    assert out.returncode != 0 and "group bridge_db is empty" in out.stdout, out.stdout


def test_one_confirmation_variable_across_playbooks_and_roles():
    found: dict[str, set[str]] = {}
    for path in [
        *ROOT.glob("playbooks/**/*.yml"),
        *ROOT.glob("roles/*/*/*.yml"),
        *ROOT.glob("molecule/*/*.yml"),
        *ROOT.glob("molecule/*/group_vars/*.yml"),
        *ROOT.glob("benchmarks/*.py"),
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("roles/*/README.md"),
        ROOT / "README.md",
        ROOT / "tasks.py",
    ]:
        for name in re.findall(r"\bbridge_confirm\w*", path.read_text()):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    # the old name is read in one place only: to say that it was renamed
    assert set(found) == {"bridge_confirm", "bridge_confirm_production"}
    assert found["bridge_confirm_production"] == {"playbooks/prod_migrate.yml"}
    text = (ROOT / "playbooks" / "prod_migrate.yml").read_text()
    assert "bridge_confirm_production is not defined" in text and "renamed bridge_confirm" in text


def test_the_old_production_confirmation_is_refused_with_the_new_name():
    out = _playbook("-i", "inventories/staging", "playbooks/prod_migrate.yml", "-e", "bridge_confirm_production=true")
    assert out.returncode != 0
    assert "-e bridge_confirm=true" in out.stdout and "renamed bridge_confirm" in out.stdout
    assert "cannot connect" not in out.stdout  # refused before any database work


def _invoke(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "invoke"), *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)


def test_deploy_setup_on_staging_acts_on_stagings_host():
    """The README's example. Before, setup.yml targeted `dev`: against inventories/staging it printed
    "no hosts matched" and exited 0. Staging's server is not reachable from here, so reaching it shows
    as a connection failure to staging's own host."""
    out = _invoke("deploy", "--env", "staging", "--playbook", "setup", "--check")
    assert out.returncode != 0
    assert "fatal: [staging-db -> localhost]" in out.stdout
    assert "cannot connect to staging: staging-db.omninode.internal:5432/omninode_bridge" in out.stdout


def test_deploy_passes_extra_variables():
    without = _invoke("deploy", "--env", "staging", "--playbook", "rollback", "--check")
    assert without.returncode != 0 and "pass -e bridge_rollback_steps=N" in without.stdout
    out = _invoke(
        "deploy",
        "--env",
        "staging",
        "--playbook",
        "rollback",
        "--check",
        "--extra",
        "bridge_rollback_steps=1",
        "--extra",
        "bridge_other=x",
    )
    assert "pass -e bridge_rollback_steps=N" not in out.stdout  # the variable arrived ...
    assert "cannot connect to staging" in out.stdout  # ... and the rollback went on to staging's host


def test_deploy_refuses_an_extra_that_is_not_a_variable():
    out = _invoke("deploy", "--env", "staging", "--playbook", "rollback", "--extra", "bridge_rollback_steps")
    assert out.returncode == 2 and "is not KEY=VALUE" in out.stderr
