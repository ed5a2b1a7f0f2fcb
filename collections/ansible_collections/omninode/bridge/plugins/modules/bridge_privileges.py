#!/usr/bin/python
# Copyright: OmniNode Bridge database operations team
# MIT License (see LICENSE)
"""Reconcile the owner, read-write and read-only roles of the OmniNode Bridge database."""
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_privileges
short_description: Roles and grants of the OmniNode Bridge database
description:
  - Makes the live grants match the owner, app and read-only roles that environments.toml declares,
    including default privileges for tables later migrations create.
  - Check mode lists the statements and changes nothing; --diff shows them.
options:
  admin_dsn:
    description:
      - Superuser connection (never logged; default the environment's admin_user).
      - Falls back to the E(BRIDGE_DB_ADMIN_DSN) environment variable, as the CLI does.
    type: str
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team (@omninode)
"""

EXAMPLES = r"""
- name: Grants on staging
  omninode.bridge.bridge_privileges:
    project_dir: /srv/bridge-db
    environment: staging
"""

RETURN = r"""
target:
  description: The database whose grants were reconciled.
  type: str
  returned: success
  sample: "staging: db.internal:5432/omninode_bridge as postgres"
statements:
  description: GRANT/REVOKE statements run (or planned, in check mode).
  type: list
  elements: str
  returned: success
  sample: ["GRANT SELECT ON ALL TABLES IN SCHEMA public TO bridge_readonly"]
roles:
  description: The reconciled roles, by kind.
  type: dict
  returned: success
  sample: {"owner": "bridge_owner", "app": "bridge_app", "readonly": "bridge_readonly"}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import ADMIN_DSN, argument_spec, bridge, run

ARGUMENT_SPEC = argument_spec(admin_dsn=ADMIN_DSN)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)

    def body():
        report = bridge(module).grant(check=module.check_mode, admin_dsn=module.params["admin_dsn"])
        statements = [c.statement for c in report.changes]
        output = dict(changed=report.changed, statements=statements, roles=report.roles, target=report.target)
        if module._diff and statements:
            output["diff"] = dict(before="", after="\n".join(s + ";" for s in statements) + "\n")
        return output

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
