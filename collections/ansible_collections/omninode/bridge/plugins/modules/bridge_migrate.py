#!/usr/bin/python
# Apply or roll back OmniNode Bridge migrations through the bridge_db engine.
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
  to: {description: Target migration number., type: int}
  steps: {description: How many migrations to roll back (state=rolled_back)., type: int}
  confirm: {description: Confirms a run the environment's policy asks about (production)., type: bool, default: false}
  lock_wait: {description: Seconds to wait for another runner's lock., type: float}
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team
"""

EXAMPLES = r"""
- name: Migrate staging
  omninode.bridge.bridge_migrate:
    project_dir: /srv/bridge-db
    environment: staging
"""

RETURN = r"""
head_before: {description: Newest applied migration before the run., type: int, returned: always}
head_after: {description: Newest applied migration after the run (planned, in check mode)., type: int, returned: always}
steps: {description: Migrations applied or rolled back (planned, in check mode)., type: list, returned: always}
backup: {description: The backup taken first (production policy)., type: str, returned: when taken}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import argument_spec, engine, run


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            state=dict(type="str", choices=["migrated", "rolled_back"], default="migrated"),
            to=dict(type="int"),
            steps=dict(type="int"),
            confirm=dict(type="bool", default=False),
            lock_wait=dict(type="float"),
        ),
        mutually_exclusive=[("to", "steps")],
        supports_check_mode=True,
    )

    def body():
        from bridge_db import engine as bridge_engine

        config, target, migrations = engine(module)
        p = module.params
        common = dict(dry_run=module.check_mode, lock_wait=p["lock_wait"], confirm=lambda question: p["confirm"],
                      backup_dir=config.backup_folder(target.environment))
        if p["state"] == "migrated":
            result = bridge_engine.migrate(target, migrations, to_version=p["to"], **common)
        else:
            result = bridge_engine.rollback(target, migrations, steps=p["steps"], to_version=p["to"], **common)
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
            output["diff"] = dict(
                before=f"head: {result.head_before}\n",
                after=f"head: {result.head_after}\n" + (f"\n{sql}" if sql else ""),
                before_header=f"{target.environment.name} schema",
                after_header=f"{target.environment.name} schema",
            )
        return output

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
