"""PostgreSQL extensions in the Bridge database (the seed's one-time superuser setup), and whether
pg_stat_statements is preloaded."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg2
from psycopg2 import sql

from .connection import Target, cursor_for
from .errors import PrerequisiteMissing

PRELOADED = {"pg_stat_statements"}  # extensions that only work when in shared_preload_libraries
# Shared libraries that contrib modules link against, and the packages that ship them.
LIBRARY_PACKAGES = {
    "libossp-uuid": "libossp-uuid16 (Debian/Ubuntu) or uuid (RHEL: dnf install uuid)",
    "libxml2": "libxml2 (Debian/Ubuntu and RHEL)",
    "libxslt": "libxslt1.1 (Debian/Ubuntu) or libxslt (RHEL)",
}


def missing_library(where: str, exc: Exception) -> PrerequisiteMissing:
    """The server could not load an extension's shared library (SQLSTATE 58P01): a package is missing
    on the database host. Say which, and how to install it."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    found = re.search(r"(lib[A-Za-z0-9_.+-]*\.so[0-9.]*)", first) or re.search(r'"([^"]+)"', first)
    library = found.group(1) if found else "a shared library"
    package = next((pkg for prefix, pkg in LIBRARY_PACKAGES.items() if library.startswith(prefix)), None)
    install = (
        f"install {package} on the database server"
        if package
        else "install the package that provides it on the database server (Debian/Ubuntu: the server's contrib "
        "package, postgresql-contrib or postgresql-<major>; RHEL: postgresql<major>-contrib)"
    )
    return PrerequisiteMissing(
        f"{where}: the server cannot load {library}: {first}",
        f"{install}, then run again (no restart needed unless the library is preloaded)",
        library=library,
    )


@dataclass
class ExtensionReport:
    target: str
    check_only: bool
    created: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # --check: would be created
    not_preloaded: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created)

    def as_dict(self) -> dict:
        return {**self.__dict__, "changed": self.changed}


def preloaded_libraries(cur) -> set[str]:
    cur.execute("SELECT current_setting('shared_preload_libraries')")
    return {name.strip().strip('"') for name in cur.fetchone()[0].split(",") if name.strip()}


def setup_extensions(admin: Target, names: tuple[str, ...] | list[str], check: bool = False) -> ExtensionReport:
    """CREATE EXTENSION IF NOT EXISTS for each name, through the admin connection. Idempotent; with
    `check`, reports what it would create and changes nothing."""
    report = ExtensionReport(admin.label, check)
    with cursor_for(admin) as cur:
        cur.execute("SELECT name, installed_version FROM pg_available_extensions WHERE name = ANY(%s)", (list(names),))
        available = dict(cur.fetchall())
        unavailable = [n for n in names if n not in available]
        if unavailable:
            raise PrerequisiteMissing(
                f"extension(s) not available on the server: {', '.join(unavailable)}",
                "install the server's contrib package (Debian/Ubuntu: apt-get install postgresql-contrib), "
                "then run setup-extensions again",
            )
        for name in names:
            if available[name]:
                report.present.append(name)
            elif check:
                report.missing.append(name)
            else:
                try:
                    cur.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name)))
                except psycopg2.errors.InsufficientPrivilege:
                    raise PrerequisiteMissing(
                        f"creating extension {name} needs a superuser (connected {admin.label})",
                        "set admin_user in environments.toml (or pass --admin-dsn) to a superuser",
                    ) from None
                except psycopg2.errors.UndefinedFile as exc:
                    raise missing_library(f"creating extension {name} ({admin.label})", exc) from None
                report.created.append(name)
        preloaded = preloaded_libraries(cur)
        report.not_preloaded = [n for n in names if n in PRELOADED and n not in preloaded]
        for name in report.not_preloaded:
            report.hints.append(
                f"{name} is not in shared_preload_libraries, so its statistics stay empty: set "
                f"shared_preload_libraries = '{name}' in postgresql.conf (or ALTER SYSTEM SET "
                f"shared_preload_libraries = '{name}') and restart the server; the Ansible role "
                "bridge_extensions does this on hosts it manages"
            )
    return report


def ensure_preloaded(admin: Target, names, check: bool = False) -> tuple[bool, bool]:
    """Add the extensions that need it to shared_preload_libraries (ALTER SYSTEM, superuser).

    Returns (changed, restart_required). The configured value is read from the files
    (pg_file_settings), so a second run before the restart is not a change, but still needs the restart.
    """
    wanted = [n for n in names if n in PRELOADED]
    with cursor_for(admin) as cur:
        running = preloaded_libraries(cur)
        cur.execute(
            "SELECT setting FROM pg_file_settings WHERE name = 'shared_preload_libraries' AND error IS NULL "
            "ORDER BY seqno DESC LIMIT 1"
        )
        row = cur.fetchone()
        configured = {v.strip().strip('"') for v in (row[0] if row else "").split(",") if v.strip()}
        missing = [n for n in wanted if n not in configured]
        if missing and not check:
            # A list setting takes one literal per library: a single 'a,b' would name one library "a,b".
            libraries = sql.SQL(", ").join(sql.Literal(name) for name in sorted(configured | set(missing)))
            try:
                cur.execute(sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(libraries))
            except psycopg2.errors.InsufficientPrivilege:
                raise PrerequisiteMissing(
                    f"changing shared_preload_libraries needs a superuser ({admin.label})",
                    "set admin_user in environments.toml (or --admin-dsn) to a superuser",
                ) from None
    return bool(missing), any(n not in running for n in wanted)
