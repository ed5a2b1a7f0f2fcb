"""Wall time of `ansible-playbook playbooks/prod_migrate.yml` on 1, 3, ... hosts.

    python benchmarks/prod_migrate_fleet.py --hosts 1 3 10 [--mode local ssh] [--serial 1]

For each fleet size it starts that many real clusters with production's policy (confirmation, verified
backup first, one transaction), then times the playbook twice: the first rollout (every migration and a
backup per host) and a second, no-op rollout. Batches are the playbook's canary default
([1, "25%", "100%"]) unless --serial says otherwise.

- `local`: embedded clusters, each a host of the inventory with a local connection and the engine on
  the control node (the project's own inventories).
- `ssh` (as root): real hosts over SSH made by tests/loopback_hosts.py, each an unprivileged OS user with
  its own sshd on a loopback address and its own cluster (TLS verify-full, scram-sha-256, a migrator that
  is not a superuser), the engine installed on each host by playbooks/install.yml (timed too) and run
  there (`bridge_run_on: host`).

Everything is stopped and removed afterwards. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bridge_db.config import load_config  # noqa: E402
from bridge_db.connection import resolve_target  # noqa: E402

BIN = Path(sys.executable).parent


def fleet_config(folder: Path, hosts: int, first_port: int) -> Path:
    lines = [
        "[defaults]",
        f'migrations_dir = "{ROOT / "migrations"}"',
        "embedded = true",
        'database = "omninode_bridge"',
        'user = "postgres"',
        "single_transaction = true",
        "require_confirmation = true",
        "backup_before_migrate = true",
        'backup_dir = "backups/{env}"',
    ]
    for i in range(hosts):
        lines += ["", f"[environments.host{i:02d}]", f'embedded_dir = "clusters/{i:02d}"', f"port = {first_port + i}"]
    path = folder / "environments.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_playbook(
    inventory: Path,
    group_vars: Path | None,
    serial: str | None,
    book: str = "prod_migrate",
    extra: tuple[str, ...] = (),
) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            *(["-e", f"@{group_vars}"] if group_vars else []),
            "-e",
            "bridge_confirm=true",
            *(["-e", json.dumps({"bridge_serial": json.loads(serial)})] if serial else []),
            *extra,
            str(ROOT / "playbooks" / f"{book}.yml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), "ANSIBLE_PIPELINING": "true"},
    )
    if done.returncode:
        sys.exit(f"{book}.yml failed:\n{done.stdout[-4000:]}")
    return time.perf_counter() - started


def measure(hosts: int, first_port: int, serial: str | None) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"bridge-fleet-{hosts}-"))
    os.chmod(folder, 0o755)  # the clusters' server user must reach it when root runs this
    config_path = fleet_config(folder, hosts, first_port)
    config = load_config(config_path)
    clusters = [resolve_target(config, name).embedded for name in config.environments]
    inventory = folder / "bridge.yml"
    inventory.write_text(
        f"plugin: omninode.bridge.environments\nproject_dir: {ROOT}\nconfig: {config_path}\ngroup: production\n"
    )
    group_vars = folder / "vars.yml"
    group_vars.write_text('ansible_connection: local\nansible_python_interpreter: "{{ ansible_playbook_python }}"\n')
    try:
        for cluster in clusters:
            cluster.up(database="omninode_bridge")
        first = run_playbook(inventory, group_vars, serial)
        noop = run_playbook(inventory, group_vars, serial)
    finally:
        for cluster in clusters:
            cluster.down()
            shutil.rmtree(cluster.base_dir, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "mode": "local",
        "hosts": hosts,
        "first_rollout_s": round(first, 1),
        "noop_rollout_s": round(noop, 1),
        "per_host_first_s": round(first / hosts, 2),
    }


SSH_VARS = """---
ansible_connection: ssh
ansible_host: "{{{{ bridge_connection.host }}}}"
ansible_port: "{{{{ bridge_connection.port + 100 }}}}"
ansible_user: "bridge_{{{{ bridge_environment }}}}"
ansible_ssh_private_key_file: {state}/ssh/id_ed25519
ansible_ssh_common_args: >-
  -o StrictHostKeyChecking=yes -o UserKnownHostsFile={state}/ssh/known_hosts -o IdentitiesOnly=yes
ansible_python_interpreter: /usr/bin/python3
bridge_run_on: host
bridge_host_prefix: "/home/bridge_{{{{ bridge_environment }}}}/bridge-db"
bridge_db_install_version: "0.1.0"
bridge_db_install_bundle_dir: {state}/dist
bridge_db_install_config_overrides:
  backup_dir: "/home/bridge_{{{{ bridge_environment }}}}/backups/{{env}}"
bridge_db_password: "{{{{ vault_bridge_db_passwords[bridge_environment].migrator }}}}"
bridge_db_admin_password: "{{{{ vault_bridge_db_passwords[bridge_environment].admin }}}}"
bridge_extensions_manage_server: false
"""


def measure_ssh(hosts: int, first_port: int, serial: str | None) -> dict:
    """The same rollout on real hosts over SSH, with the engine installed and run on each host."""
    folder = Path(tempfile.mkdtemp(prefix=f"bridge-sshfleet-{hosts}-"))
    state, helper = folder / "state", [sys.executable, str(ROOT / "tests" / "loopback_hosts.py")]
    lines = [
        "[defaults]",
        'database = "omninode_bridge"',
        'user = "bridge_migrator"',
        'admin_user = "postgres"',
        'sslmode = "verify-full"',
        f'sslrootcert = "{state}/tls/ca.crt"',
        "single_transaction = true",
        "require_confirmation = true",
        "backup_before_migrate = true",
        f'migrations_dir = "{ROOT / "migrations"}"',
    ]
    for i in range(hosts):
        lines += ["", f"[environments.sshf{i:02d}]", f'host = "127.0.1.{10 + i}"', f"port = {first_port + i}"]
    config = folder / "environments.toml"
    config.write_text("\n".join(lines) + "\n")
    inventory = folder / "bridge.yml"
    inventory.write_text(
        f"plugin: omninode.bridge.environments\nproject_dir: {ROOT}\nconfig: {config}\ngroup: production\n"
    )
    # group_vars beside the inventory: for its hosts only (an extra variable would reach localhost too)
    (folder / "group_vars").mkdir()
    (folder / "group_vars" / "production.yml").write_text(SSH_VARS.format(state=state))
    group_vars = None
    vault = folder / "vault.yml"
    up_down = ["--config", str(config), "--state", str(state), "--vault-vars", str(vault)]
    vault_args = ("--vault-password-file", str(state / "vault-pass"), "-e", f"@{vault}")
    try:
        subprocess.run([*helper, "up", *up_down], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            [str(BIN / "invoke"), "dist", "--out", str(state / "dist")], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
        install = run_playbook(inventory, group_vars, serial, "install", vault_args)
        run_playbook(inventory, group_vars, serial, "setup", vault_args)
        first = run_playbook(inventory, group_vars, serial, "prod_migrate", vault_args)
        noop = run_playbook(inventory, group_vars, serial, "prod_migrate", vault_args)
    finally:
        subprocess.run([*helper, "down", *up_down], check=False)
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "mode": "ssh",
        "hosts": hosts,
        "install_s": round(install, 1),
        "first_rollout_s": round(first, 1),
        "noop_rollout_s": round(noop, 1),
        "per_host_first_s": round(first / hosts, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--first-port", type=int, default=56100)
    parser.add_argument("--mode", nargs="+", choices=["local", "ssh"], default=["local"])
    parser.add_argument("--serial", help='bridge_serial as JSON, e.g. 1 (default: [1, "25%%", "100%%"])')
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for mode in args.mode:
        for n in args.hosts:
            if mode == "local":
                results.append(measure(n, args.first_port, args.serial))
            else:
                results.append(measure_ssh(n, args.first_port + 100, args.serial))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"prod_migrate.yml wall time (real clusters, production policy, batches {args.serial or 'canary'})")
    for r in results:
        print(
            f"  {r['mode']:>5} {r['hosts']:>3} host(s): first rollout {r['first_rollout_s']:6.1f} s "
            f"({r['per_host_first_s']:.2f} s/host), no-op rollout {r['noop_rollout_s']:6.1f} s"
            + (f", install {r['install_s']:.1f} s" if "install_s" in r else "")
        )


if __name__ == "__main__":
    main()
