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
    description: Another environments file (default project_dir/environments.toml).
    type: path
  environment:
    description: Environment name in environments.toml.
    type: str
    required: true
  dsn:
    description: libpq connection string overriding the environment's connection (never logged).
    type: str
  password:
    description:
      - The database password, e.g. from Ansible Vault (never logged). The module sets it as PGPASSWORD
        in its own process only, so it is on no command line, in no C(ps) listing and in no -vvv output.
      - Prefer C(.pgpass) or a service file on the control node when there is one.
    type: str
"""
