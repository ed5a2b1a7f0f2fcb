"""The bridge_extensions role on a real cluster of its own that runs without the pg_stat_statements
preload: without a restart command it fails on the FIRST run (before, the first run succeeded and only
the second failed); with one it restarts the server, which then runs with the preload."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PORT = 56400 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)

PLAYBOOK = """---
- name: Extensions, preload managed
  hosts: bridge_db
  gather_facts: false
  roles:
    - role: bridge_extensions
      vars:
        bridge_extensions_manage_server: true
"""


@pytest.fixture
def cluster(tmp_path):
    """An embedded cluster (as the postgres OS user when run as root) started without the preload."""
    config = tmp_path / "environments.toml"
    config.write_text(
        f'[defaults]\nmigrations_dir = "{ROOT / "migrations"}"\n\n'
        f'[environments.preload]\nembedded = true\nembedded_dir = ".cluster"\nport = {PORT}\n'
        'database = "bridge_preload"\nuser = "postgres"\nadmin_user = "postgres"\n'
    )
    cli = [sys.executable, "-m", "bridge_db"]
    args = ["--config", str(config), "--env", "preload"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}

    def bridge(*verb: str) -> subprocess.CompletedProcess:
        return subprocess.run([*cli, *verb, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    up = bridge("db", "up", "--json")
    assert up.returncode == 0, up.stderr
    socket_dir = json.loads(up.stdout)["socket_dir"]

    def psql(statement: str) -> str:
        out = subprocess.run(
            [
                "psql",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                socket_dir,
                "-p",
                str(PORT),
                "-U",
                "postgres",
                "-d",
                "bridge_preload",
                "-c",
                statement,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()

    psql("ALTER SYSTEM SET shared_preload_libraries = 'plpgsql'")
    restart = shlex.join([*cli, "db", "down", *args]) + " && " + shlex.join([*cli, "db", "up", *args])
    assert subprocess.run(["/bin/sh", "-c", restart], env=env, cwd=tmp_path, capture_output=True).returncode == 0
    assert "pg_stat_statements" not in psql("SHOW shared_preload_libraries")

    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "bridge.yml").write_text(
        f"plugin: omninode.bridge.environments\nproject_dir: {ROOT}\nconfig: {config}\n"
        "environments: [preload]\ngroup: staging\n"
    )
    (tmp_path / "playbook.yml").write_text(PLAYBOOK)
    local = json.dumps({"ansible_connection": "local", "ansible_python_interpreter": sys.executable})

    def play(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(inventory), "-e", local, *extra, str(tmp_path / "playbook.yml")],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={**env, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        )

    yield play, psql, restart
    bridge("db", "down")


def test_no_restart_command_fails_on_the_first_run(cluster):
    play, psql, _ = cluster
    first = play()
    assert first.returncode != 0, first.stdout
    assert "only a restart loads it: set bridge_extensions_restart_command" in first.stdout
    assert "pg_stat_statements" not in psql("SHOW shared_preload_libraries")  # what the failure says
    # the setting is written, so that the operator's restart is all that is missing
    assert "pg_stat_statements" in psql(
        "SELECT setting FROM pg_file_settings WHERE name = 'shared_preload_libraries' ORDER BY seqno DESC LIMIT 1"
    )
    second = play()
    assert second.returncode != 0 and "only a restart loads it" in second.stdout


def test_a_restart_command_makes_the_preload_take_effect_and_a_second_run_changes_nothing(cluster):
    play, psql, restart = cluster
    with_restart = ["-e", json.dumps({"bridge_extensions_restart_command": ["/bin/sh", "-c", restart]})]
    first = play(*with_restart)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Restart PostgreSQL, so that the preload takes effect" in first.stdout
    assert "pg_stat_statements" in psql("SHOW shared_preload_libraries")
    second = play(*with_restart)
    assert second.returncode == 0 and "changed=0" in second.stdout, second.stdout


def test_a_setting_written_earlier_still_gets_its_restart(cluster):
    """A first run without a restart command wrote the setting and failed; a run with one restarts,
    although the setting itself no longer changes (before, only a change notified the restart)."""
    play, psql, restart = cluster
    assert play().returncode != 0
    with_restart = ["-e", json.dumps({"bridge_extensions_restart_command": ["/bin/sh", "-c", restart]})]
    out = play(*with_restart)
    assert out.returncode == 0, out.stdout
    assert "pg_stat_statements" in psql("SHOW shared_preload_libraries")


def test_the_old_variable_names_are_refused_with_the_new_ones(cluster):
    play, _, _ = cluster
    out = play("-e", "postgresql_extensions_manage_server=true")
    assert out.returncode != 0
    assert "postgresql_extensions is now bridge_extensions" in out.stdout
    assert "rename postgresql_extensions_manage_server" in out.stdout
