"""The postgresql_pitr role against localhost (connection local, become the cluster's OS user postgres
through su) on a cluster of this test's own: archiving turned on (one restart, through the handler),
stanza, a first full backup with its freshness marker, the cron schedule; a second run changes nothing;
an unwritable repository turns the check marker red."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
OS_USER = "postgres"

pytestmark = [
    pytest.mark.skipif(shutil.which("pgbackrest") is None, reason="pgbackrest is not installed"),
    # the role becomes postgres through su, and reads and cleans postgres's crontab
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (Molecule's pitr scenario too)"),
]

PLAYBOOK = """---
- name: Point-in-time recovery
  hosts: pitr
  gather_facts: false
  roles:
    - role: postgresql_pitr
"""


def recap(stdout: str) -> dict[str, int]:
    match = re.search(r"^localhost\s+:\s+(.*)$", stdout, re.M)
    assert match, stdout
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}


def as_postgres(*cmd: str) -> subprocess.CompletedProcess:
    entry = pwd.getpwnam(OS_USER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"HOME": entry.pw_dir}
    return subprocess.run(list(cmd), user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], capture_output=True,
                          text=True, env=env, cwd="/", timeout=300)  # fmt: skip


def drop_cron_entries(stanza: str) -> None:
    """Only this test's entries of the postgres crontab (others may have their own)."""
    listed = subprocess.run(["crontab", "-l", "-u", OS_USER], capture_output=True, text=True)
    if listed.returncode != 0:
        return
    kept, skip = [], False
    for line in listed.stdout.splitlines():
        if line.startswith(f"#Ansible: bridge pitr {stanza} "):
            skip = True
            continue
        if skip:
            skip = False
            continue
        kept.append(line)
    subprocess.run(["crontab", "-u", OS_USER, "-"], input="\n".join(kept) + "\n", text=True, check=True)


@pytest.fixture(scope="module")
def cluster():
    from bridge_db.embedded import EmbeddedCluster

    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = Path("/var/tmp") / f"bridge-pitr-role-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    shutil.chown(base, OS_USER, OS_USER)
    server = EmbeddedCluster(base, 58200 + 10 * worker, service_user=OS_USER)
    server.up(database="bridge", extensions=())
    stanza = f"role_{uuid.uuid4().hex[:6]}"
    try:
        yield server, stanza
    finally:
        server.down()
        drop_cron_entries(stanza)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def play(tmp_path_factory, cluster):
    server, stanza = cluster
    where = tmp_path_factory.mktemp("play")
    (where / "hosts.ini").write_text("[pitr]\nlocalhost ansible_connection=local\n")
    (where / "play.yml").write_text(PLAYBOOK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_DB_", "ANSIBLE_"))}
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    base = server.base_dir / "pgbackrest"
    from bridge_db.embedded import find_server_binaries

    variables = {
        "ansible_python_interpreter": "/usr/bin/python3",  # the one postgres may run
        "ansible_become_method": "su",
        "postgresql_pitr_pg_data": str(server.data_dir),
        "postgresql_pitr_pg_port": server.port,
        "postgresql_pitr_pg_socket": str(server.socket_dir),
        "postgresql_pitr_pg_bindir": str(find_server_binaries(server.data_dir)),
        "postgresql_pitr_base_dir": str(base),
        "postgresql_pitr_stanza": stanza,
        "postgresql_pitr_restart_command": f"{find_server_binaries(server.data_dir)}/pg_ctl -D {server.data_dir} "
        f"-l {server.log_file} -m fast -w -t 120 restart",
    }

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ansible-playbook"), *args, "-i", str(where / "hosts.ini"), "-e", json.dumps(variables),
             str(where / "play.yml")],
            capture_output=True, text=True, timeout=900, cwd=ROOT, env=env,
        )  # fmt: skip

    return run, base, stanza


@pytest.fixture(scope="module")
def converged(play):
    run, base, stanza = play
    return run(), run(), base, stanza


def sql(server, statement: str):
    conn = psycopg2.connect(host=str(server.socket_dir), port=server.port, dbname="postgres", user="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def test_the_role_turns_on_archiving_backs_up_and_a_second_run_changes_nothing(converged, cluster):
    first, second, base, stanza = converged
    server, _ = cluster
    assert first.returncode == 0, first.stdout + first.stderr
    assert recap(first.stdout)["changed"] > 0
    assert "RUNNING HANDLER [postgresql_pitr : Restart PostgreSQL]" in first.stdout
    assert second.returncode == 0, second.stdout + second.stderr
    assert recap(second.stdout)["changed"] == 0, second.stdout
    assert "Restart PostgreSQL" not in second.stdout
    assert sql(server, "SELECT current_setting('archive_mode'), current_setting('archive_timeout')") == [("on", "1min")]
    info = json.loads(as_postgres("pgbackrest", f"--config={base}/pgbackrest.conf", f"--stanza={stanza}",
                                  "--output=json", "info").stdout)[0]  # fmt: skip
    assert info["status"]["code"] == 0 and [b["type"] for b in info["backup"]] == ["full"]
    marker = json.loads((base / "status" / f"{stanza}-full.json").read_text())
    assert marker["result"] == "ok" and marker["exit_code"] == 0 and marker["backup"] == info["backup"][0]["label"]
    assert json.loads((base / "status" / f"{stanza}-check.json").read_text())["result"] == "ok"
    crontab = subprocess.run(["crontab", "-l", "-u", OS_USER], capture_output=True, text=True).stdout
    for operation in ("full", "diff", "verify", "check"):
        assert f"#Ansible: bridge pitr {stanza} {operation}" in crontab
    assert f"{base}/bin/bridge-pitr-run diff" in crontab


def test_an_unwritable_repository_turns_the_check_marker_red(converged, cluster):
    first, _, base, stanza = converged
    assert first.returncode == 0, first.stdout
    archive = base / "repo" / "archive"
    folders = [archive, *(p for p in archive.rglob("*") if p.is_dir())]
    for folder in folders:
        os.chmod(folder, 0o500)
    try:
        out = as_postgres(str(base / "bin" / "bridge-pitr-run"), "check")
        assert out.returncode != 0, out.stdout + out.stderr
        marker = json.loads((base / "status" / f"{stanza}-check.json").read_text())
        assert marker["result"] == "failed" and marker["exit_code"] == out.returncode and marker["message"]
    finally:
        for folder in folders:
            os.chmod(folder, 0o750)
    out = as_postgres(str(base / "bin" / "bridge-pitr-run"), "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((base / "status" / f"{stanza}-check.json").read_text())["result"] == "ok"


def test_a_differential_backup_and_verify_write_their_markers(converged):
    first, _, base, stanza = converged
    assert first.returncode == 0, first.stdout
    for operation in ("diff", "verify"):
        out = as_postgres(str(base / "bin" / "bridge-pitr-run"), operation)
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads((base / "status" / f"{stanza}-{operation}.json").read_text())["result"] == "ok"
