# Copyright: OmniNode Bridge database operations team
# MIT License (see LICENSE)
"""Shared by the omninode.bridge modules: find the bridge_db engine, open its facade, report its errors.

The argument specs are written out here and in each module (Ansible ships them to the host before the
engine can be imported); tests/test_frontends.py checks them against bridge_db.options, the table the CLI
and Invoke are generated from."""

from __future__ import annotations

import os
import sys

from ansible.module_utils.basic import env_fallback

COMMON_ARGS = dict(
    project_dir=dict(type="path", required=True),
    config=dict(type="path", fallback=(env_fallback, ["BRIDGE_DB_CONFIG"])),
    # required here (a fleet run names its environment), but $BRIDGE_DB_ENV satisfies it, as for the CLI
    environment=dict(type="str", required=True, fallback=(env_fallback, ["BRIDGE_DB_ENV"])),
    dsn=dict(type="str", no_log=True, fallback=(env_fallback, ["BRIDGE_DB_DSN"])),
    migrations_dir=dict(type="path"),
    # The database password (from Ansible Vault). A no_log module parameter travels inside the module's
    # payload, never on a command line; the module puts it into its own process environment (PGPASSWORD)
    # for libpq and the client tools it starts, so it shows neither in `ps` nor in -vvv output.
    password=dict(type="str", no_log=True),
)
ADMIN_DSN = dict(type="str", no_log=True, fallback=(env_fallback, ["BRIDGE_DB_ADMIN_DSN"]))


def argument_spec(**extra):
    return dict(COMMON_ARGS, **extra)


def import_engine(module):
    """Make bridge_db importable (installed, or from <project_dir>/src), or fail with the next step."""
    src = os.path.join(module.params["project_dir"], "src")
    if os.path.isdir(src) and src not in sys.path:
        sys.path.insert(0, src)
    try:
        import bridge_db  # noqa: F401  # pylint: disable=unused-import
    except ImportError as exc:
        module.fail_json(
            msg=f"the bridge_db engine is not installed for {sys.executable} and not found in {src} ({exc})",
            next_step=f"install the project for that interpreter ({sys.executable} -m pip install <project checkout>), "
            "point ansible_python_interpreter at the project's .venv/bin/python, or fix project_dir",
            exit_code=7,
            error="prerequisite",
        )


def bridge(module):
    """The facade for the module's environment: config, target, migrations and folders resolved once."""
    import_engine(module)
    from bridge_db.api import Bridge

    p = module.params
    config = p["config"] or os.path.join(p["project_dir"], "environments.toml")
    return Bridge(
        p["environment"],
        p["dsn"] or None,  # empty ($BRIDGE_DB_DSN="", a template that rendered nothing): the environment's own
        config,
        p.get("migrations_dir"),
        p.get("backup_dir"),
        warn=module.warn,  # hidden files, the DSN's own sslmode, ...
    )


def run(module, body):
    """Call body(); turn the engine's errors into fail_json with cause, next step and exit code."""
    import_engine(module)
    if module.params.get("password"):
        os.environ["PGPASSWORD"] = module.params["password"]  # this process and its children only
    from bridge_db.errors import BridgeDbError

    try:
        return body()
    except BridgeDbError as exc:
        module.fail_json(msg=exc.message, next_step=exc.next_step, exit_code=exc.exit_code, error=exc.kind)
    except Exception as exc:  # the engine's errors carry what an operator needs; anything else is a bug
        if type(exc).__module__.startswith("psycopg2"):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            module.fail_json(msg=f"database error: {first}", exit_code=1, error="database")
        raise
    return None
