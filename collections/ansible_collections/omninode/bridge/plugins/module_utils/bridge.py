# Shared by the omninode.bridge modules: find the bridge_db engine, build its target, report its errors.
from __future__ import annotations

import os
import sys

COMMON_ARGS = dict(
    project_dir=dict(type="path", required=True),
    config=dict(type="path"),
    environment=dict(type="str", required=True),
    dsn=dict(type="str", no_log=True),
    # The database password (from Ansible Vault). A no_log module parameter travels inside the module's
    # payload, never on a command line; the module puts it into its own process environment (PGPASSWORD)
    # for libpq and the client tools it starts, so it shows neither in `ps` nor in -vvv output.
    password=dict(type="str", no_log=True),
)


def argument_spec(**extra):
    return dict(COMMON_ARGS, **extra)


def import_engine(module):
    """Make bridge_db importable (installed, or from <project_dir>/src), or fail with the next step."""
    src = os.path.join(module.params["project_dir"], "src")
    if os.path.isdir(src) and src not in sys.path:
        sys.path.insert(0, src)
    try:
        import bridge_db  # noqa: F401
    except ImportError as exc:
        module.fail_json(
            msg=f"the bridge_db engine is not installed for {sys.executable} and not found in {src} ({exc})",
            next_step=f"install the project for that interpreter ({sys.executable} -m pip install <project checkout>), "
            "point ansible_python_interpreter at the project's .venv/bin/python, or fix project_dir",
            exit_code=7,
            error="prerequisite",
        )


def engine(module):
    """(config, target, migrations) for the module's environment."""
    import_engine(module)
    from bridge_db.config import load_config
    from bridge_db.connection import resolve_target
    from bridge_db.discovery import discover_migrations

    config = load_config(module.params["config"] or os.path.join(module.params["project_dir"], "environments.toml"))
    target = resolve_target(config, module.params["environment"], module.params["dsn"])
    for note in target.notes:  # e.g. the DSN's own sslmode replaces the environment's
        module.warn(note)
    return config, target, discover_migrations(config.migrations_dir, warn=module.warn)  # hidden files


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
