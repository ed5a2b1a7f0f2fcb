"""Where to connect (a Target resolved from the environments file), opening the connection, and the
session advisory lock that serialises migration runners on one database."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from .config import MAX_WAIT_SECONDS, Config, Environment
from .errors import BridgeDbError, ConnectionFailed, LockTimeout, UsageError

if TYPE_CHECKING:
    from .embedded import EmbeddedCluster

DSN_ENV_VAR = "BRIDGE_DB_DSN"
URL_ENV_VAR = "DATABASE_URL"  # as dbmate, Rails and Heroku read it; used only without environments.toml
# libpq's connection variables: honoured by libpq itself when no environment names a connection.
LIBPQ_TARGET_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
ADMIN_DSN_ENV_VAR = "BRIDGE_DB_ADMIN_DSN"
APPLICATION_NAME = "bridge-db"

# One lock per database (advisory locks are scoped to the current database).
LOCK_KEY = int.from_bytes(hashlib.sha256(b"omninode_bridge.schema_migrations").digest()[:8], "big", signed=True)


_LABEL_ENV = {"host": "PGHOST", "port": "PGPORT", "dbname": "PGDATABASE", "user": "PGUSER", "service": "PGSERVICE"}


@dataclass(frozen=True)
class Target:
    """A database to work on: the environment's policy plus libpq parameters. Never holds a password
    unless the user passed one in --dsn, and `label` never shows one."""

    environment: Environment
    params: dict[str, Any]
    dsn: str | None = None
    embedded: EmbeddedCluster | None = field(default=None, compare=False)  # started on demand
    # True when --dsn / $BRIDGE_DB_DSN reaches a database that is not this environment's own (nor any
    # other environment's): destructive verbs then ask first, naming the database.
    foreign: bool = False
    notes: tuple[str, ...] = ()  # what the user should know about how the target was resolved
    # --wait / --wait-timeout: keep trying to connect this long (seconds) before giving up with exit 3
    wait_seconds: float = field(default=0.0, compare=False)

    @property
    def label(self) -> str:
        p = self.params
        if self.dsn is not None:
            p = {**_safe_dsn_params(self.dsn), **{k: v for k, v in p.items() if k != "application_name"}}
        # libpq's own fallbacks (PGHOST, ...), so that the label says where the connection goes
        from_env = {k: os.environ[v] for k, v in _LABEL_ENV.items() if os.environ.get(v)}
        p = {**from_env, **{k: v for k, v in p.items() if v}}
        host = p.get("host") or "(default socket)"
        where = f"{host}:{p.get('port', 5432)}/{p.get('dbname', '?')}"
        if p.get("service"):
            where = f"service={p['service']}"
        user = f" as {p['user']}" if p.get("user") else ""
        kind = " (embedded)" if self.embedded is not None else ""
        return f"{self.environment.name}{kind}: {where}{user}"

    @property
    def user(self) -> str | None:
        """The login role, as far as it can be known before connecting."""
        if self.dsn is not None:
            return _safe_dsn_params(self.dsn).get("user") or os.environ.get("PGUSER") or _os_login()
        return self.params.get("user") or os.environ.get("PGUSER") or _os_login()

    @property
    def database(self) -> str | None:
        if self.dsn is not None:
            return _safe_dsn_params(self.dsn).get("dbname") or os.environ.get("PGDATABASE")
        return self.params.get("dbname")


def resolve_target(config: Config, env_name: str, dsn: str | None = None) -> Target:
    """The environment's connection, unless --dsn (or $BRIDGE_DB_DSN) overrides it.

    An embedded environment without an override connects to the project-local cluster. An override
    gets the policy of the database it actually reaches: the environment's own, another environment's
    when it names that one's database, else the environment's marked `foreign`, so that destructive
    verbs ask first. The environment's sslmode is kept unless the DSN states its own.
    """
    environment = config.environment(env_name)
    early_notes: list[str] = []
    if dsn is None:  # an empty variable (a CI secret that is not set) is unset, not "libpq's defaults"
        dsn = os.environ.get(DSN_ENV_VAR) or None
    if dsn is None and os.environ.get(URL_ENV_VAR):
        if config.builtin:
            dsn = os.environ[URL_ENV_VAR]
        else:
            early_notes.append(
                f"{URL_ENV_VAR} is set but not used: {config.path} defines environment {environment.name}; "
                f'pass --url "${URL_ENV_VAR}" to use it'
            )
    if dsn is not None:
        parsed = _safe_dsn_params(dsn)  # validate early, without echoing the string
        reached = _endpoint(parsed)
        owner: Environment | None = environment
        if reached != _own_endpoint(config, environment):
            matches = [e for e in config.environments.values() if _own_endpoint(config, e) == reached]
            # the strictest of them, should two environments name the same database
            matches.sort(key=lambda e: (e.policy.require_confirmation, e.policy.backup_before_migrate), reverse=True)
            owner = matches[0] if matches else None
        notes: list[str] = list(early_notes)
        if owner is not None and owner is not environment:
            notes.append(
                f"the DSN names environment {owner.name}'s database: {owner.name}'s policy applies, "
                f"not {environment.name}'s"
            )
        policy_env = owner or environment
        extra: dict[str, Any] = {"application_name": APPLICATION_NAME}
        if "connect_timeout" not in parsed:
            extra["connect_timeout"] = policy_env.connection.get("connect_timeout", 10)
        env_sslmode = policy_env.connection.get("sslmode")
        if env_sslmode and "sslmode" not in parsed:
            extra["sslmode"] = env_sslmode
        elif env_sslmode and parsed.get("sslmode") != env_sslmode:
            notes.append(f"the DSN's sslmode={parsed['sslmode']} replaces {policy_env.name}'s sslmode={env_sslmode}")
        # and its certificates: a DSN for production's server must not fall back to ~/.postgresql/root.crt
        extra.update(_tls_files(policy_env, parsed))
        # without a config no environment owns any database: however it is named (--url, $DATABASE_URL
        # or PG* variables), a rollback asks first, naming it
        return Target(policy_env, extra, dsn=dsn, foreign=owner is None or config.builtin, notes=tuple(notes))

    if config.builtin and not any(os.environ.get(var) for var in LIBPQ_TARGET_VARS):
        # no file, no DSN, no URL, no PG* variable: libpq would pick the local socket and a database named
        # after the OS user, and a forgotten `export DATABASE_URL` would migrate that one
        raise UsageError(
            f"no database given: there is no {config.path.name} here or above, and neither --dsn/--url, "
            f"${DSN_ENV_VAR}, ${URL_ENV_VAR} nor a PGHOST/PGDATABASE/PGSERVICE variable names one",
            f'pass --url "postgresql://USER@HOST:PORT/DATABASE", set {URL_ENV_VAR}, or run inside a project',
        )
    params, cluster = _own_params(config, environment)
    if cluster is None and params.get("host") and not params.get("service") and os.environ.get("PGHOSTADDR"):
        # libpq connects to PGHOSTADDR instead of the host the environment names (which then only serves
        # TLS and .pgpass): a variable left in a shell would send production's run to another server
        # under production's label. An explicit empty hostaddr keeps libpq (and pg_dump) off it.
        params["hostaddr"] = ""
        early_notes.append(
            f"PGHOSTADDR is set but not used: environment {environment.name} names its host "
            f"({params['host']}); pass --dsn \"host=... hostaddr=...\" to pin an address"
        )
    ignored = [var for var in LIBPQ_TARGET_VARS if os.environ.get(var)]
    if cluster is not None and ignored:
        early_notes.append(
            f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} set but not used: {environment.name} is "
            "the embedded dev database; pass --dsn (or run outside a project, with no environments.toml) to use them"
        )
    return Target(environment, params, embedded=cluster, foreign=config.builtin, notes=tuple(early_notes))


def _own_params(config: Config, environment: Environment) -> tuple[dict[str, Any], EmbeddedCluster | None]:
    """The libpq parameters of the environment's own database, and its embedded cluster if any."""
    params: dict[str, Any] = {"application_name": APPLICATION_NAME}
    for key, value in environment.connection.items():
        params["dbname" if key == "database" else key] = value
    if not environment.embedded:
        return params, None
    from .embedded import EmbeddedCluster

    cluster = EmbeddedCluster.for_project(
        config.project_root, port=int(str(params.get("port", 54329))), folder=environment.embedded_dir
    )
    params.update(cluster.connection_params())
    return params, cluster


def _own_endpoint(config: Config, environment: Environment) -> tuple[str, ...] | None:
    """Which database the environment's own connection reaches; None when that cannot be known here
    (e.g. an embedded cluster with no user to run it): then no DSN is taken for it."""
    try:
        return _endpoint(_own_params(config, environment)[0])
    except BridgeDbError:
        return None


def _endpoint(params: dict) -> tuple[str, ...]:
    """Which database a set of libpq parameters reaches, with libpq's own fallbacks (PGHOST, ...)."""

    def value(key: str, var: str, default: str = "") -> str:
        v = params.get(key)
        if v == "" and key == "hostaddr":  # explicitly none: libpq then ignores PGHOSTADDR
            return ""
        return str(v) if v not in (None, "") else os.environ.get(var, default)

    service = value("service", "PGSERVICE")
    user = value("user", "PGUSER") or (_os_login() or "")
    # libpq connects to hostaddr when it is given (host then only names the server for TLS and .pgpass):
    # both are part of where a connection goes, so a DSN with the same host but another address differs.
    return (
        service,
        value("host", "PGHOST"),
        value("hostaddr", "PGHOSTADDR"),
        value("port", "PGPORT", "5432"),
        value("dbname", "PGDATABASE") or user,
    )


def with_database(target: Target, dbname: str) -> Target:
    """The same server and credentials, another database (a scratch or maintenance database)."""
    if target.dsn is not None:
        params = psycopg2.extensions.parse_dsn(target.dsn)
        params["dbname"] = dbname
        return replace(target, dsn=psycopg2.extensions.make_dsn(**params))
    return replace(target, params={**target.params, "dbname": dbname})


# libpq keyword -> environment variable, for child processes (pg_dump, pg_restore): nothing in argv.
LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    # every other key libpq reads from the environment: a DSN's security settings reach pg_dump and
    # pg_restore too, never only the engine's own connection
    "servicefile": "PGSERVICEFILE",
    "require_auth": "PGREQUIREAUTH",
    "channel_binding": "PGCHANNELBINDING",
    "requiressl": "PGREQUIRESSL",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcertmode": "PGSSLCERTMODE",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}


def libpq_environment(target: Target) -> dict[str, str]:
    """os.environ for a libpq client program that connects to `target`, passwords included, so that
    no secret ever appears in a process's argv."""
    env = dict(os.environ)  # what the user set for libpq (PGPASSWORD, PGPASSFILE, ...) still applies
    params = dict(psycopg2.extensions.parse_dsn(target.dsn)) if target.dsn is not None else {}
    params.update({k: str(v) for k, v in target.params.items()})
    for key, value in params.items():
        if key in LIBPQ_ENV and value not in (None, ""):
            env[LIBPQ_ENV[key]] = str(value)
        elif key == "hostaddr" and value == "":  # explicitly none, as for the engine's own connection
            env.pop(LIBPQ_ENV[key], None)
    return env


def admin_target(target: Target, admin_dsn: str | None = None) -> Target:
    """The same database through the admin connection used for extensions and grants:
    --admin-dsn (or $BRIDGE_DB_ADMIN_DSN), else the environment's admin_user, else the target itself."""
    if not admin_dsn:  # empty (an unset CI secret, an Ansible template that rendered nothing) is unset
        admin_dsn = os.environ.get(ADMIN_DSN_ENV_VAR) or None
    if admin_dsn is not None:
        given = _safe_dsn_params(admin_dsn)
        # The same database, through another login: the admin DSN brings server and credentials, the
        # database stays the target's (an admin DSN without dbname would reach libpq's default, e.g.
        # `postgres`, and grant or create extensions there).
        if target.database and given.get("dbname") != target.database:
            admin_dsn = psycopg2.extensions.make_dsn(admin_dsn, dbname=target.database)
        params: dict[str, Any] = {"application_name": APPLICATION_NAME}
        sslmode = target.environment.connection.get("sslmode")
        if sslmode and "sslmode" not in parse_conninfo(admin_dsn):
            params["sslmode"] = sslmode
        params.update(_tls_files(target.environment, parse_conninfo(admin_dsn)))
        return replace(target, params=params, dsn=admin_dsn)
    admin_user = target.environment.policy.admin_user
    if not admin_user or target.dsn is not None:
        return target
    return replace(target, params={**target.params, "user": admin_user})


def _tls_files(environment: Environment, given: dict[str, str]) -> dict[str, Any]:
    """The environment's sslrootcert (and client certificate and key) that a DSN does not state itself."""
    return {
        k: v for k in ("sslrootcert", "sslcert", "sslkey") if (v := environment.connection.get(k)) and k not in given
    }


def _os_login() -> str | None:
    import getpass

    try:
        return getpass.getuser()
    except Exception:
        return None


URI_PREFIXES = ("postgresql://", "postgres://")


def parse_conninfo(dsn: str) -> dict[str, str]:
    """libpq's own reading of a connection string or URI (password included), or UsageError without
    echoing the string. A URI whose user or password holds an unencoded `/` or `@` is refused: libpq
    reads part of the password as host, port or database name, which would then be printed."""
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        # The libpq message may quote the string, password included: do not repeat it.
        raise UsageError(
            "the DSN is not a valid libpq connection string or postgresql:// URI",
            "check --dsn / $BRIDGE_DB_DSN (e.g. 'host=db.example port=5432 dbname=omninode_bridge user=me')",
        ) from None
    if dsn.lstrip().startswith(URI_PREFIXES):
        location = [parsed.get(k, "") for k in ("host", "hostaddr", "port", "dbname")]
        ports = parsed.get("port", "").split(",")
        if any("@" in v for v in location) or any(p and not p.isdigit() for p in ports):
            raise UsageError(
                "the URI does not parse as intended: its user or password holds an unencoded '/' or '@', "
                "so libpq would read part of it as host, port or database",
                "percent-encode them in the URI ('/' as %2F, '@' as %40), or use the key=value form and "
                "give the password through PGPASSWORD or ~/.pgpass",
            )
    return parsed


def dsn_secrets(dsn: str | None) -> list[str]:
    """The password a DSN carries, as libpq reads it (for redaction); [] when none or unparsable."""
    if not dsn:
        return []
    try:
        password = psycopg2.extensions.parse_dsn(dsn).get("password")
    except psycopg2.ProgrammingError:
        return []
    return [password] if password else []


def _safe_dsn_params(dsn: str) -> dict[str, str]:
    parsed = parse_conninfo(dsn)
    parsed.pop("password", None)
    # What libpq itself falls back to, so that the label names the real target.
    for key, var in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("dbname", "PGDATABASE"),
        ("user", "PGUSER"),
        ("service", "PGSERVICE"),
    ):
        if key not in parsed and os.environ.get(var):
            parsed[key] = os.environ[var]
    return parsed


# A session of ours that idles by design (holding the migration lock while a backup runs or a person
# confirms, exporting pg_dump's snapshot for the whole dump, keeping a scratch database's mark) must not
# be ended by a database- or role-level idle timeout. Read from pg_settings: PostgreSQL 13 has no
# idle_session_timeout.
NO_IDLE_TIMEOUTS = (
    "SELECT set_config(name, '0', false) FROM pg_settings "
    "WHERE name IN ('idle_session_timeout', 'idle_in_transaction_session_timeout')"
)


def connect(target: Target, *, start_embedded: bool = True):
    """An autocommit connection (the engine issues BEGIN/COMMIT itself), or ConnectionFailed.

    For the embedded dev cluster, a failed first attempt starts the cluster and tries once more, so a
    no-op run on a running cluster costs one connection and no process spawn. With `target.wait_seconds`
    (--wait), a failed attempt is retried with backoff until the server accepts the connection or the
    time is up; a wrong password or certificate is not retried (waiting cannot mend it).
    """
    try:
        return _open(target)
    except psycopg2.OperationalError as exc:
        if target.embedded is None or not start_embedded:
            if target.wait_seconds > 0 and _worth_waiting(exc):
                return _wait_for_server(target, exc)
            raise _connection_failed(target, exc) from None
    target.embedded.up(database=target.database)
    try:
        return _open(target)
    except psycopg2.OperationalError as exc:
        if target.wait_seconds > 0 and _worth_waiting(exc):
            return _wait_for_server(target, exc)
        raise _connection_failed(target, exc) from None


# Failures that waiting cannot mend: the server answered, and said no.
_FINAL = ("password authentication failed", "no password supplied", "certificate", "SSL", "no pg_hba.conf entry")


def _worth_waiting(exc: Exception) -> bool:
    return not any(word in str(exc) for word in _FINAL)


def _wait_for_server(target: Target, first: Exception):
    """Retry connecting with exponential backoff (0.1 s doubling, at most 2 s) until target.wait_seconds
    have passed since the first attempt; then ConnectionFailed naming the last error and the attempts."""
    import time

    deadline = time.monotonic() + target.wait_seconds
    delay, attempts, last = 0.1, 1, first
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)
        attempts += 1
        try:
            return _open(target)
        except psycopg2.OperationalError as exc:
            last = exc
            if not _worth_waiting(exc):
                break
    failed = _connection_failed(target, last)
    failed.message += f" (after waiting {target.wait_seconds:g} s, {attempts} attempts)"
    if _worth_waiting(last):
        failed.next_step = f"{failed.next_step}; or wait longer with --wait-timeout SECONDS"
    raise failed from None


@contextmanager
def cursor_for(target: Target, *, start_embedded: bool = True):
    """A cursor on a fresh autocommit connection, closed afterwards: for short, single-purpose work."""
    conn = connect(target, start_embedded=start_embedded)
    try:
        with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def _open(target: Target):
    if target.dsn is not None:
        conn = psycopg2.connect(target.dsn, **target.params)
    else:
        conn = psycopg2.connect(**target.params)
    conn.autocommit = True
    return conn


# libpq's words for a cause that is worth more than "Connection refused" from another of the host's
# addresses (localhost as ::1, then 127.0.0.1) or another host of a multi-host string
_TELLING = (
    "password authentication failed",
    "no password supplied",
    "root certificate file",
    "does not match host name",
    "certificate verify failed",
    "SSL error",
    "server does not support SSL",
    "does not exist",
)


def _connection_failed(target: Target, exc: Exception) -> ConnectionFailed:
    import shlex

    text = str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()] or ["unknown error"]
    first_line = next((ln for ln in lines if any(word in ln for word in _TELLING)), lines[0])
    notes: list[str] = []
    if "password authentication failed" in text or "no password supplied" in text:
        if "no password supplied" in text:
            hint = "provide the password via PGPASSWORD, ~/.pgpass or a service file (never in environments.toml)"
        else:
            hint = (
                "the password is wrong: fix PGPASSWORD, or the .pgpass line (host:port:database:user:password) "
                "that matches this host, port and user"
            )
        unsafe = _ignored_passfile()
        if unsafe is not None:
            notes.append(
                f"{unsafe} was not read: libpq ignores a password file that group or others may read; "
                f"chmod 0600 {shlex.quote(unsafe)}"
            )
            hint = f"chmod 0600 {shlex.quote(unsafe)} (libpq ignored it), or set PGPASSWORD"
    elif "root certificate file" in text and "does not exist" in text:
        hint = (
            "set sslrootcert in environments.toml (or PGSSLROOTCERT) to the CA certificate that signed the "
            "server's certificate; sslmode verify-ca/verify-full cannot check the server without it"
        )
    elif "does not match host name" in text:
        hint = (
            "connect by a host name the server's certificate names (host in environments.toml or --dsn), "
            "or have the server's certificate issued for this name"
        )
    elif "certificate verify failed" in text or ("certificate" in text and "SSL error" in text):
        hint = (
            "sslrootcert does not hold the CA that signed the server's certificate: point sslrootcert in "
            "environments.toml (or PGSSLROOTCERT) at the right CA file"
        )
    elif "server does not support SSL" in text:
        hint = (
            "the server does not offer TLS: enable ssl on the server, or check host/port reach the right "
            "server; do not lower sslmode for production"
        )
    elif "does not exist" in text and "database" in text:
        hint = f"create the database first (createdb {shlex.quote(target.database or 'omninode_bridge')}), see README"
    elif "timeout" in text:
        hint = "the server did not answer in time: check host, port, firewall and connect_timeout"
    else:
        hint = "check that the server is running and that host/port/user in environments.toml (or --dsn) are right"
    failed = ConnectionFailed(f"cannot connect to {target.label}: {first_line}", hint)
    if notes:
        failed.details["notes"] = notes
    return failed


def _ignored_passfile() -> str | None:
    """PGPASSFILE (else ~/.pgpass) when it exists but libpq ignores it for its permissions."""
    name = os.environ.get("PGPASSFILE") or os.path.join(os.path.expanduser("~"), ".pgpass")
    try:
        mode = os.stat(name).st_mode
    except OSError:
        return None
    import stat

    if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        return name
    return None


def lost_connection(target: Target, exc: Exception) -> ConnectionFailed:
    first_line = (str(exc).strip().splitlines() or ["connection lost"])[0]
    return ConnectionFailed(
        f"lost the connection to {target.label}: {first_line}",
        "the open transaction was rolled back by the server; check the server, then run the same command again",
    )


@contextmanager
def migration_lock(conn, wait_seconds: float, on_wait: Callable[[list[dict]], None] | None = None) -> Iterator[None]:
    """Hold the session advisory lock for the whole run; wait at most `wait_seconds` for it.

    A second runner waits here, and once it has the lock it re-reads history, so it finds nothing
    left to do instead of applying anything twice.
    """
    if not math.isfinite(wait_seconds) or not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
        raise UsageError(
            f"lock wait {wait_seconds!r} is not a number of seconds from 0 to {MAX_WAIT_SECONDS}",
            "pass a finite --lock-wait (or lock_wait_seconds), e.g. 60",
        )
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
        if not cur.fetchone()[0]:
            holders = lock_holders(conn)
            if on_wait:
                on_wait(holders)
            if wait_seconds <= 0:
                raise _lock_timeout(wait_seconds, holders)
            # lock_timeout bounds the wait; a statement_timeout (ALTER DATABASE/ROLE ... SET, PGOPTIONS)
            # would cancel it earlier and turn "wait --lock-wait, then exit 4" into a failure.
            cur.execute(
                "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', '0', false)",
                # at least 1 ms: lock_timeout = 0 means no limit at all
                (f"{max(1, math.ceil(wait_seconds * 1000))}ms",),
            )
            try:
                cur.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
            except psycopg2.errors.LockNotAvailable:
                raise _lock_timeout(wait_seconds, lock_holders(conn)) from None
            finally:
                if not conn.closed:
                    cur.execute("RESET lock_timeout; RESET statement_timeout")
    try:
        yield
    finally:
        if not conn.closed:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
            except psycopg2.Error:
                pass  # the session is gone, and its lock with it


def lock_holders(conn) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT a.pid, a.usename, a.application_name, host(a.client_addr),
                   extract(epoch FROM now() - a.backend_start)::int
              FROM pg_locks l JOIN pg_stat_activity a USING (pid)
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
               AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid
               -- advisory locks are per database: another database's runner holds another lock
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            """,
            ((LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF),
        )
        return [
            {"pid": r[0], "user": r[1], "application": r[2], "client": r[3], "connected_seconds": r[4]}
            for r in cur.fetchall()
        ]


def _lock_timeout(wait_seconds: float, holders: list[dict]) -> LockTimeout:
    who = ", ".join(f"pid {h['pid']} ({h['user']}, {h['application'] or 'no app name'})" for h in holders)
    return LockTimeout(
        f"another migration runner holds the lock{': ' + who if who else ''}; waited {wait_seconds:g}s",
        "let it finish and run again, or raise --lock-wait; if that session is stuck, "
        "end it with SELECT pg_terminate_backend(<pid>)",
        holders=holders,
    )
