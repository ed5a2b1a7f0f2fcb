"""The embedded dev database: `migrate` with nothing configured, db up/down/status, missing binaries."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from bridge_db import embedded
from bridge_db.config import load_config
from bridge_db.connection import resolve_target
from bridge_db.errors import PrerequisiteMissing

from conftest import CONFIG, HEAD, MIGRATIONS, run_cli


@pytest.fixture
def project(tmp_path):
    """A copy of the checkout's config and migrations with its own dev port, and its cluster torn down."""
    root = tmp_path / "checkout"
    root.mkdir()
    shutil.copytree(MIGRATIONS, root / "migrations")
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    (root / "environments.toml").write_text(CONFIG.read_text().replace("port = 54329", f"port = {55500 + worker}"))
    yield root
    cluster = resolve_target(load_config(root / "environments.toml"), "dev").embedded
    cluster.down()
    shutil.rmtree(cluster.base_dir, ignore_errors=True)


def test_migrate_with_nothing_configured_starts_the_cluster(project):
    out = run_cli("migrate", cwd=project, env={"PGHOST": "/nonexistent", "PGPORT": "1"})  # PG* must not leak in
    assert out.returncode == 0, out.stderr
    assert f"applied {HEAD} migration(s)" in out.stdout and "dev (embedded)" in out.stdout
    assert "PGHOST, PGPORT are set but not used: dev is the embedded dev database" in out.stderr

    status = json.loads(run_cli("db", "status", "--json", cwd=project).stdout)
    assert status["running"] and status["pid"]
    assert status["server_version"]
    socket_dir = status["socket_dir"]
    assert oct(os.stat(socket_dir).st_mode & 0o777) == "0o700"  # private socket, no TCP listener
    conf = (embedded.Path(status["data_dir"]) / "bridge_db.conf").read_text()
    assert "listen_addresses = ''" in conf and "pg_stat_statements" in conf

    out = run_cli("status", "--json", cwd=project)
    assert json.loads(out.stdout)["head"] == HEAD
    out = run_cli("db", "down", "--json", cwd=project)
    assert out.returncode == 0 and json.loads(out.stdout)["running"] is False
    out = run_cli("migrate", cwd=project)  # starts it again on demand
    assert out.returncode == 0 and "nothing to apply" in out.stdout


def test_dev_database_has_the_seed_extensions(project):
    assert run_cli("db", "up", cwd=project).returncode == 0
    target = resolve_target(load_config(project / "environments.toml"), "dev")
    import psycopg2

    conn = psycopg2.connect(**target.params)
    with conn.cursor() as cur:
        cur.execute("SELECT extname FROM pg_extension ORDER BY 1")
        names = [r[0] for r in cur.fetchall()]
        cur.execute("SHOW shared_preload_libraries")
        assert "pg_stat_statements" in cur.fetchone()[0]
        cur.execute("SELECT count(*) FROM pg_stat_statements")  # raises unless preloaded
        assert cur.fetchone()[0] > 0  # track = all: the statements above were recorded
    conn.close()
    assert {"uuid-ossp", "pg_stat_statements"} <= set(names)


def test_db_commands_refuse_a_non_embedded_environment(project):
    out = run_cli("db", "up", "--env", "staging", cwd=project)
    assert out.returncode == 2 and "not embedded" in out.stderr


def test_missing_server_binaries_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(embedded.BINDIR_ENV, raising=False)
    monkeypatch.setattr(embedded, "_glob", lambda pattern: [])
    monkeypatch.setattr(embedded.Path, "is_file", lambda self: False)
    with pytest.raises(PrerequisiteMissing) as failure:
        embedded.find_server_binaries()
    assert failure.value.exit_code == 7
    assert "apt-get install postgresql" in failure.value.next_step


def test_long_checkout_paths_get_a_short_socket_folder(tmp_path):
    deep = tmp_path / ("x" * 90)
    cluster = embedded.EmbeddedCluster(deep / ".devdb", port=54329)
    assert len(str(cluster.socket_dir / ".s.PGSQL.54329")) <= embedded.MAX_SOCKET_PATH


def test_stats_on_the_embedded_cluster_show_top_queries(project):
    assert run_cli("migrate", cwd=project).returncode == 0
    out = run_cli("stats", "--json", "--top", "3", cwd=project)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["notes"] == []
    assert 0 < len(report["queries"]) <= 3
    assert report["queries"][0]["mean_ms"] >= report["queries"][-1]["mean_ms"]
    assert {t["table"] for t in report["tables"]} >= {"workflow_executions", "metadata_stamps"}


def test_operations_work_on_the_embedded_dev_database(project):
    assert run_cli("migrate", cwd=project).returncode == 0
    out = run_cli("setup-extensions", "--json", cwd=project)
    assert out.returncode == 0 and json.loads(out.stdout)["not_preloaded"] == []  # preloaded by db up
    suffix = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    config = project / "environments.toml"
    config.write_text(
        config.read_text().replace(
            "allow_reset = true",
            f'allow_reset = true\napp_role = "emb_app_{suffix}"\nreadonly_role = "emb_ro_{suffix}"',
        )
    )
    out = run_cli("grant", "--json", cwd=project)
    assert out.returncode == 0 and json.loads(out.stdout)["changed"], out.stderr
    assert json.loads(run_cli("grant", "--json", cwd=project).stdout)["changed"] is False
    out = run_cli("backup", "--verify-restore", "--json", cwd=project)
    assert out.returncode == 0, out.stderr
    dump = json.loads(out.stdout)["path"]
    assert dump.startswith(str(project / "backups" / "dev"))
    out = run_cli("restore", "--file", dump, "--target-db", "drill_restore", "--json", cwd=project)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["row_counts_checked"] is True  # counts recorded by --verify-restore


def test_a_cluster_folder_that_does_not_exist_yet_stays_in_the_checkout(tmp_path):
    """Where the cluster lives must not depend on whether its parent folder exists yet."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    before = embedded.EmbeddedCluster.for_project(checkout, 55999, folder=".fleet/a")
    (checkout / ".fleet").mkdir()
    after = embedded.EmbeddedCluster.for_project(checkout, 55999, folder=".fleet/a")
    assert before.base_dir == after.base_dir
    reachable = os.geteuid() != 0 or embedded._reachable_by(checkout, embedded._pick_service_user())
    assert (after.base_dir == checkout / ".fleet" / "a") == reachable
