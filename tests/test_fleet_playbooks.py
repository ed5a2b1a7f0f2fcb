"""Where the engine runs (bridge) and the collection of backup freshness markers
(playbooks/backup_status.yml), run as an operator would, on this machine with a local connection. The
same playbooks over real SSH hosts are the Molecule scenario `remote`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def playbook(inventory: Path, book: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_DB_", "ANSIBLE_"))}
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), *args, str(ROOT / "playbooks" / f"{book}.yml")],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip


def inventory(folder: Path, hosts: dict[str, dict], **group_vars: object) -> Path:
    path = folder / "hosts.yml"
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "bridge_project_dir": str(ROOT),
        "bridge_config": str(ROOT / "environments.toml"),
        **group_vars,
    }
    path.write_text(yaml.safe_dump({"bridge_db": {"hosts": hosts, "vars": common}}))
    return path


def marker(path: Path, age: timedelta, result: str = "ok", offset_hours: int = 0, **extra: object) -> None:
    zone = timezone(timedelta(hours=offset_hours))
    path.write_text(json.dumps({
        "environment": path.stem, "finished_at": (datetime.now(UTC) - age).astimezone(zone).isoformat(), "result": result,
        "exit_code": 0 if result == "ok" else 8, "message": None if result == "ok" else "pg_dump failed: disk full",
        "path": f"/srv/backups/{path.stem}.dump", "size_bytes": 1, "verified": "listed", "prune_error": None,
        **extra,
    }))  # fmt: skip


def test_backup_status_collects_every_marker_and_fails_naming_the_bad_ones(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    marker(markers / "fresh.json", timedelta(hours=3))
    marker(markers / "stale.json", timedelta(hours=30))
    marker(markers / "failed.json", timedelta(hours=1), result="failed")
    (markers / "garbled.json").write_text('{"result": "ok", "finished_at": ')  # a disk that filled mid-write
    marker(markers / "eastern.json", timedelta(hours=27), offset_hours=5)  # 27 h old, written at +05:00
    marker(markers / "ahead.json", timedelta(days=-30))  # a clock a month ahead
    marker(markers / "pruneless.json", timedelta(hours=2), prune_error="cannot remove: Permission denied")
    (markers / "locked.json").mkdir()  # there, but not a file it can read (root reads a 0000 file)
    hosts = {
        f"{name}-db": {"bridge_environment": name, "bridge_backup_status_file": str(markers / f"{name}.json")}
        for name in ("fresh", "stale", "failed", "missing", "garbled", "eastern", "ahead", "pruneless", "locked")
    }
    report = tmp_path / "report"
    result = playbook(inventory(tmp_path, hosts, bridge_backup_report_dir=str(report)), "backup_status")
    assert result.returncode != 0, result.stdout
    out = result.stdout
    assert "fresh-db: ok (finished" in out
    assert "stale-db: STALE (finished" in out and "30.0 h ago" in out
    assert "failed-db: FAILED (finished" in out and "pg_dump failed: disk full" in out
    assert "missing-db: MISSING" in out
    assert "garbled-db: UNREADABLE" in out
    assert "eastern-db: STALE" in out and "27.0 h ago" in out
    assert "ahead-db: FUTURE" in out
    assert "locked-db: UNREADABLE (" in out
    assert "pruneless-db: PRUNE_FAILED" in out and "prune failed: cannot remove: Permission denied" in out
    named = re.search(r"backups not ok on: ([^(]+) \(see", out)
    assert named and set(named.group(1).split(", ")) == {
        "stale-db", "failed-db", "missing-db", "garbled-db", "eastern-db", "ahead-db", "pruneless-db", "locked-db"}, out  # fmt: skip
    collected = {p.stem: json.loads(p.read_text()) for p in report.glob("*.json")}
    assert {k: v["state"] for k, v in collected.items()} == {
        "fresh-db": "ok", "stale-db": "STALE", "failed-db": "FAILED", "missing-db": "MISSING",
        "garbled-db": "UNREADABLE", "eastern-db": "STALE", "ahead-db": "FUTURE", "pruneless-db": "PRUNE_FAILED",
        "locked-db": "UNREADABLE"}  # fmt: skip
    assert collected["fresh-db"]["marker"]["path"] == "/srv/backups/fresh.dump"

    # all fresh: the playbook passes; a larger max age forgives the stale one
    only_fresh = playbook(inventory(tmp_path, {"fresh-db": hosts["fresh-db"], "stale-db": hosts["stale-db"]},
                                    bridge_backup_report_dir=str(report)),
                          "backup_status", "-e", "bridge_backup_max_age_hours=48")  # fmt: skip
    assert only_fresh.returncode == 0, only_fresh.stdout
    assert "every host's last backup is ok and younger than 48 h" in only_fresh.stdout


def test_a_host_that_runs_the_engine_without_the_tool_is_told_to_install_it(tmp_path):
    hosts = {"dev-db": {"bridge_environment": "dev", "bridge_run_on": "host",
                        "bridge_host_prefix": str(tmp_path / "opt")}}  # fmt: skip
    result = playbook(inventory(tmp_path, hosts), "setup")
    assert result.returncode != 0
    assert "bridge-db is not installed on dev-db under " + str(tmp_path / "opt") in result.stdout
    assert "run playbooks/install.yml for it first" in result.stdout


def test_an_unknown_place_for_the_engine_is_refused(tmp_path):
    hosts = {"dev-db": {"bridge_environment": "dev", "bridge_run_on": "bastion"}}
    result = playbook(inventory(tmp_path, hosts), "dev_migrate")
    assert result.returncode != 0
    # the role's argument spec refuses it before any task (the role's own assert backs it up)
    assert "value of bridge_run_on must be one of: controller, host, got: bastion" in result.stdout
    assert "Bring the schema to the requested state" not in result.stdout


def test_install_yml_skips_the_hosts_the_control_node_serves(tmp_path):
    hosts = {"dev-db": {"bridge_environment": "dev"}}
    result = playbook(inventory(tmp_path, hosts), "install")
    assert result.returncode == 0, result.stdout
    assert "skipping: [dev-db]" in result.stdout and "changed=0" in result.stdout


# A host over SSH that cannot be reached: loopback, a port nothing listens on (connection refused at once).
UNREACHABLE = {
    "ansible_connection": "ssh",
    "ansible_host": "127.0.0.1",
    "ansible_port": 9,
    "ansible_ssh_common_args": "-o ConnectTimeout=5 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    "bridge_run_on": "host",
}


def test_backup_status_overwrites_the_report_of_a_host_it_cannot_reach(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "gone-db.json").write_text(json.dumps({"host": "gone-db", "state": "ok"}))  # yesterday's verdict
    hosts = {"gone-db": {"bridge_environment": "gone", "bridge_host_prefix": "/opt/bridge-db", **UNREACHABLE}}
    result = playbook(inventory(tmp_path, hosts, bridge_backup_report_dir=str(report)), "backup_status")
    assert result.returncode != 0
    assert "gone-db: UNREACHABLE" in result.stdout, result.stdout
    assert json.loads((report / "gone-db.json").read_text())["state"] == "UNREACHABLE"


def test_a_prefix_with_a_tilde_is_refused(tmp_path):
    hosts = {"dev-db": {"bridge_environment": "dev", "bridge_run_on": "host", "bridge_host_prefix": "~/bd"}}
    result = playbook(inventory(tmp_path, hosts), "dev_migrate")
    assert result.returncode != 0
    assert "must be absolute paths for dev-db" in result.stdout, result.stdout


def test_an_unreachable_host_stops_the_canary_with_a_summary(tmp_path, admin_dsn):
    """The first host migrates, the second cannot be reached, the third is not touched, and the summary
    says so: an unreachable host fails no task, so the rollout checks reaching it."""
    from psycopg2.extensions import parse_dsn

    from conftest import HEAD, create_database, drop_database

    first, last = create_database(admin_dsn), create_database(admin_dsn)
    try:
        server = parse_dsn(admin_dsn)
        config = tmp_path / "environments.toml"
        lines = [f'[defaults]\nmigrations_dir = "{ROOT / "migrations"}"\nuser = "{server.get("user", "postgres")}"',
                 f'host = "{server.get("host", "127.0.0.1")}"\nport = {server.get("port", 5432)}',
                 "require_confirmation = true\nsingle_transaction = true\n"]  # fmt: skip
        for env, db in (("a", first.name), ("b", "unused"), ("c", last.name)):
            lines.append(f'[environments.{env}]\ndatabase = "{db}"\n')
        config.write_text("\n".join(lines))
        hosts = {
            "a-db": {"bridge_environment": "a"},
            "b-db": {"bridge_environment": "b", "bridge_host_prefix": "/opt/bridge-db", **UNREACHABLE},
            "c-db": {"bridge_environment": "c"},
        }
        result = playbook(inventory(tmp_path, hosts, bridge_config=str(config)), "prod_migrate",
                          "-e", "bridge_confirm=true", "-e", '{"bridge_serial": 1}')  # fmt: skip
        assert result.returncode != 0
        out = result.stdout
        assert f"a-db: head none -> {HEAD}" in out, out
        assert "b-db: FAILED: timed out waiting for" in out and "Connection refused" in out, out
        assert "c-db: not reached" in out, out
        assert "the rollout stopped and the hosts after this batch were not touched" in out
        assert first.query("SELECT max(version) FROM public.schema_migrations")[0][0] == HEAD
        assert last.query("SELECT to_regclass('public.schema_migrations')")[0][0] is None
    finally:
        drop_database(admin_dsn, first.name)
        drop_database(admin_dsn, last.name)
