"""PostgreSQL extensions in the Bridge database (the seed's one-time superuser setup), and whether
pg_stat_statements is preloaded."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg2
from psycopg2 import sql

from .connection import Target, cursor_for
from .errors import PrerequisiteMissing

PRELOADED = {"pg_stat_statements"}  # extensions that only work when in shared_preload_libraries


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
                report.created.append(name)
        preloaded = preloaded_libraries(cur)
        report.not_preloaded = [n for n in names if n in PRELOADED and n not in preloaded]
        for name in report.not_preloaded:
            report.hints.append(
                f"{name} is not in shared_preload_libraries, so its statistics stay empty: set "
                f"shared_preload_libraries = '{name}' in postgresql.conf (or ALTER SYSTEM SET "
                f"shared_preload_libraries = '{name}') and restart the server; the Ansible role "
                "postgresql_extensions does this on hosts it manages"
            )
    return report
