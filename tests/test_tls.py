"""TLS and passwords against a real server: a cluster of this session that listens on 127.0.0.1 with
`ssl = on`, a CA and server certificate generated here, `hostssl ... scram-sha-256` only, and a
non-superuser migrator with a password. Every command runs as cron or Ansible would run it (the
console script, a fresh HOME), with the password from a 0600 .pgpass or from PGPASSWORD."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest

from bridge_db.config import parse_config
from bridge_db.embedded import EmbeddedCluster

from conftest import HEAD, MIGRATIONS, ROOT

SECRET = "tls-Secret-7f3c9"  # the migrator's password: must never be seen anywhere but .pgpass
DATABASE = "bridge_tls"
MIGRATOR = "bridge_tls_migrator"
PORT_BASE = 56600  # this slice's ports: 56600-56699


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=folder,
    )  # fmt: skip


def _make_certificates(folder: Path) -> None:
    """ca.crt (the right CA), other-ca.crt (a CA that signed nothing here), and server.crt for
    localhost and 127.0.0.1, signed by ca."""
    folder.mkdir(parents=True, exist_ok=True)
    _make_ca(folder, "ca")
    _make_ca(folder, "other-ca")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr", cwd=folder,
    )  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.crt", cwd=folder,
    )  # fmt: skip


class _TcpCluster(EmbeddedCluster):
    """The embedded cluster, listening on 127.0.0.1 with scram-sha-256 over TCP only (and, with
    `certs`, TLS only); the superuser keeps its private socket for the fixture's own setup."""

    def __init__(self, base_dir: Path, port: int, certs: Path | None) -> None:
        super().__init__(base_dir, port)
        self.certs = certs

    def _write_runtime_conf(self) -> None:
        super()._write_runtime_conf()
        conf = self.data_dir / "bridge_db.conf"
        text = conf.read_text().replace("listen_addresses = ''", "listen_addresses = '127.0.0.1'")
        text += "password_encryption = 'scram-sha-256'\n"
        if self.certs is not None:
            for name in ("server.crt", "server.key"):
                shutil.copy(self.certs / name, self.data_dir / name)
                os.chmod(self.data_dir / name, 0o600)
                self._give_to_service_user(self.data_dir / name)
            text += "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
        conf.write_text(text)
        tcp = "hostssl" if self.certs is not None else "host"
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(f"local all postgres trust\n{tcp} all all 127.0.0.1/32 scram-sha-256\n")
        self._give_to_service_user(hba)


def _worker() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def _start(base: Path, port: int, certs: Path | None):
    # where the unprivileged server user can reach it (root's pytest folders are 0700)
    where = EmbeddedCluster.for_project(base, port, folder="cluster").base_dir
    cluster = _TcpCluster(where, port, certs)
    cluster.up()
    admin = psycopg2.connect(**cluster.connection_params(), dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"CREATE ROLE {MIGRATOR} LOGIN CREATEDB PASSWORD %s", (SECRET,))
        cur.execute(f"CREATE DATABASE {DATABASE} OWNER {MIGRATOR}")
    admin.close()
    return cluster


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory):
    """(port, certificate folder) of a TLS-only, scram-only cluster of this session."""
    base = tmp_path_factory.mktemp("tls")
    certs = base / "certs"
    _make_certificates(certs)
    port = PORT_BASE + 2 * _worker()
    cluster = _start(base, port, certs)
    try:
        yield port, certs
    finally:
        cluster.down()
        shutil.rmtree(cluster.base_dir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def plain_tcp_server(tmp_path_factory):
    """Port of a cluster of this session that offers no TLS at all (scram over plain TCP)."""
    base = tmp_path_factory.mktemp("notls")
    cluster = _start(base, PORT_BASE + 2 * _worker() + 1, None)
    try:
        yield cluster.port
    finally:
        cluster.down()
        shutil.rmtree(cluster.base_dir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def project(tls_server, tmp_path):
    """A project folder: environments.toml with verify-full and a *relative* sslrootcert, the CA beside
    it, a 0600 .pgpass, and a HOME of its own (no ~/.postgresql/root.crt, no ~/.pgpass)."""
    port, certs = tls_server
    (tmp_path / "tls").mkdir()
    shutil.copy(certs / "ca.crt", tmp_path / "tls" / "ca.crt")
    shutil.copy(certs / "other-ca.crt", tmp_path / "tls" / "other-ca.crt")
    (tmp_path / "home").mkdir()
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"localhost:{port}:*:{MIGRATOR}:{SECRET}\n")
    os.chmod(pgpass, 0o600)
    _write_config(tmp_path, port)
    # the cleanup of the database between tests: back to an empty schema
    _reset_database(port, certs)
    return tmp_path


def _write_config(folder: Path, port: int, **overrides: str) -> Path:
    env = {
        "host": "localhost",
        "port": port,
        "database": DATABASE,
        "user": MIGRATOR,
        "sslmode": "verify-full",
        "sslrootcert": "tls/ca.crt",
        **overrides,
    }
    lines = [
        "[defaults]",
        f'migrations_dir = "{MIGRATIONS}"',
        'admin_user = ""',
        'extensions = ["uuid-ossp"]',
        'log_dir = "logs"',
        "",
        "[environments.prod]",
    ]
    for key, value in env.items():
        lines.append(f"{key} = {value}" if isinstance(value, int) else f'{key} = "{value}"')
    path = folder / "environments.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _reset_database(port: int, certs: Path) -> None:
    conn = psycopg2.connect(
        host="localhost", port=port, dbname=DATABASE, user=MIGRATOR, password=SECRET,
        sslmode="verify-full", sslrootcert=str(certs / "ca.crt"),
    )  # fmt: skip
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        cur.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')  # trusted: the owner may create it
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (DATABASE + "_%",))
        for (name,) in cur.fetchall():
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    conn.close()


def _env(project: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_DB_", "PG")) and k != "DATABASE_URL"}
    env.update({"HOME": str(project / "home"), "PGPASSFILE": str(project / "pgpass"), **extra})
    return env


def bridge(project: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    """The console script with the project's config, run from another folder (as cron does)."""
    return subprocess.run(
        [sys.executable, "-m", "bridge_db", *args, "--config", str(project / "environments.toml"), "--env", "prod"],
        capture_output=True,
        text=True,
        env=env if env is not None else _env(project),
        cwd=cwd or ROOT,
        timeout=180,
    )


def _no_secret_in(project: Path, *outputs: str) -> None:
    for text in outputs:
        assert SECRET not in text
    for path in project.rglob("*"):
        if path.is_file() and path.name != "pgpass" and path.suffix not in (".dump", ".crt"):
            assert SECRET.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------------------------------------- config


def test_ssl_file_keys_are_connection_keys_resolved_against_the_config_folder(tmp_path):
    config = parse_config(
        {
            "environments": {
                "prod": {
                    "database": "d",
                    "sslrootcert": "tls/ca.crt",
                    "sslcert": "/etc/bridge/client.crt",
                    "sslkey": "~/client.key",
                },
                "sys": {"database": "d", "sslrootcert": "system"},
            }
        },
        tmp_path / "environments.toml",
    )
    connection = config.environment("prod").connection
    assert connection["sslrootcert"] == str(tmp_path / "tls" / "ca.crt")
    assert connection["sslcert"] == "/etc/bridge/client.crt"
    assert connection["sslkey"] == str(Path("~/client.key").expanduser())
    assert config.environment("sys").connection["sslrootcert"] == "system"  # libpq's word, not a path


@pytest.mark.parametrize("value", [5, "", True, ["a"]])
def test_ssl_file_keys_are_type_checked(tmp_path, value):
    from bridge_db.errors import UsageError

    with pytest.raises(UsageError, match="sslrootcert must be a non-empty string"):
        parse_config({"environments": {"prod": {"database": "d", "sslrootcert": value}}}, tmp_path / "e.toml")


def test_ssl_files_reach_pg_dump_through_its_environment_not_argv(tmp_path):
    from bridge_db.connection import libpq_environment, resolve_target

    config = parse_config(
        {"environments": {"prod": {"database": "d", "host": "h", "sslmode": "verify-full", "sslrootcert": "ca.crt",
                                   "sslcert": "c.crt", "sslkey": "c.key"}}},
        tmp_path / "environments.toml",
    )  # fmt: skip
    env = libpq_environment(resolve_target(config, "prod"))
    assert env["PGSSLROOTCERT"] == str(tmp_path / "ca.crt")
    assert env["PGSSLCERT"] == str(tmp_path / "c.crt") and env["PGSSLKEY"] == str(tmp_path / "c.key")
    assert env["PGSSLMODE"] == "verify-full"


# ------------------------------------------------------------------------------------ working over TLS


def test_migrate_status_verify_over_verify_full_with_pgpass(project):
    assert oct(os.stat(project / "pgpass").st_mode & 0o777) == "0o600"
    migrate = bridge(project, "migrate", "--yes", "--json")
    assert migrate.returncode == 0, migrate.stderr
    status = bridge(project, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["head"] == HEAD and json.loads(status.stdout)["pending"] == 0
    verify = bridge(project, "verify")
    assert verify.returncode == 0, verify.stderr + verify.stdout
    conn_ssl = _server_says_ssl(project)
    assert conn_ssl is True
    _no_secret_in(project, migrate.stdout, migrate.stderr, status.stdout, status.stderr, verify.stdout, verify.stderr)
    assert any((project / "logs").iterdir()), "a changing command writes a run log"


def _server_says_ssl(project: Path) -> bool:
    """pg_stat_ssl of a session bridge-db itself opens (through `stats`, a read-only verb)."""
    from bridge_db.config import load_config
    from bridge_db.connection import cursor_for, resolve_target

    old = dict(os.environ)
    os.environ["PGPASSFILE"] = str(project / "pgpass")
    try:
        target = resolve_target(load_config(project / "environments.toml"), "prod")
        with cursor_for(target) as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            return cur.fetchone()[0]
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_migrate_with_pgpassword_and_no_pgpass(project):
    env = _env(project, PGPASSWORD=SECRET, PGPASSFILE=str(project / "absent"))
    result = bridge(project, "migrate", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    _no_secret_in(project, result.stdout, result.stderr)


@pytest.mark.parametrize("source", ["pgpass", "PGPASSWORD"])
def test_backup_verify_restore_and_restore_over_tls_never_show_the_password(project, source):
    env = _env(project) if source == "pgpass" else _env(project, PGPASSWORD=SECRET, PGPASSFILE="/nonexistent")
    assert bridge(project, "migrate", "--yes", env=env).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge_db", "backup", "--verify-restore", "--json",
         "--config", str(project / "environments.toml"), "--env", "prod"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen = {"pg_dump": 0, "pg_restore": 0}
    leaked = []
    while proc.poll() is None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            for tool in seen:
                if f"/{tool} " in argv:
                    seen[tool] += 1
            if SECRET in argv:
                leaked.append(argv)
        time.sleep(0.005)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert seen["pg_dump"] > 0, "pg_dump was never observed running"
    assert leaked == []
    result = json.loads(stdout)
    dump = result.get("path") or result["backup"]["path"]
    restore = bridge(project, "restore", "--file", dump, "--target-db", f"{DATABASE}_drill", "--yes", "--json", env=env)
    assert restore.returncode == 0, restore.stderr
    _no_secret_in(project, stdout, stderr, restore.stdout, restore.stderr)


# ----------------------------------------------------------------------------------- failing clearly


def _fails_clearly(result: subprocess.CompletedProcess, cause: str, next_step: str) -> str:
    assert result.returncode == 3, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    error = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(error) == 1 and cause in error[0], result.stderr
    nxt = [ln for ln in result.stderr.splitlines() if ln.startswith("  next: ")]
    assert len(nxt) == 1 and next_step in nxt[0], result.stderr
    assert SECRET not in result.stderr + result.stdout
    return result.stderr


def test_wrong_ca_is_exit_3_naming_sslrootcert(project, tls_server):
    _write_config(project, tls_server[0], sslrootcert="tls/other-ca.crt")
    _fails_clearly(bridge(project, "status"), "certificate verify failed", "sslrootcert")


def test_host_name_not_in_the_certificate_is_exit_3_naming_the_host(project, tls_server):
    port = tls_server[0]
    # the right server and the right CA, reached by a name its certificate does not carry
    dsn = f"host=bridge-db-wrong-name.invalid hostaddr=127.0.0.1 port={port} dbname={DATABASE} user={MIGRATOR}"
    pgpass = project / "pgpass"
    pgpass.write_text(pgpass.read_text() + f"bridge-db-wrong-name.invalid:{port}:*:{MIGRATOR}:{SECRET}\n")
    result = bridge(project, "status", "--dsn", dsn)
    _fails_clearly(result, 'does not match host name "bridge-db-wrong-name.invalid"', "host name")


def test_verify_full_without_a_root_certificate_is_exit_3_naming_sslrootcert(project, tls_server):
    path = project / "environments.toml"
    path.write_text("".join(ln + "\n" for ln in path.read_text().splitlines() if not ln.startswith("sslrootcert")))
    _fails_clearly(bridge(project, "status"), "root certificate file", "set sslrootcert")


def test_wrong_password_is_exit_3_naming_the_password(project, tls_server):
    env = _env(project, PGPASSWORD="not-the-password", PGPASSFILE=str(project / "absent"))
    _fails_clearly(bridge(project, "status", env=env), "password authentication failed", "PGPASSWORD")


def test_no_password_at_all_is_exit_3_naming_pgpass(project):
    env = _env(project, PGPASSFILE=str(project / "absent"))
    _fails_clearly(bridge(project, "status", env=env), "no password supplied", ".pgpass")


def test_server_without_ssl_is_exit_3(project, plain_tcp_server):
    _write_config(project, plain_tcp_server)
    pgpass = project / "pgpass"
    pgpass.write_text(f"localhost:{plain_tcp_server}:*:{MIGRATOR}:{SECRET}\n")
    _fails_clearly(bridge(project, "status"), "server does not support SSL", "does not offer TLS")


def test_pgpass_readable_by_others_is_named_when_the_password_is_missing(project):
    os.chmod(project / "pgpass", 0o644)
    stderr = _fails_clearly(bridge(project, "status"), "no password supplied", "chmod 0600")
    assert f"note: {project / 'pgpass'} was not read" in stderr
    result = bridge(project, "status", "--json")
    assert result.returncode == 3
    error = json.loads(result.stdout)
    assert any("chmod 0600" in n for n in error["notes"]) and SECRET not in result.stdout


def test_the_telling_cause_is_named_when_another_address_was_refused_first(project, tls_server):
    """localhost is often ::1 and then 127.0.0.1: "Connection refused" from the first address must not
    hide the certificate problem of the second (here: two hosts, the first on a port nobody serves)."""
    _write_config(project, tls_server[0], sslrootcert="tls/other-ca.crt")
    dsn = f"host=localhost,localhost port={PORT_BASE + 99},{tls_server[0]} dbname={DATABASE} user={MIGRATOR}"
    _fails_clearly(bridge(project, "status", "--dsn", dsn), "certificate verify failed", "sslrootcert")
