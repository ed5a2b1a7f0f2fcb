#!/usr/bin/python
# Reconcile the owner, read-write and read-only roles of the OmniNode Bridge database.
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_privileges
short_description: Roles and grants of the OmniNode Bridge database
description:
  - Makes the live grants match the owner, app and read-only roles that environments.toml declares,
    including default privileges for tables later migrations create.
  - Check mode lists the statements and changes nothing; --diff shows them.
options:
  admin_dsn: {description: Superuser connection (default the environment's admin_user)., type: str}
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team
"""

EXAMPLES = r"""
- name: Grants on staging
  omninode.bridge.bridge_privileges:
    project_dir: /srv/bridge-db
    environment: staging
"""

RETURN = r"""
statements: {description: GRANT/REVOKE statements run (or planned, in check mode)., type: list, returned: always}
roles: {description: The reconciled roles., type: dict, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import argument_spec, engine, run


def main():
    module = AnsibleModule(argument_spec=argument_spec(admin_dsn=dict(type="str", no_log=True)),
                           supports_check_mode=True)

    def body():
        from bridge_db.connection import admin_target
        from bridge_db.privileges import declared_roles, reconcile_privileges

        _, target, _ = engine(module)
        report = reconcile_privileges(admin_target(target, module.params["admin_dsn"]), declared_roles(target),
                                      check=module.check_mode)
        statements = [c.statement for c in report.changes]
        output = dict(changed=report.changed, statements=statements, roles=report.roles, target=report.target)
        if module._diff and statements:
            output["diff"] = dict(before="", after="\n".join(s + ";" for s in statements) + "\n")
        return output

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
