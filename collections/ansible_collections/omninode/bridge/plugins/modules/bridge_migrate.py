#!/usr/bin/python
# Copyright: OmniNode Bridge database operations team
# MIT License (see LICENSE)
"""Apply or roll back OmniNode Bridge migrations through the bridge_db facade."""
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_migrate
short_description: Apply or roll back OmniNode Bridge migrations
description:
  - Runs the bridge_db engine on the control node against one environment of environments.toml.
  - The environment's policy applies; production takes a verified backup first, applies everything
    in one transaction and needs I(confirm=true).
  - Check mode plans and changes nothing; with --diff the pending SQL is shown.
options:
  state:
    description: C(migrated) applies pending migrations (up to I(to)); C(rolled_back) undoes them.
    type: str
    choices: [migrated, rolled_back]
    default: migrated
  to:
    description:
      - With C(state=migrated), stop after this migration (default the newest).
      - With C(state=rolled_back), roll back every migration newer than this one (0 rolls back all).
    type: int
  steps:
    description: How many migrations to roll back, newest first (C(state=rolled_back); default 1).
    type: int
  confirm:
    description: Confirms a run the environment's policy asks about (production), like the CLI's C(--yes).
    type: bool
    default: false
  lock_wait:
    description: Seconds to wait for another runner's lock (default the environment's policy).
    type: float
  single_transaction:
    description: Run the whole plan in one transaction (default the environment's policy).
    type: bool
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team (@omninode)
"""

EXAMPLES = r"""
- name: Migrate staging
  omninode.bridge.bridge_migrate:
    project_dir: /srv/bridge-db
    environment: staging
"""

RETURN = r"""
target:
  description: The environment and database the run reached.
  type: str
  returned: success
  sample: "staging: db.internal:5432/omninode_bridge as bridge_owner"
head_before:
  description: Newest applied migration before the run.
  type: int
  returned: success
  sample: 5
head_after:
  description: Newest applied migration after the run (planned, in check mode).
  type: int
  returned: success
  sample: 7
steps:
  description: Migrations applied or rolled back (planned, in check mode).
  type: list
  elements: dict
  returned: success
  sample: [{"version": 6, "name": "add_index", "file": "006_add_index.sql", "execution_ms": 12}]
backup:
  description: The backup taken first (production policy).
  type: str
  returned: when a backup was taken
  sample: /srv/bridge-db/backups/production/omninode_bridge-20261124T020000Z.dump
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import argument_spec, bridge, run

ARGUMENT_SPEC = argument_spec(
    state=dict(type="str", choices=["migrated", "rolled_back"], default="migrated"),
    to=dict(type="int"),
    steps=dict(type="int"),
    confirm=dict(type="bool", default=False),
    lock_wait=dict(type="float"),
    single_transaction=dict(type="bool"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, mutually_exclusive=[("to", "steps")], supports_check_mode=True)

    def body():
        p = module.params
        facade = bridge(module)
        common = dict(dry_run=module.check_mode, single_transaction=p["single_transaction"],
                      lock_wait=p["lock_wait"], confirm=lambda _question: p["confirm"])
        if p["state"] == "migrated":
            result = facade.migrate(p["to"], **common)
        else:
            result = facade.rollback(p["steps"], p["to"], **common)
        output = dict(
            changed=bool(result.steps),
            target=result.target,
            head_before=result.head_before,
            head_after=result.head_after,
            steps=[{"version": s.version, "name": s.name, "file": s.file, "execution_ms": s.execution_ms}
                   for s in result.steps],
            backup=result.backup,
        )
        if module._diff and result.steps:
            sql = "\n".join(f"-- {s.file}\n{s.sql or ''}" for s in result.steps) if module.check_mode else ""
            name = facade.target.environment.name  # whose policy applied
            output["diff"] = dict(
                before=f"head: {result.head_before}\n",
                after=f"head: {result.head_after}\n" + (f"\n{sql}" if sql else ""),
                before_header=f"{name} schema",
                after_header=f"{name} schema",
            )
        return output

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
