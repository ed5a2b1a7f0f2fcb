#!/usr/bin/python
# Copyright: OmniNode Bridge database operations team
# MIT License (see LICENSE)
"""Restore a backup of the OmniNode Bridge database."""
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_restore
short_description: Restore an OmniNode Bridge backup
description:
  - Checks the dump's sha256 against its manifest, restores it into a new database (the default drill)
    and compares row counts; with I(overwrite=true) and I(confirm=true) replaces the environment's
    database, keeping the old one renamed.
options:
  file:
    description: The dump to restore (its manifest must be beside it).
    type: path
    required: true
  target_db:
    description: Database to create (default C(<db>_restore_<time>)).
    type: str
  overwrite:
    description: Replace the environment's database (the old one is kept, renamed).
    type: bool
    default: false
  confirm:
    description: Confirms an overwrite, like the CLI's C(--yes).
    type: bool
    default: false
  jobs:
    description: Parallel jobs for pg_restore.
    type: int
  admin_dsn:
    description:
      - Connection with CREATEDB (never logged; default the environment's admin_user).
      - Falls back to the E(BRIDGE_DB_ADMIN_DSN) environment variable, as the CLI does.
    type: str
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team (@omninode)
"""

EXAMPLES = r"""
- name: Restore drill
  omninode.bridge.bridge_restore:
    project_dir: /srv/bridge-db
    environment: staging
    file: /srv/bridge-db/backups/staging/omninode_bridge-20261124T020000Z.dump
"""

RETURN = r"""
target:
  description: The environment's database the backup was restored next to (or over).
  type: str
  returned: success
  sample: "staging: db.internal:5432/omninode_bridge as bridge_owner"
database:
  description: The database restored into.
  type: str
  returned: success
  sample: omninode_bridge_restore_20261124T030000Z
replaced:
  description: The old database, renamed and kept, after an overwrite.
  type: str
  returned: when I(overwrite=true)
  sample: omninode_bridge_replaced_20261124T030000Z
row_counts_checked:
  description: Whether the restored row counts were compared with the manifest's.
  type: bool
  returned: when restored
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import ADMIN_DSN, argument_spec, bridge, run

ARGUMENT_SPEC = argument_spec(
    file=dict(type="path", required=True),
    target_db=dict(type="str"),
    overwrite=dict(type="bool", default=False),
    confirm=dict(type="bool", default=False),
    jobs=dict(type="int"),
    admin_dsn=ADMIN_DSN,
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)

    def body():
        p = module.params
        facade = bridge(module)
        if module.check_mode:
            # resolving the target fails on an unknown environment in check mode too
            return dict(changed=True, database=p["target_db"], target=facade.target.label)
        result = facade.restore(p["file"], target_db=p["target_db"], overwrite=p["overwrite"], jobs=p["jobs"],
                                confirm=lambda _question: p["confirm"], admin_dsn=p["admin_dsn"])
        return dict(changed=True, target=facade.target.label, **result.as_dict())

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
