#!/usr/bin/python
# Copyright: OmniNode Bridge database operations team
# MIT License (see LICENSE)
"""One verified backup of the OmniNode Bridge database, with its manifest."""
from __future__ import annotations

DOCUMENTATION = r"""
module: bridge_backup
short_description: Back up the OmniNode Bridge database
description:
  - pg_dump into the environment's backup folder, read back with pg_restore --list, manifest beside it.
  - Check mode reports that a backup would be taken and takes none.
options:
  backup_dir:
    description: Folder for the dump (default backup_dir of the environment).
    type: path
  format:
    description: C(custom) (pg_dump -Fc) or C(directory) (-Fd, parallel); default the environment's backup_format.
    type: str
    choices: [custom, directory]
  jobs:
    description: Parallel jobs for the directory format.
    type: int
  verify_restore:
    description: Also restore into a scratch database and compare row counts.
    type: bool
    default: false
  globals:
    description: Also dump roles (pg_dumpall --globals-only, without password hashes).
    type: bool
    default: false
  admin_dsn:
    description:
      - Connection for scratch databases and globals (never logged; default the environment's admin_user).
      - Falls back to the E(BRIDGE_DB_ADMIN_DSN) environment variable, as the CLI does.
    type: str
  status_file:
    description: Write the time and result of this backup here (JSON), failures included, for monitoring.
    type: path
  prune:
    description: Apply the environment's retention afterwards.
    type: bool
    default: false
extends_documentation_fragment: [omninode.bridge.bridge]
author: OmniNode Bridge database operations team (@omninode)
"""

EXAMPLES = r"""
- name: Back up production
  omninode.bridge.bridge_backup:
    project_dir: /srv/bridge-db
    environment: production
    verify_restore: true
"""

RETURN = r"""
path:
  description: The dump (none in check mode).
  type: str
  returned: success
  sample: /srv/bridge-db/backups/production/omninode_bridge-20261124T020000Z.dump
folder:
  description: The backup folder.
  type: str
  returned: success
  sample: /srv/bridge-db/backups/production
manifest:
  description: The dump's manifest (sha256, size, migration head, verification).
  type: dict
  returned: when a backup was taken
  sample: {"sha256": "9f2c...", "size_bytes": 1048576, "migration_head": 7, "verified": "pg_restore --list"}
pruned:
  description: Files deleted by retention (I(prune=true)).
  type: list
  elements: str
  returned: when a backup was taken
  sample: []
throughput_mb_s:
  description: Dump size over wall time.
  type: float
  returned: when a backup was taken
  sample: 84.2
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.omninode.bridge.plugins.module_utils.bridge import ADMIN_DSN, argument_spec, bridge, run

ARGUMENT_SPEC = argument_spec(
    backup_dir=dict(type="path"),
    format=dict(type="str", choices=["custom", "directory"]),
    jobs=dict(type="int"),
    verify_restore=dict(type="bool", default=False),
    globals=dict(type="bool", default=False),
    admin_dsn=ADMIN_DSN,
    status_file=dict(type="path"),
    prune=dict(type="bool", default=False),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)

    def body():
        from dataclasses import asdict

        p = module.params
        facade = bridge(module)
        folder = str(facade.backup_folder)
        if module.check_mode:
            return dict(changed=True, path=None, folder=folder)
        result = facade.backup(format=p["format"], jobs=p["jobs"], verify_restore=p["verify_restore"],
                               globals=p["globals"], admin_dsn=p["admin_dsn"], status_file=p["status_file"],
                               prune=p["prune"])
        return dict(changed=True, path=result.path, folder=folder, manifest=asdict(result.manifest),
                    pruned=result.pruned, throughput_mb_s=result.throughput_mb_s)

    module.exit_json(**run(module, body))


if __name__ == "__main__":
    main()
