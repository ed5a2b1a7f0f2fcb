#!/usr/bin/python
# One verified backup of the OmniNode Bridge database, with its manifest.
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_backup
short_description: Back up the OmniNode Bridge database
description:
  - pg_dump into the environment's backup folder, read back with pg_restore --list, manifest beside it.
  - Check mode reports that a backup would be taken and takes none.
options:
  backup_dir: {description: Folder for the dump (default backup_dir of the environment)., type: path}
  verify_restore:
    description: Also restore into a scratch database and compare row counts.
    type: bool
    default: false
  prune: {description: Apply the environment's retention afterwards., type: bool, default: false}
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team
"""

EXAMPLES = r"""
- name: Back up production
  omninode.bridge.bridge_backup:
    project_dir: /srv/bridge-db
    environment: production
    verify_restore: true
"""

RETURN = r"""
path: {description: The dump., type: str, returned: success}
manifest: {description: Its manifest., type: dict, returned: success}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import argument_spec, engine, run


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(backup_dir=dict(type="path"), verify_restore=dict(type="bool", default=False),
                                    prune=dict(type="bool", default=False)),
        supports_check_mode=True,
    )

    def body():
        from dataclasses import asdict
        from pathlib import Path

        from bridge_db.backup import prune, take_backup
        from bridge_db.connection import admin_target

        config, target, _ = engine(module)
        folder = config.backup_folder(target.environment)
        if module.params["backup_dir"]:
            folder = Path(module.params["backup_dir"])
        if module.check_mode:
            return dict(changed=True, path=None, folder=str(folder))
        result = take_backup(target, folder, verify_restore=module.params["verify_restore"],
                             admin=admin_target(target))
        pruned = []
        if module.params["prune"]:
            policy = target.environment.policy
            pruned = prune(folder, policy.keep_last, policy.keep_daily, policy.keep_weekly)
        return dict(changed=True, path=result.path, manifest=asdict(result.manifest), pruned=pruned,
                    throughput_mb_s=result.throughput_mb_s)

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
