# Inventory from environments.toml: the same file Invoke and the CLI read, so no setting is written twice.
from __future__ import annotations

DOCUMENTATION = r"""
name: environments
short_description: OmniNode Bridge environments as inventory hosts
description:
  - Reads environments.toml through the bridge_db engine's own loader and adds one host per listed
    environment, in I(group), with its connection and policy as host variables. Database work runs
    from the control node, so hosts use the local connection unless the inventory says otherwise.
  - Every host is also in group C(bridge_db), the group every playbook of the project targets.
options:
  plugin:
    description: Must be omninode.bridge.environments.
    required: true
    choices: [omninode.bridge.environments]
  project_dir:
    description: The project checkout, relative to this inventory file.
    default: ../..
  config:
    description: The environments file, relative to I(project_dir).
    default: environments.toml
  environments:
    description: Environments to add as hosts (default all).
    type: list
    elements: str
    default: []
  group:
    description: Group that receives the hosts.
    default: bridge
"""

EXAMPLES = r"""
# inventories/production/bridge.yml
plugin: omninode.bridge.environments
environments: [production]
group: production
"""

import os
import sys

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin


class InventoryModule(BaseInventoryPlugin):
    NAME = "omninode.bridge.environments"

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(("bridge.yml", "bridge.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        here = os.path.dirname(os.path.realpath(path))
        project_dir = os.path.realpath(os.path.join(here, self.get_option("project_dir")))
        config_path = os.path.join(project_dir, self.get_option("config"))
        src = os.path.join(project_dir, "src")
        if src not in sys.path:
            sys.path.insert(0, src)
        try:
            from bridge_db.api import Bridge
            from bridge_db.errors import BridgeDbError
        except ImportError as exc:
            raise AnsibleParserError(f"{path}: cannot import bridge_db from {src}: {exc}") from None
        try:
            config = Bridge(config=config_path).config
        except BridgeDbError as exc:
            raise AnsibleParserError(f"{exc.message} ({exc.next_step})") from None
        wanted = self.get_option("environments") or list(config.environments)
        group = self.inventory.add_group(self.get_option("group"))
        if group != "bridge_db":  # bridge_db: the group every playbook targets, whatever the environment
            self.inventory.add_child(self.inventory.add_group("bridge_db"), group)
        for name in wanted:
            if name not in config.environments:
                known = ", ".join(config.environments)
                raise AnsibleParserError(f"{path}: unknown environment {name!r} (known: {known})")
            env = config.environments[name]
            host = f"{name}-db"
            self.inventory.add_host(host, group=group)
            host_vars = {
                "bridge_project_dir": project_dir,
                "bridge_config": config_path,
                "bridge_environment": name,
                "bridge_connection": dict(env.connection),
                "bridge_embedded": env.embedded,
                "bridge_policy": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(env.policy).items()},
            }
            for key, value in host_vars.items():
                self.inventory.set_variable(host, key, value)
