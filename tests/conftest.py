"""Test fixtures: a real PostgreSQL server and a fresh database for every test.

The server is, in order: $BRIDGE_TEST_DSN (an admin connection string that may CREATE DATABASE), the
local server (libpq defaults, then 127.0.0.1:5432 as postgres), else an embedded cluster started for
the session under a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
from psycopg2 import sql

from bridge_db.config import parse_config
from bridge_db.connection import Target, resolve_target
from bridge_db.discovery import discover_migrations

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = ROOT / "migrations"
CONFIG = ROOT / "environments.toml"
BASELINE_HEAD = 6  # the seed's six tables; migrations_copy holds these and nothing later
SHIPPED = [m.version for m in discover_migrations(MIGRATIONS)]  # every version this project ships
HEAD = SHIPPED[-1]


def pytest_addoption(parser):
    parser.addoption(
        "--pg",
        default="",
        help="PostgreSQL majors for tests/test_compat.py: 'all' or e.g. '13,16,18' (default: none, skipped)",
    )


def pytest_configure(config):
    from bridge_db.pgbuilds import SUPPORTED_MAJORS

    wanted = config.getoption("--pg").strip()
    if wanted == "all":
        config.pg_majors = list(SUPPORTED_MAJORS)
    else:
        try:
            config.pg_majors = [int(m) for m in wanted.split(",") if m.strip()]
        except ValueError:
            raise pytest.UsageError(f"--pg takes 'all' or majors such as 13,16,18, not {wanted!r}") from None
        unknown = set(config.pg_majors) - set(SUPPORTED_MAJORS)
        if unknown:
            raise pytest.UsageError(f"--pg: unsupported major(s) {sorted(unknown)}; supported: {SUPPORTED_MAJORS}")


def _try_admin(dsn: str) -> str | None:
    try:
        conn = psycopg2.connect(dsn, connect_timeout=3)
    except psycopg2.OperationalError:
        return None
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
            ok = cur.fetchone()[0]
    finally:
        conn.close()
    return dsn if ok else None


@pytest.fixture(scope="session")
def admin_dsn(tmp_path_factory) -> str:
    explicit = os.environ.get("BRIDGE_TEST_DSN")
    if explicit:
        if not _try_admin(explicit):
            pytest.exit("BRIDGE_TEST_DSN is set but cannot connect with CREATEDB rights", returncode=3)
        yield explicit
        return
    for candidate in ("dbname=postgres", "host=127.0.0.1 port=5432 dbname=postgres user=postgres"):
        found = _try_admin(candidate)
        if found:
            yield found
            return
    from bridge_db.embedded import EmbeddedCluster

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    base = tmp_path_factory.mktemp("pgserver")
    os.chmod(base.parent, 0o755)
    cluster = EmbeddedCluster(base, port=55400 + int(worker.removeprefix("gw") or 0))
    cluster.up()
    params = cluster.connection_params()
    yield f"host={params['host']} port={params['port']} user={params['user']} dbname=postgres"
    cluster.down()


def dsn_for(admin: str, dbname: str) -> str:
    params = psycopg2.extensions.parse_dsn(admin)
    params["dbname"] = dbname
    return psycopg2.extensions.make_dsn(**params)


@dataclass
class Database:
    """One throw-away database on the test server."""

    name: str
    dsn: str
    admin_dsn: str

    def connect(self):
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        return conn

    def query(self, statement: str, params=None) -> list[tuple]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def target(self, **policy) -> Target:
        return make_target(self.dsn, **policy)

    def psql(self, *args: str, stdin: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Plain psql, as the seed runs it."""
        return subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.dsn, *args],
            input=stdin,
            capture_output=True,
            check=check,
            cwd=ROOT,
        )


def create_database(admin: str, with_extensions: tuple[str, ...] = ("uuid-ossp",)) -> Database:
    name = f"bridge_test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    finally:
        conn.close()
    db = Database(name, dsn_for(admin, name), admin)
    for ext in with_extensions:
        db.query(f'CREATE EXTENSION IF NOT EXISTS "{ext}"')
    return db


def drop_database(admin: str, name: str) -> None:
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


@pytest.fixture
def db(admin_dsn):
    database = create_database(admin_dsn)
    yield database
    drop_database(admin_dsn, database.name)


@pytest.fixture
def db_factory(admin_dsn):
    """More throw-away databases for one test (uuid-ossp created), all dropped afterwards."""
    made: list[Database] = []

    def make() -> Database:
        made.append(create_database(admin_dsn))
        return made[-1]

    yield make
    for database in made:
        drop_database(admin_dsn, database.name)


@pytest.fixture
def bare_db(admin_dsn):
    """A database without the uuid-ossp extension."""
    database = create_database(admin_dsn, with_extensions=())
    yield database
    drop_database(admin_dsn, database.name)


def make_target(dsn: str, env: str = "test", **policy) -> Target:
    """A target whose environment is the database `dsn` names: its own policy applies, as for an
    environment's own database (a DSN naming another database would make destructive verbs ask)."""
    params = psycopg2.extensions.parse_dsn(dsn)
    own: dict[str, object] = {"database": params.get("dbname", "unused")}
    own.update({key: params[key] for key in ("host", "user") if key in params})
    if "port" in params:
        own["port"] = int(params["port"])
    config = parse_config({"environments": {env: {**own, **policy}}}, CONFIG)
    return resolve_target(config, env, dsn)


@pytest.fixture
def migrations():
    return discover_migrations(MIGRATIONS)


@pytest.fixture
def migrations_copy(tmp_path) -> Path:
    """A private copy of the six baseline pairs (001-006, the seed's tables) that a test may edit,
    break or extend: tests add their own 007, 008, ... without depending on what ships after 006."""
    folder = tmp_path / "migrations"
    folder.mkdir()
    for path in MIGRATIONS.iterdir():
        if path.name == "README.md" or (path.name[:3].isdigit() and int(path.name[:3]) <= BASELINE_HEAD):
            shutil.copy2(path, folder / path.name)
    return folder


def run_cli(
    *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """The bridge-db console script, as cron or Ansible would run it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bridge_db", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=timeout,
    )


def _own_cluster(tmp_path_factory, name: str, offset: int, preload: bool):
    """A PostgreSQL cluster of this test session whose shared_preload_libraries is known: with
    pg_stat_statements (as the embedded dev cluster configures it) or, through ALTER SYSTEM, without.
    Tests of the preload then take one path whatever the shared test server is configured with."""
    from bridge_db.embedded import EmbeddedCluster

    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    cluster = EmbeddedCluster.for_project(tmp_path_factory.mktemp(name), port=55600 + 2 * worker + offset)
    cluster.up()
    admin = psycopg2.extensions.make_dsn(**cluster.connection_params(), dbname="postgres")
    if not preload:
        cluster.down()
        # read after the embedded cluster's own bridge_db.conf, so it wins (ALTER SYSTEM would quote '')
        with open(cluster.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as conf:
            conf.write("shared_preload_libraries = ''\n")
        cluster.up()
    setting = Database("postgres", admin, admin).query("SHOW shared_preload_libraries")[0][0]
    assert ("pg_stat_statements" in setting) == preload, setting
    try:
        yield admin
    finally:
        cluster.down()
        shutil.rmtree(cluster.base_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def preloading_server(tmp_path_factory):
    """Admin DSN of an own cluster that preloads pg_stat_statements."""
    yield from _own_cluster(tmp_path_factory, "preloading", 0, preload=True)


@pytest.fixture(scope="session")
def plain_server(tmp_path_factory):
    """Admin DSN of an own cluster that preloads nothing."""
    yield from _own_cluster(tmp_path_factory, "plain", 1, preload=False)


def fake_backup(folder: Path, database: str, when, environment: str = "test", **manifest_overrides) -> Path:
    """A backup file with a trusted manifest, as `backup` writes them, without running pg_dump: for
    retention and manifest tests. `manifest_overrides` replace manifest fields (hostile values too)."""
    import json

    from bridge_db import backup

    name = f"{database}-{when.strftime(backup.STAMP)}.dump"
    path = folder / name
    path.write_bytes(b"fake dump " + name.encode())
    manifest = backup.BackupManifest(
        file=name,
        environment=environment,
        database=database,
        format="custom",
        server_version="15",
        pg_dump_version="15",
        migration_head=6,
        size_bytes=path.stat().st_size,
        sha256="0" * 64,
        started_at=when.isoformat(),
        finished_at=when.isoformat(),
        duration_s=1.0,
        verification={"listed": True, "restored": None},
    )
    data = {**manifest.__dict__, **manifest_overrides}
    path.with_name(name + backup.MANIFEST_SUFFIX).write_text(json.dumps(data))
    return path
