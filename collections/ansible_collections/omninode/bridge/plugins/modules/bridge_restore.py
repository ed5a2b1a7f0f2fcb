#!/usr/bin/python
# Restore a backup of the OmniNode Bridge database.
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_restore
short_description: Restore an OmniNode Bridge backup
description:
  - Checks the dump's sha256 against its manifest, restores it into a new database (the default drill)
    and compares row counts; with I(overwrite=true) and I(confirm=true) replaces the environment's
    database, keeping the old one renamed.
options:
  file: {description: The dump to restore., type: path, required: true}
  target_db: {description: Database to create (default <db>_restore_<time>)., type: str}
  overwrite: {description: Replace the environment's database., type: bool, default: false}
  confirm: {description: Confirms an overwrite., type: bool, default: false}
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team
"""

EXAMPLES = r"""
- name: Restore drill
  omninode.bridge.bridge_restore:
    project_dir: /srv/bridge-db
    environment: staging
    file: /srv/bridge-db/backups/staging/omninode_bridge-20261124T020000Z.dump
"""

RETURN = r"""
database: {description: The database restored into., type: str, returned: success}
replaced: {description: The old database, renamed and kept, after an overwrite., type: str, returned: success}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import argument_spec, engine, run


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(file=dict(type="path", required=True), target_db=dict(type="str"),
                                    overwrite=dict(type="bool", default=False),
                                    confirm=dict(type="bool", default=False)),
        supports_check_mode=True,
    )

    def body():
        from pathlib import Path

        from bridge_db.backup import restore_backup
        from bridge_db.connection import admin_target

        _, target, _ = engine(module)
        if module.check_mode:
            return dict(changed=True, database=module.params["target_db"])
        result = restore_backup(target, admin_target(target), Path(module.params["file"]),
                                target_db=module.params["target_db"], overwrite=module.params["overwrite"],
                                confirm=lambda question: module.params["confirm"])
        return dict(changed=True, **result.as_dict())

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
