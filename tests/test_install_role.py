"""The bridge_db_install role against localhost (connection local) into a prefix under the test's tmp
folder, from a bundle `invoke dist` built once per module: it installs without internet, a second run
changes nothing, the installed tool migrates a database from an empty folder (the wheel carries the
migrations), a second version name and back only move the `current` link, and a tampered bundle is
refused before anything is on the host."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VERSION = "0.1.0"
CONFIG = '[defaults]\nlock_wait_seconds = 30\n\n[environments.test]\nhost = "/var/run/postgresql"\ndatabase = "omninode_bridge"\nuser = "postgres"\n'

PLAYBOOK = """---
- name: Install bridge-db
  hosts: install
  gather_facts: false
  roles:
    - role: bridge_db_install
"""


def recap(stdout: str) -> dict[str, int]:
    match = re.search(r"^localhost\s+:\s+(.*)$", stdout, re.M)
    assert match, stdout
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "dist"
    built = subprocess.run(
        [str(BIN / "invoke"), "dist", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    return out


@pytest.fixture(scope="module")
def play(tmp_path_factory):
    where = tmp_path_factory.mktemp("play")
    (where / "hosts.ini").write_text("[install]\nlocalhost ansible_connection=local\n")
    (where / "play.yml").write_text(PLAYBOOK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_DB_", "ANSIBLE_"))}
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")

    def run(prefix: Path, *args: str, home: Path | None = None, **variables: object) -> subprocess.CompletedProcess:
        extra = {
            "ansible_python_interpreter": sys.executable,
            "bridge_db_install_version": VERSION,
            "bridge_host_prefix": str(prefix),
            "bridge_db_install_config_content": CONFIG,
            "bridge_db_install_config_owner": os.getuid(),
            "bridge_db_install_config_group": os.getgid(),
            **variables,
        }
        return subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                *args,
                "-i",
                str(where / "hosts.ini"),
                "-e",
                json.dumps(extra),
                str(where / "play.yml"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=ROOT,
            env={**env, "HOME": str(home)} if home else env,
        )

    return run


@pytest.fixture(scope="module")
def installed(tmp_path_factory, bundle, play):
    """One prefix, installed twice: the first and the second run's results."""
    prefix = tmp_path_factory.mktemp("install") / "opt"
    first = play(prefix, bridge_db_install_bundle_dir=str(bundle))
    second = play(prefix, bridge_db_install_bundle_dir=str(bundle))
    return prefix, first, second


def test_install_then_a_second_run_changes_nothing(installed):
    prefix, first, second = installed
    assert first.returncode == 0, first.stdout
    assert recap(first.stdout)["changed"] > 0
    assert second.returncode == 0, second.stdout
    assert recap(second.stdout)["changed"] == 0, second.stdout
    assert os.readlink(prefix / "current") == str(prefix / VERSION)
    config = prefix / "environments.toml"
    assert config.read_text() == CONFIG
    assert config.stat().st_mode & 0o777 == 0o640


def test_the_installed_tool_runs_and_migrates_from_an_empty_folder(installed, db, tmp_path):
    prefix, first, _ = installed
    assert first.returncode == 0, first.stdout
    tool = prefix / "current" / "bin" / "bridge-db"
    version = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and VERSION in version.stdout, version.stdout + version.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}

    def bridge(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(tool), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)

    # from an empty folder, no config: the packaged migrations
    migrated = bridge("migrate", "--url", db.dsn)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    packaged = len({p.name[:3] for p in (ROOT / "migrations").glob("*.sql")})  # the wheel carries the checkout's
    assert db.query("SELECT count(*) FROM public.schema_migrations")[0][0] == packaged
    # with the installed config (no migrations_dir): the same ones, through the link beside it
    status = bridge("status", "--config", str(prefix / "environments.toml"), "--env", "test", "--url", db.dsn, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert os.path.realpath(prefix / "migrations").startswith(str(prefix / VERSION))
    assert not list(tmp_path.iterdir())  # nothing copied next to it


def test_a_second_version_then_back_only_moves_the_link(tmp_path, bundle, play):
    prefix = tmp_path / "opt"
    assert play(prefix, bridge_db_install_bundle_dir=str(bundle)).returncode == 0
    upgrade = play(prefix, bridge_db_install_bundle_dir=str(bundle), bridge_db_install_version="0.1.0-next")
    assert upgrade.returncode == 0, upgrade.stdout
    assert os.readlink(prefix / "current") == str(prefix / "0.1.0-next")
    assert (prefix / VERSION / "bin" / "bridge-db").exists()  # the previous version stays
    back = play(prefix)  # an installed version: no bundle needed
    assert back.returncode == 0, back.stdout
    assert recap(back.stdout)["changed"] == 1, back.stdout  # the link, nothing else
    assert os.readlink(prefix / "current") == str(prefix / VERSION)
    again = play(prefix)
    assert recap(again.stdout)["changed"] == 0, again.stdout


def test_a_version_neither_installed_nor_given_a_bundle_fails_clearly(tmp_path, play):
    result = play(tmp_path / "opt")
    assert result.returncode != 0
    assert "set bridge_db_install_bundle_dir" in result.stdout


def test_a_missing_pg_dump_major_fails_naming_the_package(installed, play):
    prefix, first, _ = installed
    assert first.returncode == 0, first.stdout
    result = play(prefix, bridge_db_install_server_major=99)
    assert result.returncode != 0
    assert "no pg_dump 99" in result.stdout and "install the package postgresql-client-99" in result.stdout


@pytest.mark.parametrize("tamper", ["one_byte", "unlisted_wheel"])
def test_a_tampered_bundle_is_refused_before_anything_is_installed(tmp_path, bundle, play, tamper):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    if tamper == "one_byte":
        wheel = next(copy.glob("omninode_bridge_db-*.whl"))
        data = bytearray(wheel.read_bytes())
        data[len(data) // 2] ^= 0x01
        wheel.write_bytes(bytes(data))
    else:
        shutil.copy(next(copy.glob("invoke-*.whl")), copy / "evil-1.0-py3-none-any.whl")
    prefix = tmp_path / "opt"
    result = play(prefix, bridge_db_install_bundle_dir=str(copy))
    assert result.returncode != 0
    assert "failed its check, nothing installed" in result.stdout, result.stdout
    assert ("FAILED" in result.stdout) if tamper == "one_byte" else ("evil-1.0-py3-none-any.whl" in result.stdout)
    assert not prefix.exists()


def test_a_password_in_the_config_is_refused(installed, play):
    prefix, first, _ = installed
    assert first.returncode == 0, first.stdout
    result = play(prefix, bridge_db_install_config_content='[environments.prod]\npassword = "hunter2"\n')
    assert result.returncode != 0
    assert "holds a password" in result.stdout
    assert "hunter2" not in (prefix / "environments.toml").read_text()


def test_check_mode_on_a_new_host_checks_the_bundle_and_writes_nothing(tmp_path, bundle, play):
    prefix = tmp_path / "opt"
    result = play(prefix, "--check", bridge_db_install_bundle_dir=str(bundle), bridge_db_install_server_major=15)
    assert result.returncode == 0, result.stdout
    assert recap(result.stdout)["changed"] > 0
    assert not prefix.exists()


def test_the_host_config_tls_files_and_pgpass_come_from_the_inventorys_environment(installed, play, tmp_path):
    """Without a config of its own the role renders the host's environments file from the environment the
    control node defines (connection, policy, overrides), copies its CA, and writes the vault's passwords
    as escaped lines of the user's 0600 .pgpass, shown nowhere, not even at -vvv."""
    from bridge_db.config import POLICY_DEFAULTS, parse_config

    prefix, first, _ = installed
    assert first.returncode == 0, first.stdout
    home = tmp_path / "home"
    home.mkdir()
    ca = tmp_path / "control" / "ca.crt"
    ca.parent.mkdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot a real one\n-----END CERTIFICATE-----\n")
    migrator_secret, admin_secret = "pa:ss\\word-9c1f", "adm:in-77e2"
    connection = {
        "host": "db1.internal",
        "port": 6432,
        "database": "omninode_bridge",
        "user": "bridge_migrator",
        "sslmode": "verify-full",
        "sslrootcert": str(ca),
        "connect_timeout": 10,
    }
    policy = {k: list(v) if isinstance(v, tuple) else v for k, v in POLICY_DEFAULTS.items()}
    policy.update(admin_user="postgres", single_transaction=True, backup_before_migrate=True)
    variables = dict(
        bridge_db_install_config_content="",
        bridge_environment="prod",
        bridge_connection=connection,
        bridge_policy=policy,
        bridge_db_install_config_overrides={"backup_dir": "/srv/bridge/{env}"},
        bridge_db_password=migrator_secret,
        bridge_db_admin_password=admin_secret,
    )
    (prefix / "environments.toml").unlink()  # the module's plain config is environment test's, not prod's
    result = play(prefix, "-vvv", home=home, **variables)
    assert result.returncode == 0, result.stdout
    for secret in (migrator_secret, admin_secret, "pa\\:ss", "adm\\:in"):
        assert secret not in result.stdout + result.stderr

    config = prefix / "environments.toml"
    import tomllib

    env = parse_config(tomllib.loads(config.read_text()), config).environments["prod"]
    assert "9c1f" not in config.read_text() and "77e2" not in config.read_text()
    assert env.connection == {**connection, "sslrootcert": str(prefix / "tls" / "ca.crt")}
    assert vars(env.policy) == {**policy, "extensions": tuple(policy["extensions"]), "backup_dir": "/srv/bridge/{env}"}
    assert (prefix / "tls" / "ca.crt").read_text() == ca.read_text()

    pgpass = home / ".pgpass"
    assert pgpass.stat().st_mode & 0o777 == 0o600
    # libpq's escapes: a backslash and a colon inside a field are preceded by a backslash
    assert pgpass.read_text().splitlines() == [
        "db1.internal:6432:*:bridge_migrator:pa\\:ss\\\\word-9c1f",
        "db1.internal:6432:*:postgres:adm\\:in-77e2",
    ]
    again = play(prefix, home=home, **variables)
    assert again.returncode == 0 and recap(again.stdout)["changed"] == 0, again.stdout
    # another environment's install under the same prefix is refused, naming both
    other = play(prefix, home=home, **{**variables, "bridge_environment": "staging"})
    assert other.returncode != 0
    assert "is the environment prod's, not staging's" in other.stdout, other.stdout
    assert play(prefix).returncode == 0  # the module's other tests read the plain config again
