#!/usr/bin/python
# Create the environment's PostgreSQL extensions, and preload pg_stat_statements on managed servers.
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_extensions
short_description: PostgreSQL extensions of the OmniNode Bridge database
description:
  - Creates the environment's extensions (uuid-ossp, pg_stat_statements) through the admin connection.
  - With I(preload=true), adds pg_stat_statements to shared_preload_libraries with ALTER SYSTEM and
    reports I(restart_required) until the server has been restarted.
options:
  admin_dsn: {description: Superuser connection (default the environment's admin_user)., type: str}
  preload: {description: Manage shared_preload_libraries on this server., type: bool, default: false}
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team
"""

EXAMPLES = r"""
- name: Extensions on staging
  omninode.bridge.bridge_extensions:
    project_dir: /srv/bridge-db
    environment: staging
    preload: true
"""

RETURN = r"""
created: {description: Extensions created., type: list, returned: always}
restart_required: {description: The preload was changed and the server must restart., type: bool, returned: always}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import argument_spec, engine, run


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(admin_dsn=dict(type="str", no_log=True), preload=dict(type="bool", default=False)),
        supports_check_mode=True,
    )

    def body():
        from bridge_db.connection import admin_target
        from bridge_db.extensions import ensure_preloaded, setup_extensions

        _, target, _ = engine(module)
        admin = admin_target(target, module.params["admin_dsn"])
        names = target.environment.policy.extensions
        report = setup_extensions(admin, names, check=module.check_mode)
        preload_changed, restart_required = False, False
        if module.params["preload"]:
            preload_changed, restart_required = ensure_preloaded(admin, names, check=module.check_mode)
        created = report.missing if module.check_mode else report.created
        return dict(changed=bool(created) or preload_changed, created=created, present=report.present,
                    not_preloaded=report.not_preloaded, restart_required=restart_required, target=report.target)

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
