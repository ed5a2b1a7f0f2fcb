# Shared by the omninode.bridge modules: find the bridge_db engine, build its target, report its errors.
from __future__ import annotations

import os
import sys

COMMON_ARGS = dict(
    project_dir=dict(type="path", required=True),
    config=dict(type="path"),
    environment=dict(type="str", required=True),
    dsn=dict(type="str", no_log=True),
)


def argument_spec(**extra):
    return dict(COMMON_ARGS, **extra)


def engine(module):
    """Import bridge_db (installed, or from <project_dir>/src) and return (config, target, migrations)."""
    src = os.path.join(module.params["project_dir"], "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    try:
        import bridge_db  # noqa: F401
    except ImportError as exc:
        module.fail_json(
            msg=f"the bridge_db engine cannot be imported ({exc}) by {sys.executable}",
            next_step="install the project (pip install -e .) for this interpreter, or fix project_dir",
            exit_code=2,
        )
    from bridge_db.config import load_config
    from bridge_db.connection import resolve_target
    from bridge_db.discovery import discover_migrations

    config = load_config(module.params["config"] or os.path.join(module.params["project_dir"], "environments.toml"))
    target = resolve_target(config, module.params["environment"], module.params["dsn"])
    return config, target, discover_migrations(config.migrations_dir, warn=module.warn)  # hidden files


def run(module, body):
    """Call body(); turn the engine's errors into fail_json with cause, next step and exit code."""
    try:
        return body()
    except Exception as exc:  # the engine's errors carry what an operator needs; anything else is a bug
        from bridge_db.errors import BridgeDbError

        if isinstance(exc, BridgeDbError):
            module.fail_json(msg=exc.message, next_step=exc.next_step, exit_code=exc.exit_code, error=exc.kind)
        if type(exc).__module__.startswith("psycopg2"):
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            module.fail_json(msg=f"database error: {first}", exit_code=1, error="database")
        raise
