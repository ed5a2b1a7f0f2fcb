#!/usr/bin/python
# Copyright: OmniNode Bridge database operations team
# MIT License (see LICENSE)
"""Create the environment's PostgreSQL extensions, and preload pg_stat_statements on managed servers."""
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_extensions
short_description: PostgreSQL extensions of the OmniNode Bridge database
description:
  - Creates the environment's extensions (uuid-ossp, pg_stat_statements) through the admin connection.
  - With I(preload=true), adds pg_stat_statements to shared_preload_libraries with ALTER SYSTEM and
    reports I(restart_required) until the server has been restarted.
options:
  admin_dsn:
    description:
      - Superuser connection (never logged; default the environment's admin_user).
      - Falls back to the E(BRIDGE_DB_ADMIN_DSN) environment variable, as the CLI does.
    type: str
  preload:
    description: Manage shared_preload_libraries on this server.
    type: bool
    default: false
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team (@omninode)
"""

EXAMPLES = r"""
- name: Extensions on staging
  omninode.bridge.bridge_extensions:
    project_dir: /srv/bridge-db
    environment: staging
    preload: true
"""

RETURN = r"""
target:
  description: The database the extensions were created in.
  type: str
  returned: success
  sample: "staging: db.internal:5432/omninode_bridge as postgres"
created:
  description: Extensions created (to be created, in check mode).
  type: list
  elements: str
  returned: success
  sample: ["uuid-ossp"]
present:
  description: Extensions that were already there.
  type: list
  elements: str
  returned: success
  sample: ["pg_stat_statements"]
not_preloaded:
  description: Extensions whose library the server does not preload yet.
  type: list
  elements: str
  returned: success
  sample: []
restart_required:
  description: The preload was changed and the server must restart.
  type: bool
  returned: success
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import ADMIN_DSN, argument_spec, bridge, run

ARGUMENT_SPEC = argument_spec(admin_dsn=ADMIN_DSN, preload=dict(type="bool", default=False))


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)

    def body():
        result = bridge(module).setup_extensions(check=module.check_mode, admin_dsn=module.params["admin_dsn"],
                                                 preload=module.params["preload"])
        report = result.report
        created = report.missing if module.check_mode else report.created
        return dict(changed=bool(created) or result.preload_changed, created=created, present=report.present,
                    not_preloaded=report.not_preloaded, restart_required=result.restart_required,
                    target=report.target)

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
