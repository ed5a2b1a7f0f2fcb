# Copyright: OmniNode Bridge database operations team
# MIT License (see LICENSE)
# The options every omninode.bridge module shares (module_utils/bridge.py COMMON_ARGS).
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  project_dir:
    description: The project checkout (environments.toml, migrations/, src/).
    type: path
    required: true
  config:
    description:
      - Another environments file (default I(project_dir)/environments.toml).
      - Falls back to the E(BRIDGE_DB_CONFIG) environment variable, as the CLI does.
    type: path
  environment:
    description:
      - Environment name in environments.toml.
      - Falls back to the E(BRIDGE_DB_ENV) environment variable, as the CLI does.
    type: str
    required: true
  dsn:
    description:
      - libpq connection string overriding the environment's connection (never logged).
      - Falls back to the E(BRIDGE_DB_DSN) environment variable, as the CLI does.
    type: str
  migrations_dir:
    description: Folder of migration files (default from the config).
    type: path
  password:
    description:
      - The database password, e.g. from Ansible Vault (never logged). The module sets it as PGPASSWORD
        in its own process only, so it is on no command line, in no C(ps) listing and in no -vvv output.
      - Prefer C(.pgpass) or a service file on the control node when there is one.
    type: str
"""
