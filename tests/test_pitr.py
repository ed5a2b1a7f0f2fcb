"""Point-in-time recovery against real clusters with pgBackRest: rows written continuously, a production
migrate that drops a column, a restore into a scratch cluster to the run's restore point (the column and
every row committed before the run are there, the migration is not) and to a time after the run (the
rows written after it are there too); a broken archive makes `pitr status` red and a production migrate
warn or refuse before any DDL; restore points need a grant for a non-superuser migrator; archiving off
is said once."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from bridge_db import engine
from bridge_db.discovery import discover_migrations
from bridge_db.engine import MAX_RESTORE_POINT_NAME, Progress, restore_point_name

from conftest import make_target, run_cli

pytestmark = pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="pgbackrest is not installed")

# root runs the clusters and pgBackRest as postgres (PostgreSQL refuses root); anyone else as themselves
OS_USER = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
STANZA = "bridge_test"
PROBE = """CREATE TABLE IF NOT EXISTS pitr_probe (
    id          bigserial   PRIMARY KEY,
    written_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    note        text        NOT NULL DEFAULT 'written'
);
"""


def as_postgres(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    entry = pwd.getpwnam(OS_USER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"HOME": entry.pw_dir}
    who = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []} if os.geteuid() == 0 else {}
    result = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd="/", timeout=600, **who)
    assert not check or result.returncode == 0, result.stdout + result.stderr
    return result


class ArchivedCluster:
    """A cluster of this worker's own (port 58100 + 10 x worker), archiving into a pgBackRest repository
    under the same folder, with a stanza and a full backup, and a database `bridge`."""

    def __init__(self, base: Path, port: int) -> None:
        from bridge_db.embedded import EmbeddedCluster

        self.base, self.port = base, port
        self.cluster = EmbeddedCluster(base, port, service_user=OS_USER if os.geteuid() == 0 else None)
        self.repo = base / "repo"
        self.conf = base / "pgbackrest.conf"

    @property
    def socket(self) -> str:
        return str(self.cluster.socket_dir)

    def dsn(self, dbname: str = "bridge", user: str = "postgres") -> str:
        return f"host={self.socket} port={self.port} dbname={dbname} user={user}"

    def pgbackrest(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return as_postgres("pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args, check=check)

    def start(self) -> None:
        self.cluster.up(database="bridge", extensions=("uuid-ossp",))
        for folder in (self.repo, self.base / "log"):
            folder.mkdir(exist_ok=True)
            shutil.chown(folder, OS_USER, OS_USER)
        self.conf.write_text(
            f"[global]\nrepo1-path={self.repo}\nrepo1-retention-full=2\nlog-path={self.base / 'log'}\n"
            f"lock-path={self.base / 'run'}\nstart-fast=y\narchive-timeout=60\n\n"
            f"[{STANZA}]\npg1-path={self.cluster.data_dir}\npg1-port={self.port}\npg1-socket-path={self.socket}\n"
        )
        command = f"pgbackrest --config={self.conf} --stanza={STANZA} archive-push %p"
        self.sql("postgres", "ALTER SYSTEM SET archive_mode = on")
        self.sql("postgres", f"ALTER SYSTEM SET archive_command = '{command}'")
        self.cluster.down()
        self.cluster.up()
        self.pgbackrest("stanza-create")
        self.pgbackrest("--type=full", "backup")

    def sql(self, dbname: str, statement: str, params=None):
        conn = psycopg2.connect(self.dsn(dbname))
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def archive_all(self) -> None:
        """Switch to a new WAL segment and wait until the archiver has the completed one."""
        segment = self.sql("bridge", "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
        while True:
            row = self.sql("bridge", "SELECT last_archived_wal FROM pg_stat_archiver")[0]
            if row[0] is not None and row[0] >= segment:
                return
            time.sleep(0.2)

    def config(self, folder: Path, migrations: Path, **policy: object) -> Path:
        """environments.toml with a production-like environment `prod` on this cluster."""
        settings = {
            "host": self.socket, "port": self.port, "database": "bridge", "user": "postgres",
            "single_transaction": True, "require_confirmation": True, "backup_before_migrate": True,
            "backup_dir": str(folder / "backups"), "pitr_stanza": STANZA, "pitr_config": str(self.conf), **policy,
        }  # fmt: skip
        lines = [f'[defaults]\nmigrations_dir = "{migrations}"\n\n[environments.prod]']
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        path = folder / "environments.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


@contextmanager
def _archived_cluster(name: str, port_offset: int):
    """An archiving cluster in a folder of its own under /var/tmp, on this xdist worker's ports; stopped and
    removed afterwards."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = Path("/var/tmp") / f"bridge-pitr-{name}-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    shutil.chown(base, OS_USER, OS_USER)
    cluster = ArchivedCluster(base, 58100 + 10 * worker + port_offset)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cluster.down()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def archived():
    with _archived_cluster("test", 0) as cluster:
        yield cluster


def with_probe(migrations: Path) -> Path:
    """The baseline migrations plus 007 (the probe table the writer fills) and 008 (drops its column)."""
    (migrations / "007_create_pitr_probe.sql").write_text(PROBE)
    (migrations / "007_rollback_pitr_probe.sql").write_text("DROP TABLE IF EXISTS pitr_probe;\n")
    (migrations / "008_drop_pitr_probe_note.sql").write_text("ALTER TABLE pitr_probe DROP COLUMN note;\n")
    (migrations / "008_rollback_pitr_probe_note.sql").write_text(
        "ALTER TABLE pitr_probe ADD COLUMN note text NOT NULL DEFAULT 'written';\n"
    )
    return migrations


class Writer(threading.Thread):
    """Commits one row after another; `committed` holds the ids whose COMMIT returned."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.committed, self.stop, self.error = dsn, [], threading.Event(), None

    def run(self) -> None:
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    cur.execute("INSERT INTO pitr_probe DEFAULT VALUES RETURNING id")
                    self.committed.append(cur.fetchone()[0])
                    time.sleep(0.005)
        except Exception as exc:  # noqa: BLE001  # the test asserts there was none
            self.error = exc
        finally:
            conn.close()

    def wait_for(self, count: int) -> None:
        while len(self.committed) < count and self.error is None:
            time.sleep(0.05)


def reset_database(cluster: ArchivedCluster) -> None:
    cluster.sql("postgres", "DROP DATABASE IF EXISTS bridge WITH (FORCE)")
    cluster.sql("postgres", "CREATE DATABASE bridge")
    cluster.sql("bridge", 'CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')


def scratch_query(result: dict, statement: str):
    conn = psycopg2.connect(host=result["socket_dir"], port=result["port"], dbname=result["database"], user="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall()
    finally:
        conn.close()


def stop_scratch(result: dict) -> None:
    bindir = Path(result["stop_command"].split(" -D ", 1)[0]).parent
    as_postgres(str(bindir / "pg_ctl"), "-D", result["data_dir"], "-m", "fast", "-w", "stop")
    shutil.rmtree(Path(result["data_dir"]).parent, ignore_errors=True)


def test_restore_to_the_runs_restore_point_then_to_a_time_after_it(archived, migrations_copy, tmp_path):
    reset_database(archived)
    migrations = with_probe(migrations_copy)
    engine.migrate(make_target(archived.dsn()), discover_migrations(migrations), to_version=7)
    config = archived.config(tmp_path, migrations)
    writer = Writer(archived.dsn())
    writer.start()
    try:
        writer.wait_for(100)
        before_run = list(writer.committed)
        run = run_cli("migrate", "--config", str(config), "--env", "prod", "--yes", "--json", timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
        writer.wait_for(len(writer.committed) + 100)
    finally:
        writer.stop.set()
        writer.join()
    assert writer.error is None, writer.error
    result = json.loads(run.stdout)
    point = result["restore_point"]
    assert point["name"] == f"bridge-{result['run_id']}-before-007" and point["lsn"]
    logged = archived.sql("bridge", "SELECT DISTINCT details->'restore_point' FROM schema_migrations_log "
                                    "WHERE run_id = %s", (result["run_id"],))  # fmt: skip
    assert logged == [(point,)]
    after_run = list(writer.committed)
    assert len(after_run) > len(before_run) + 50
    # a time after every row the writer committed, then one commit after it (recovery stops there)
    moment = archived.sql("bridge", "SELECT clock_timestamp()::text")[0][0]
    late = archived.sql("bridge", "INSERT INTO pitr_probe DEFAULT VALUES RETURNING id")[0][0]
    archived.archive_all()

    status = run_cli("pitr", "status", "--config", str(config), "--env", "prod", "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["ok"] and report["last_full"] and report["last_archived_wal"]
    assert report["restore_points"][0]["name"] == point["name"]
    assert (
        json.loads(run_cli("status", "--config", str(config), "--env", "prod", "--json").stdout)["last_restore_point"][
            "name"
        ]
        == point["name"]
    )

    # to the restore point: the column and every row committed before the run; the migration not applied
    drill = run_cli(
        "pitr", "restore", "--to", point["name"], "--config", str(config), "--env", "prod",
        "--port", str(archived.port + 1), "--keep", "--json", timeout=600,
    )  # fmt: skip
    assert drill.returncode == 0, drill.stdout + drill.stderr
    restored = json.loads(drill.stdout)
    try:
        assert restored["head"] == 7 and restored["target_type"] == "name"
        columns = {r[0] for r in scratch_query(restored, "SELECT attname FROM pg_attribute WHERE attnum > 0 "
                                                         "AND attrelid = 'pitr_probe'::regclass")}  # fmt: skip
        assert "note" in columns
        ids = {r[0] for r in scratch_query(restored, "SELECT id FROM pitr_probe")}
        assert set(before_run) <= ids
        assert restored["row_counts"]["pitr_probe"] == len(ids) < len(after_run)
        assert scratch_query(restored, "SELECT max(version) FROM schema_migrations") == [(7,)]
    finally:
        stop_scratch(restored)

    # to a time after the run: the rows written after it too, and the migration applied
    later = run_cli(
        "pitr", "restore", "--to", moment, "--config", str(config), "--env", "prod",
        "--port", str(archived.port + 2), "--keep", "--json", timeout=600,
    )  # fmt: skip
    assert later.returncode == 0, later.stdout + later.stderr
    restored = json.loads(later.stdout)
    try:
        assert restored["head"] == 8 and restored["target_type"] == "time"
        ids = {r[0] for r in scratch_query(restored, "SELECT id FROM pitr_probe")}
        assert set(after_run) <= ids and late not in ids
        columns = {r[0] for r in scratch_query(restored, "SELECT attname FROM pg_attribute WHERE attnum > 0 "
                                                         "AND attrelid = 'pitr_probe'::regclass")}  # fmt: skip
        assert "note" not in columns
    finally:
        stop_scratch(restored)
    # the drill changed nothing on the live cluster
    assert archived.sql("bridge", "SELECT max(version) FROM schema_migrations") == [(8,)]


def test_a_drill_without_keep_reports_and_removes_its_cluster(archived, migrations_copy, tmp_path):
    reset_database(archived)
    migrations = with_probe(migrations_copy)
    engine.migrate(make_target(archived.dsn()), discover_migrations(migrations), to_version=7)
    archived.sql("bridge", "INSERT INTO pitr_probe DEFAULT VALUES")
    lsn = archived.sql("bridge", "SELECT pg_current_wal_insert_lsn()::text")[0][0]
    archived.sql("bridge", "INSERT INTO pitr_probe DEFAULT VALUES")
    archived.archive_all()
    config = archived.config(tmp_path, migrations)
    scratch = archived.base / "scratch"  # reachable by the cluster's OS user (tmp_path is root's alone)
    out = run_cli("pitr", "restore", "--to", lsn, "--config", str(config), "--env", "prod", "--scratch-dir",
                  str(scratch), "--port", str(archived.port + 3), timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is at 007" in out.stdout and "pitr_probe" in out.stdout
    assert not scratch.exists() or not any(scratch.iterdir())


@pytest.mark.parametrize("to", ["2026-11-29 14:03:00", "x" * 64])
def test_a_bad_target_is_a_usage_error_and_touches_nothing(archived, migrations_copy, tmp_path, to):
    config = archived.config(tmp_path, migrations_copy)
    out = run_cli("pitr", "restore", "--to", to, "--config", str(config), "--env", "prod")
    assert out.returncode == 2, out.stdout + out.stderr
    assert "next:" in out.stderr


def test_a_target_before_every_backup_is_exit_8(archived, migrations_copy, tmp_path):
    config = archived.config(tmp_path, migrations_copy)
    out = run_cli("pitr", "restore", "--to", "2000-01-01 00:00:00+00:00", "--config", str(config), "--env", "prod")
    assert out.returncode == 8, out.stdout + out.stderr
    assert "no backup" in out.stderr


def test_replacing_the_live_cluster_is_refused_while_it_runs(archived, migrations_copy, tmp_path):
    config = archived.config(tmp_path, migrations_copy)
    out = run_cli("pitr", "restore", "--to", "0/1000000", "--replace-live", "--yes", "--config", str(config),
                  "--env", "prod")  # fmt: skip
    assert out.returncode == 9, out.stdout + out.stderr
    assert "is running" in out.stderr and "stop the server" in out.stderr


@pytest.mark.parametrize("policy", ["warn", "refuse"])
def test_a_broken_archive_is_red_and_a_production_migrate_warns_or_refuses(archived, migrations_copy, tmp_path,
                                                                           policy):  # fmt: skip
    reset_database(archived)
    migrations = with_probe(migrations_copy)
    engine.migrate(make_target(archived.dsn()), discover_migrations(migrations), to_version=6)
    config = archived.config(tmp_path, migrations, archive_failure=policy)
    folders = [archived.repo / "archive", *(p for p in (archived.repo / "archive").rglob("*") if p.is_dir())]
    for folder in folders:
        os.chmod(folder, 0o500)  # the repository refuses new WAL: archive-push fails
    try:
        archived.sql("bridge", "CREATE TABLE filler AS SELECT 1 AS x; SELECT pg_switch_wal()")
        while True:
            failing = archived.sql("bridge", "SELECT last_failed_time > coalesce(last_archived_time, '-infinity') "
                                             "FROM pg_stat_archiver")[0][0]  # fmt: skip
            if failing:
                break
            time.sleep(0.2)
        status = run_cli("pitr", "status", "--config", str(config), "--env", "prod", "--json")
        assert status.returncode == 8, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert not report["ok"] and "failing" in report["problems"][0]
        out = run_cli("migrate", "--config", str(config), "--env", "prod", "--yes")
        if policy == "refuse":
            assert out.returncode == 9, out.stdout + out.stderr
            assert "archive is failing" in out.stderr and "archive_failure = refuse" in out.stderr
            assert archived.sql("bridge", "SELECT max(version) FROM schema_migrations") == [(6,)]
            assert not list((tmp_path / "backups").glob("*")) if (tmp_path / "backups").exists() else True
        else:
            assert out.returncode == 0, out.stdout + out.stderr
            assert "warning: the WAL archive is failing" in out.stderr
            assert archived.sql("bridge", "SELECT max(version) FROM schema_migrations") == [(8,)]
            assert archived.sql("bridge", "SELECT count(*) FROM schema_migrations_log WHERE details ? 'restore_point'"
                                ) == [(0,)]  # fmt: skip
    finally:
        for folder in folders:
            os.chmod(folder, 0o750)
        archived.archive_all()  # the archiver catches up: the cluster is healthy for the next test


class Warnings(Progress):
    def __init__(self) -> None:
        self.said: list[str] = []

    def warning(self, message: str) -> None:
        self.said.append(message)


def test_a_migrator_without_the_grant_is_told_the_grant(archived, migrations_copy, tmp_path):
    reset_database(archived)
    archived.sql("postgres", "DROP ROLE IF EXISTS pitr_migrator")
    archived.sql("postgres", "CREATE ROLE pitr_migrator LOGIN")
    archived.sql("postgres", "ALTER DATABASE bridge OWNER TO pitr_migrator")
    archived.sql("bridge", "ALTER SCHEMA public OWNER TO pitr_migrator")
    migrations = discover_migrations(migrations_copy)
    policy = {"backup_before_migrate": True, "single_transaction": True}
    target = make_target(archived.dsn(user="pitr_migrator"), **policy)
    progress = Warnings()
    result = engine.migrate(target, migrations, to_version=3, progress=progress, backup_dir=tmp_path)
    assert result.restore_point is None and result.head_after == 3
    assert len(progress.said) == 1 and "may not create a restore point" in progress.said[0]
    assert (
        "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal() TO pitr_migrator"
        in (progress.said[0])
    )
    # in the migrated database: functions, and their grants, are per database
    archived.sql("bridge", "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal() TO pitr_migrator")
    result = engine.migrate(target, migrations, progress=Warnings(), backup_dir=tmp_path)
    assert result.restore_point and result.restore_point["name"].endswith("-before-003")


def test_without_archiving_a_production_run_says_so_once_and_relies_on_its_backup(db, migrations, tmp_path):
    if db.query("SHOW archive_mode")[0][0] != "off":
        pytest.skip("the shared test server archives")
    progress = Warnings()
    target = db.target(backup_before_migrate=True, single_transaction=True)
    result = engine.migrate(target, migrations, progress=progress, backup_dir=tmp_path)
    assert result.backup and result.restore_point is None
    assert len(progress.said) == 1 and "archive_mode = off" in progress.said[0]
    assert result.as_dict()["warnings"] == progress.said
    assert db.query("SELECT count(*) FROM schema_migrations_log WHERE details ? 'restore_point'") == [(0,)]


def test_restore_points_false_takes_none(db, migrations, tmp_path):
    progress = Warnings()
    target = db.target(backup_before_migrate=True, restore_points=False)
    result = engine.migrate(target, migrations, progress=progress, backup_dir=tmp_path)
    assert result.restore_point is None and progress.said == []


def test_restore_point_names_fit_postgresql_s_limit():
    longest = restore_point_name(str(uuid.uuid4()), 2**31 - 1)
    assert len(longest.encode()) <= MAX_RESTORE_POINT_NAME
    assert restore_point_name("r", None) == "bridge-r-before-000"


@pytest.fixture
def own_archived():
    """A cluster of one test's own, for what changes the cluster itself (the live replacement)."""
    with _archived_cluster("live", 5) as cluster:
        yield cluster


def test_the_live_cluster_is_replaced_only_confirmed_and_stopped(own_archived, migrations_copy, tmp_path):
    cluster = own_archived
    migrations = with_probe(migrations_copy)
    engine.migrate(make_target(cluster.dsn()), discover_migrations(migrations), to_version=7)
    before = cluster.sql("bridge", "INSERT INTO pitr_probe SELECT FROM generate_series(1, 10) RETURNING id")
    cluster.sql("bridge", "SELECT pg_create_restore_point('before_the_mistake')")
    after = cluster.sql("bridge", "INSERT INTO pitr_probe SELECT FROM generate_series(1, 10) RETURNING id")
    cluster.archive_all()
    config = cluster.config(tmp_path, migrations)
    args = ("pitr", "restore", "--to", "before_the_mistake", "--replace-live", "--config", str(config), "--env", "prod")
    cluster.cluster.down()
    control = (cluster.cluster.data_dir / "global" / "pg_control").read_bytes()
    refused = run_cli(*args)  # no terminal, no --yes
    assert refused.returncode == 9, refused.stdout + refused.stderr
    assert "not confirmed" in refused.stderr
    assert (cluster.cluster.data_dir / "global" / "pg_control").read_bytes() == control  # nothing changed
    replaced = run_cli(*args, "--yes", "--json", timeout=600)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert json.loads(replaced.stdout)["live"] is True
    cluster.cluster.up()  # replays to the restore point and promotes
    while cluster.sql("postgres", "SELECT pg_is_in_recovery()")[0][0]:
        time.sleep(0.2)
    ids = {r[0] for r in cluster.sql("bridge", "SELECT id FROM pitr_probe")}
    assert {r[0] for r in before} <= ids and not {r[0] for r in after} & ids


def test_restore_pitr_yml_runs_the_drill(archived, migrations_copy, tmp_path):
    import sys

    reset_database(archived)
    migrations = with_probe(migrations_copy)
    engine.migrate(make_target(archived.dsn()), discover_migrations(migrations), to_version=7)
    lsn = archived.sql("bridge", "SELECT pg_current_wal_insert_lsn()::text")[0][0]
    archived.sql("bridge", "INSERT INTO pitr_probe DEFAULT VALUES")
    archived.archive_all()
    config = archived.config(tmp_path, migrations)
    root = Path(__file__).resolve().parents[1]
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        f"[bridge_db]\nlocalhost ansible_connection=local bridge_config={config} bridge_environment=prod "
        f"bridge_project_dir={root}\n"
    )
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_DB_", "ANSIBLE_"))}
    out = subprocess.run(
        [str(bindir / "ansible-playbook"), "-i", str(inventory), str(root / "playbooks" / "restore_pitr.yml"), "-e",
         json.dumps({"bridge_pitr_to": lsn, "bridge_pitr_port": archived.port + 4,
                     "bridge_pitr_cli": str(bindir / "bridge-db"), "ansible_python_interpreter": sys.executable})],
        capture_output=True, text=True, timeout=600, cwd=root, env=env | {"ANSIBLE_CONFIG": str(root / "ansible.cfg")},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "lsn " + lsn in out.stdout and "head 7" in out.stdout


def test_a_production_rollback_takes_its_restore_point_too(archived, migrations_copy, tmp_path):
    reset_database(archived)
    migrations = discover_migrations(with_probe(migrations_copy))
    engine.migrate(make_target(archived.dsn()), migrations, to_version=7)
    target = make_target(archived.dsn(), backup_before_migrate=True, single_transaction=True)
    result = engine.rollback(target, migrations, steps=1, backup_dir=tmp_path)
    assert result.head_after == 6 and result.restore_point["name"] == f"bridge-{result.run_id}-before-007"
    logged = archived.sql("bridge", "SELECT action, details->'restore_point'->>'lsn' FROM schema_migrations_log "
                                    "WHERE run_id = %s", (result.run_id,))  # fmt: skip
    assert logged == [("rollback", result.restore_point["lsn"])]
