"""The environments file (environments.toml): loading, validation, and where each environment connects."""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import UsageError

CONFIG_FILE_NAME = "environments.toml"
ENV_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")

CONNECTION_KEYS = {
    "host",
    "port",
    "database",
    "user",
    "sslmode",
    "connect_timeout",
    "service",
    "sslrootcert",
    "sslcert",
    "sslkey",
}
# Connection keys that name files: a relative path is read against the config file's folder, not the
# folder bridge-db happens to run from (cron, Ansible).
PATH_KEYS = {"sslrootcert", "sslcert", "sslkey"}
OTHER_KEYS = {"embedded", "embedded_dir", "migrations_dir"}
# Keys that would put a secret in a versioned file.
BUILTIN_ENVIRONMENT = "default"  # the one environment when there is no environments.toml
FORBIDDEN_KEYS = {"password", "passwd", "pass", "dsn", "url"}
CHOICES = {"backup_format": ("custom", "directory"), "archive_failure": ("warn", "refuse")}
ROLE_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# The longest wait PostgreSQL's lock_timeout can express (INT_MAX milliseconds).
MAX_WAIT_SECONDS = 2_147_483
# Names that match ROLE_NAME_RE but that no grant can use: PUBLIC and NONE are not roles, CURRENT_USER
# and friends are keywords, and pg_* are predefined roles that CREATE ROLE refuses.
RESERVED_ROLE_NAMES = {"public", "none", "current_user", "current_role", "session_user"}


def reserved_role_name(name: str) -> bool:
    return name in RESERVED_ROLE_NAMES or name.startswith("pg_")


@dataclass(frozen=True)
class Policy:
    """Everything an environment decides besides where to connect. Each key may be set under
    [defaults] and overridden per environment; the type of each default is the type the file must use."""

    lock_wait_seconds: float = 60.0  # wait for another runner's lock, then exit 4
    lock_timeout_ms: int = 2000  # a DDL statement waits this long for a table lock, then its step retries
    statement_timeout_ms: int = 0  # cap on one migration statement (0 = none)
    lock_retries: int = 5  # retries of a step that hit lock_timeout, with jittered exponential backoff
    retry_backoff_ms: int = 500  # first backoff; doubles each retry, jittered, at most 30 s
    single_transaction: bool = False  # the whole plan in one transaction
    allow_reset: bool = False  # `reset` may drop schema public (dev)
    require_confirmation: bool = False  # migrate/restore ask first; without a terminal, --yes is required
    backup_before_migrate: bool = False  # production: verified backup, then one transaction
    log_dir: str = ""  # write a timestamped log of every run here ("" = none)
    admin_user: str = ""  # superuser for extensions and grants ("" = the migration user)
    extensions: tuple[str, ...] = ("uuid-ossp", "pg_stat_statements")
    owner_role: str = ""  # role that owns the schema's tables ("" = the migration user)
    app_role: str = "bridge_app"  # read-write application role
    readonly_role: str = "bridge_readonly"  # read-only role
    backup_dir: str = "backups/{env}"  # relative to the project root
    backup_format: str = "custom"  # custom (pg_dump -Fc) or directory (-Fd, with backup_jobs)
    backup_jobs: int = 2
    keep_last: int = 7  # retention: the newest N backups ...
    keep_daily: int = 7  # ... plus the newest of each of the last D days ...
    keep_weekly: int = 4  # ... plus the newest of each of the last W weeks
    # Point-in-time recovery (pgBackRest, docs/recovery.md). A production run (backup_before_migrate)
    # takes a restore point before its first DDL unless restore_points is false.
    restore_points: bool = True
    archive_failure: str = "warn"  # a failing WAL archive before a production run: warn, or refuse (exit 9)
    pitr_stanza: str = "bridge"  # the pgBackRest stanza of the environment's cluster
    pitr_config: str = ""  # pgbackrest.conf ("" = pgBackRest's own default, /etc/pgbackrest/pgbackrest.conf)
    schema_file: bool = False  # write schema.sql beside the migrations after migrate and rollback (dev)


POLICY_DEFAULTS: dict[str, object] = {f.name: f.default for f in fields(Policy)}

# What the server, the client tools and Python's dates accept, checked when the file is read: a value
# outside would fail later, in the middle of a run (a timeout PostgreSQL refuses, a retention window
# timedelta cannot hold, --jobs=0 after a whole dump).
_PG_INT_MAX = 2**31 - 1
RANGES: dict[str, tuple[int, int | None]] = {
    "lock_timeout_ms": (0, _PG_INT_MAX),
    "statement_timeout_ms": (0, _PG_INT_MAX),
    "retry_backoff_ms": (0, _PG_INT_MAX),
    "lock_retries": (0, 1000),
    "backup_jobs": (1, 1024),
    "keep_last": (0, _PG_INT_MAX),
    "keep_daily": (0, 36500),  # a century of days
    "keep_weekly": (0, 5200),  # a century of weeks
}


@dataclass(frozen=True)
class Environment:
    name: str
    connection: dict[str, object]
    policy: Policy
    embedded: bool = False
    embedded_dir: str = ".devdb"  # where an embedded cluster lives, relative to the project root


@dataclass(frozen=True)
class Config:
    path: Path
    project_root: Path
    migrations_dir: Path
    environments: dict[str, Environment] = field(default_factory=dict)
    # No environments.toml anywhere: one environment, `default`, reached through --dsn/--url,
    # $BRIDGE_DB_DSN, $DATABASE_URL or libpq's own variables, with the migrations the package carries.
    builtin: bool = False

    @property
    def default_environment(self) -> str:
        # without a file, its one environment; with one, dev as always: never whichever environment the
        # file happens to list first (which may be production) for a command run without --env
        return BUILTIN_ENVIRONMENT if self.builtin else "dev"

    def backup_folder(self, environment: Environment) -> Path:
        """backup_dir with {env} filled in, relative to the project root unless absolute."""
        folder = Path(environment.policy.backup_dir.replace("{env}", environment.name))
        return folder if folder.is_absolute() else self.project_root / folder

    def pitr_config(self, environment: Environment) -> Path | None:
        """pitr_config relative to the project root unless absolute; None: pgBackRest's own default."""
        if not environment.policy.pitr_config:
            return None
        path = Path(environment.policy.pitr_config).expanduser()
        return path if path.is_absolute() else self.project_root / path

    def environment(self, name: str) -> Environment:
        if not ENV_NAME_RE.match(name or ""):
            raise UsageError(
                f"invalid environment name {name!r}",
                f"use one of: {', '.join(self.environments)}",
            )
        try:
            return self.environments[name]
        except KeyError:
            if self.builtin:
                raise UsageError(
                    f"unknown environment {name!r}: no {CONFIG_FILE_NAME} was found, so the only one is "
                    f"{BUILTIN_ENVIRONMENT!r}",
                    f"drop --env (and $BRIDGE_DB_ENV), or pass --config with the file that defines {name!r}",
                ) from None
            raise UsageError(
                f"unknown environment {name!r}",
                f"use one of: {', '.join(self.environments)} (defined in {self.path})",
            ) from None


def working_folder() -> Path:
    """The working folder; one deleted under a running shell is a usage error, not a traceback."""
    try:
        return Path.cwd()
    except OSError as exc:
        raise UsageError(
            f"the working folder cannot be read ({exc.strerror or exc})",
            "cd into an existing folder (the project, or any folder when using --dsn/--url/$DATABASE_URL)",
        ) from None


def _refuse_foreign_config(path: Path) -> None:
    """A file found by walking up from the working folder (not named by --config) decides which server
    is reached and which SQL runs there (its migrations_dir): one that another user owns or may replace,
    e.g. /tmp/environments.toml above a run from /tmp/work, is refused, as git refuses such a repository."""
    me = os.geteuid()
    try:
        st, parent = path.stat(), path.parent.stat()
    except OSError:
        return
    others_may_replace = parent.st_mode & 0o002 and not parent.st_mode & 0o1000
    if st.st_uid not in (me, 0) or st.st_mode & 0o002 or others_may_replace:
        raise UsageError(
            f"{path} was found above the working folder, but another user owns it or may replace it: "
            "it would choose the server and the SQL this run executes",
            f"pass --config {path} (or set $BRIDGE_DB_CONFIG) if you trust it, or run from your project",
        )


def find_config_file(explicit: str | os.PathLike | None = None) -> Path | None:
    """--config, else $BRIDGE_DB_CONFIG, else environments.toml in the working folder or a parent,
    else the one in the checkout this package was installed from (editable install); else None."""
    candidate = explicit or os.environ.get("BRIDGE_DB_CONFIG")
    if candidate:
        path = Path(candidate)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}", "pass an existing file to --config")
        return path
    here = working_folder()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE_NAME).is_file():
            _refuse_foreign_config(folder / CONFIG_FILE_NAME)
            return folder / CONFIG_FILE_NAME
    # an editable install runs from <checkout>/src/bridge_db; an installed package must not look two
    # folders up (`pip install --target /tmp/pkgs` would read /tmp/environments.toml)
    package = Path(__file__).resolve().parent
    checkout = package.parents[1] / CONFIG_FILE_NAME
    if package.parent.name != "src" or not (package.parents[1] / "pyproject.toml").is_file():
        return None
    if checkout.is_file():
        _refuse_foreign_config(checkout)
        return checkout
    return None


def packaged_migrations() -> Path:
    """The Bridge migrations this package carries (bridge_db/migrations in a wheel), or the checkout's
    migrations/ when it runs from one."""
    here = Path(__file__).resolve().parent
    if (here / "migrations").is_dir():
        return here / "migrations"
    # a checkout's own (src/bridge_db beside pyproject.toml) only: an installed package whose migrations
    # are missing must not take <install>/../migrations (/tmp/migrations for pip install --target /tmp/pkgs)
    if here.parent.name == "src" and (here.parents[1] / "pyproject.toml").is_file():
        if (here.parents[1] / "migrations").is_dir():
            return here.parents[1] / "migrations"
    return here / "migrations"  # discovery says what is missing


def builtin_config() -> Config:
    """The configuration without a file: see Config.builtin."""
    environment = Environment(name=BUILTIN_ENVIRONMENT, connection={"connect_timeout": 10}, policy=Policy())
    return Config(
        path=working_folder() / CONFIG_FILE_NAME,
        project_root=working_folder(),
        migrations_dir=packaged_migrations(),
        environments={BUILTIN_ENVIRONMENT: environment},
        builtin=True,
    )


def load_config(explicit: str | os.PathLike | None = None) -> Config:
    path = find_config_file(explicit)
    if path is None:
        return builtin_config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: malformed config: {exc}", "fix the TOML syntax of the file") from None
    return parse_config(data, path)


def parse_config(data: dict, path: Path) -> Config:
    unknown = set(data) - {"defaults", "environments"}
    if unknown:
        raise UsageError(
            f"{path}: unknown top-level keys {sorted(unknown)}", "allowed: [defaults], [environments.NAME]"
        )
    defaults = data.get("defaults", {})
    envs = data.get("environments", {})
    if not isinstance(defaults, dict) or not isinstance(envs, dict) or not envs:
        raise UsageError(f"{path}: needs at least one [environments.NAME] table", "see README: Environments")
    _check_keys(path, "defaults", defaults)

    root = path.resolve().parent
    migrations_dir = root / str(defaults.get("migrations_dir", "migrations"))
    environments = {}
    for name, settings in envs.items():
        if not ENV_NAME_RE.match(name):
            raise UsageError(f"{path}: invalid environment name {name!r}", "use lower case letters, digits, - and _")
        if not isinstance(settings, dict):
            raise UsageError(f"{path}: [environments.{name}] must be a table", "see README: Environments")
        _check_keys(path, f"environments.{name}", settings)
        if "migrations_dir" in settings:  # one history, one folder: it was silently ignored here before
            raise UsageError(
                f"{path}: [environments.{name}] sets migrations_dir, which only [defaults] can set "
                "(every environment applies the same migrations)",
                "move migrations_dir to [defaults], or pass --migrations-dir",
            )
        merged = {**POLICY_DEFAULTS, "connect_timeout": 10, **defaults, **settings}
        connection = {k: _connection_value(path, name, k, merged[k]) for k in CONNECTION_KEYS if k in merged}
        if "database" not in connection and "service" not in connection:
            raise UsageError(f"{path}: [environments.{name}] has no database", 'add database = "omninode_bridge"')
        policy = Policy(**{key: _typed(path, name, key, merged[key]) for key in POLICY_DEFAULTS})
        environments[name] = Environment(
            name=name,
            connection=connection,
            policy=policy,
            embedded=_typed(path, name, "embedded", merged.get("embedded", False), False),
            embedded_dir=_typed(path, name, "embedded_dir", merged.get("embedded_dir", ".devdb"), ".devdb"),
        )
    return Config(path=path, project_root=root, migrations_dir=migrations_dir, environments=environments)


def _check_keys(path: Path, section: str, table: dict) -> None:
    for key in table:
        if key.lower() in FORBIDDEN_KEYS:
            raise UsageError(
                f"{path}: [{section}] sets {key!r}: secrets never live in this file",
                "remove it; use PGPASSWORD, ~/.pgpass, a pg_service.conf entry or Ansible Vault",
            )
    unknown = set(table) - CONNECTION_KEYS - set(POLICY_DEFAULTS) - OTHER_KEYS
    if unknown:
        raise UsageError(
            f"{path}: [{section}] has unknown keys {sorted(unknown)}",
            f"allowed: {', '.join(sorted(CONNECTION_KEYS | set(POLICY_DEFAULTS) | OTHER_KEYS))}",
        )


def _connection_value(path: Path, env: str, key: str, value: object) -> object:
    """libpq parameters, checked here so that a wrong type is a configuration error (exit 2), not a
    failed connection."""
    where = f"{path}: [environments.{env}] {key}"
    if key == "port":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise UsageError(f"{where} must be a port number from 1 to 65535", "e.g. port = 5432")
    elif key == "connect_timeout":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WAIT_SECONDS:
            raise UsageError(f"{where} must be a whole number of seconds", "e.g. connect_timeout = 10")
    elif not isinstance(value, str) or not value or "\0" in value:
        raise UsageError(f"{where} must be a non-empty string", f'e.g. {key} = "..."')
    elif key == "sslmode" and value not in SSLMODES:
        raise UsageError(f"{where} must be one of {', '.join(SSLMODES)}", 'e.g. sslmode = "verify-full"')
    elif key in PATH_KEYS:
        # "system" is libpq's own word for the system's CA store (sslrootcert only), not a path
        if not (key == "sslrootcert" and value == "system"):
            return str(path.parent / Path(value).expanduser())  # an absolute value stays as it is
    return value


def _check_backup_dir(where: str, value: str) -> None:
    """backup_dir may hold {env} and nothing else in braces: anything else would fail later, in every
    command that reads the folder."""
    try:
        import string

        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise UsageError(f"{where}: {value!r} is not a valid folder template ({exc})", 'e.g. "backups/{env}"') from None
    if any(f != "env" for f in fields):
        raise UsageError(
            f"{where}: {value!r} uses a placeholder other than {{env}}",
            'only {env} is filled in (the environment name), e.g. backup_dir = "backups/{env}"',
        )


def _typed(path: Path, env: str, key: str, value: Any, default: object = None) -> Any:
    """Check `value` against the type of the key's default; role names and choices too."""
    default = POLICY_DEFAULTS.get(key, default)
    where = f"{path}: [environments.{env}] {key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"{where} must be true or false", f"e.g. {key} = {str(default).lower()}")
    elif isinstance(default, (int, float)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
            or (isinstance(default, int) and value != int(value))
        ):
            raise UsageError(f"{where} must be a finite, non-negative number", f"e.g. {key} = {default}")
        if key == "lock_wait_seconds" and value > MAX_WAIT_SECONDS:
            raise UsageError(f"{where} must be at most {MAX_WAIT_SECONDS}", f"e.g. {key} = {default}")
        low, high = RANGES.get(key, (0, None))
        if value < low or (high is not None and value > high):
            raise UsageError(
                f"{where} must be from {low} to {high}" if high is not None else f"{where} must be at least {low}",
                f"e.g. {key} = {default}",
            )
        value = type(default)(value)
    elif isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{where} must be a list of names", f"e.g. {key} = {list(default)}")
        value = tuple(value)
    elif not isinstance(value, str):
        raise UsageError(f"{where} must be a string", f'e.g. {key} = "{default}"')
    if key == "backup_dir":
        _check_backup_dir(where, value)
    if key in CHOICES and value not in CHOICES[key]:
        raise UsageError(f"{where} must be one of {', '.join(CHOICES[key])}", f'e.g. {key} = "{CHOICES[key][0]}"')
    if key.endswith("_role") and value and not ROLE_NAME_RE.match(value):
        raise UsageError(
            f"{where}: {value!r} is not a valid role name",
            "use lower case letters, digits and _ (at most 63), starting with a letter or _",
        )
    if key.endswith("_role") and value and reserved_role_name(value):
        raise UsageError(
            f"{where}: {value!r} is reserved by PostgreSQL (PUBLIC, NONE, CURRENT_USER ... and pg_* roles)",
            "name a role of your own, e.g. bridge_app",
        )
    return value
