"""Wall time of `ansible-playbook playbooks/prod_migrate.yml` on 1, 3, ... local clusters.

    python benchmarks/prod_migrate_fleet.py --hosts 1 3 10

For each fleet size it starts that many real clusters (embedded, each its own port and folder, with
production's policy: confirmation, verified backup first, one transaction), then times the playbook
twice: the first rollout (six migrations and a backup per host, one host per batch) and a second,
no-op rollout. Clusters are stopped and removed afterwards. A benchmark, not a test.
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


def run_playbook(inventory: Path, group_vars: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            "-e",
            f"@{group_vars}",
            "-e",
            "bridge_confirm=true",
            str(ROOT / "playbooks" / "prod_migrate.yml"),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
    )
    return time.perf_counter() - started


def measure(hosts: int, first_port: int) -> dict:
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
        first = run_playbook(inventory, group_vars)
        noop = run_playbook(inventory, group_vars)
    finally:
        for cluster in clusters:
            cluster.down()
            shutil.rmtree(cluster.base_dir, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "hosts": hosts,
        "first_rollout_s": round(first, 1),
        "noop_rollout_s": round(noop, 1),
        "per_host_first_s": round(first / hosts, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--first-port", type=int, default=56100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(n, args.first_port) for n in args.hosts]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print("prod_migrate.yml wall time (real clusters, production policy, one host per batch)")
    for r in results:
        print(
            f"  {r['hosts']:>3} host(s): first rollout {r['first_rollout_s']:6.1f} s "
            f"({r['per_host_first_s']:.2f} s/host), no-op rollout {r['noop_rollout_s']:6.1f} s"
        )


if __name__ == "__main__":
    main()
