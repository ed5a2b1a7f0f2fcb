"""The package without the checkout: the built wheel, installed (not editable) into a fresh venv, run
from an empty folder with nothing but a database URL, as a user of `pipx install` would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg2.extensions
import pytest

from conftest import HEAD, ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding the wheel built from this checkout."""
    base = tmp_path_factory.mktemp("package")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(base / "dist"), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next((base / "dist").glob("omninode_bridge_db-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    pip = [str(base / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    return base / "venv" / "bin"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "PG")) and k != "DATABASE_URL"}
    return {**env, **extra}


def _url(db) -> str:
    params = psycopg2.extensions.parse_dsn(db.dsn)
    host = params.get("host", "/var/run/postgresql")
    user = params.get("user", "postgres")
    if host.startswith("/"):
        return f"postgresql://{user}@/{db.name}?host={host}&port={params.get('port', 5432)}"
    return f"postgresql://{user}@{host}:{params.get('port', 5432)}/{db.name}"


def test_the_wheel_carries_the_migrations_and_the_adoption_script():
    dist = Path(ROOT / "dist-test")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
            check=True,
            capture_output=True,
        )
        names = zipfile.ZipFile(next(dist.glob("*.whl"))).namelist()
    finally:
        subprocess.run(["rm", "-rf", str(dist)], check=False)
    shipped = sorted(p.name for p in (ROOT / "migrations").iterdir())
    assert sorted(n.split("/")[-1] for n in names if n.startswith("bridge_db/migrations/")) == shipped
    assert "bridge_db/scripts/adopt_application_v1.sql" in names
    assert not any(n.startswith("bridge_db/scripts/") and n.endswith(".sh") for n in names)


def test_an_installed_wheel_migrates_from_an_empty_folder_with_only_database_url(installed, db, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _clean_env(DATABASE_URL=_url(db))
    out = subprocess.run(
        [str(installed / "bridge-db"), "migrate", "--json"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["head_after"] == HEAD
    out = subprocess.run(
        [str(installed / "bridge-db"), "verify", "--json"], cwd=empty, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and json.loads(out.stdout)["ok"], out.stdout + out.stderr
    assert list(empty.iterdir()) == []  # nothing written where it ran
    # the migrations came from the package, not from a checkout
    site = subprocess.run(
        [str(installed / "python"), "-c", "import bridge_db, pathlib; print(pathlib.Path(bridge_db.__file__).parent)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert (
        "site-packages" in site
        and (Path(site) / "migrations" / "007_add_node_registrations_health_endpoint.sql").is_file()
    )


def test_libpq_variables_and_url_flags_reach_the_database_without_a_config(installed, db, tmp_path):
    params = psycopg2.extensions.parse_dsn(db.dsn)
    libpq = {"PGDATABASE": db.name, "PGUSER": params.get("user", "postgres")}
    if params.get("host"):
        libpq["PGHOST"] = params["host"]
    if params.get("port"):
        libpq["PGPORT"] = str(params["port"])
    out = subprocess.run(
        [str(installed / "bridge-db"), "status", "--json"], cwd=tmp_path, env=_clean_env(**libpq),
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pending"] == HEAD
    out = subprocess.run(
        [str(installed / "bridge-db"), "migrate", "--url", _url(db), "--to", "2", "--json"], cwd=tmp_path,
        env=_clean_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0 and json.loads(out.stdout)["head_after"] == 2, out.stderr
    out = subprocess.run(
        [str(installed / "bridge-db"), "status", "--env", "staging"], cwd=tmp_path, env=_clean_env(**libpq),
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2 and "no environments.toml" in out.stderr
