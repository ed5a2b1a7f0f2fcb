"""Roles and grants: reconcile the owner, read-write and read-only roles an environment declares.

The desired state is written once, as data (DESIRED_*); `reconcile_privileges` reads the live ACLs,
lists the GRANT/REVOKE statements that close the difference, and runs them in one transaction unless
asked only to check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg2
from psycopg2 import sql

from .config import ROLE_NAME_RE, reserved_role_name
from .connection import Target, connect
from .errors import PrerequisiteMissing, UsageError
from .history import ENGINE_TABLES

TABLE_DML = ("SELECT", "INSERT", "UPDATE", "DELETE")
TABLE_ALL = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
SEQUENCE_ALL = ("USAGE", "SELECT", "UPDATE")

# What each kind of role should hold; anything else it holds on these objects is revoked.
DESIRED_TABLES: dict[str, tuple[str, ...]] = {"app": TABLE_DML, "readonly": ("SELECT",)}
DESIRED_ENGINE_TABLES: dict[str, tuple[str, ...]] = {
    "app": ("SELECT",),
    "readonly": ("SELECT",),
}  # history is written by migrations only
DESIRED_SEQUENCES: dict[str, tuple[str, ...]] = {"app": ("USAGE", "SELECT"), "readonly": ("SELECT",)}
SCHEMA = "public"  # every object is named with it: never resolved through the connection's search_path


@dataclass
class Change:
    reason: str
    statement: str


@dataclass
class PrivilegeReport:
    target: str
    roles: dict[str, str]
    check_only: bool
    changes: list[Change] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "roles": self.roles,
            "check_only": self.check_only,
            "changed": self.changed,
            "changes": [c.__dict__ for c in self.changes],
        }


def declared_roles(target: Target) -> dict[str, str]:
    policy = target.environment.policy
    roles = {
        "owner": policy.owner_role or (target.user or ""),
        "app": policy.app_role,
        "readonly": policy.readonly_role,
    }
    for kind, name in roles.items():
        if not ROLE_NAME_RE.match(name or ""):
            raise UsageError(
                f"{kind} role {name!r} is not a valid role name",
                "use lower case letters, digits and _ (at most 63), starting with a letter or _",
            )
        if reserved_role_name(name):
            raise UsageError(
                f"{kind} role {name!r} is reserved by PostgreSQL (PUBLIC, NONE, CURRENT_USER ... and pg_* roles)",
                "name a role of your own, e.g. bridge_app",
            )
    if len(set(roles.values())) != 3:
        raise UsageError(f"owner, app and read-only roles must differ (got {roles})", "name three distinct roles")
    return roles


def reconcile_privileges(admin: Target, roles: dict[str, str], check: bool = False) -> PrivilegeReport:
    """Make the live grants match the declared roles; with `check`, only report the difference."""
    report = PrivilegeReport(admin.label, roles, check)
    conn = connect(admin)
    try:
        with conn.cursor() as cur:
            report.changes = _plan_changes(cur, roles)
            if check or not report.changes:
                return report
            cur.execute("BEGIN")
            try:
                for change in report.changes:
                    cur.execute(change.statement)
                # GRANT without the grant option is a warning, not an error ("no privileges were granted"):
                # read the ACLs again and keep nothing unless every change took effect.
                not_done = _plan_changes(cur, roles)
            except psycopg2.Error as exc:
                cur.execute("ROLLBACK")
                first = str(exc).strip().splitlines()[0]
                if exc.pgcode == "42501":
                    raise PrerequisiteMissing(
                        f"granting needs more rights ({admin.label}): {first}",
                        "set admin_user in environments.toml (or --admin-dsn) to a superuser or the schema owner",
                    ) from None
                raise
            if not_done:
                cur.execute("ROLLBACK")
                more = f" (and {len(not_done) - 1} more)" if len(not_done) > 1 else ""
                raise PrerequisiteMissing(
                    f"{admin.label}: {len(not_done)} of {len(report.changes)} privilege change(s) had no effect, "
                    f"first: {not_done[0].reason}{more}; the connected role lacks the grant option or ownership, "
                    "so nothing was changed",
                    "set admin_user in environments.toml (or --admin-dsn) to the tables' owner or a superuser; "
                    "`grant --check` lists every change",
                    not_granted=[c.statement for c in not_done],
                )
            cur.execute("COMMIT")
    finally:
        conn.close()
    return report


def _plan_changes(cur, roles: dict[str, str]) -> list[Change]:
    changes: list[Change] = []
    ident = sql.Identifier
    existing = _existing_roles(cur, roles.values())
    for kind, role in roles.items():
        if role not in existing:
            changes.append(
                Change(
                    f"{kind} role {role} does not exist",
                    _render(cur, sql.SQL("CREATE ROLE {} NOLOGIN").format(ident(role))),
                )
            )

    database = _one(cur, "SELECT current_database()")
    for role in roles.values():
        if "CONNECT" not in _privileges(cur, "database", None, role):
            changes.append(
                Change(
                    f"{role} cannot connect",
                    _render(cur, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident(database), ident(role))),
                )
            )

    schema_privs = {kind: _privileges(cur, "schema", "public", role) for kind, role in roles.items()}
    for kind, role in roles.items():
        wanted = {"USAGE", "CREATE"} if kind == "owner" else {"USAGE"}
        for priv in sorted(wanted - schema_privs[kind]):
            changes.append(
                Change(
                    f"{role} lacks {priv} on schema public",
                    _render(cur, sql.SQL("GRANT {} ON SCHEMA public TO {}").format(sql.SQL(priv), ident(role))),
                )
            )
        for priv in sorted(schema_privs[kind] - wanted):
            changes.append(
                Change(
                    f"{role} must not have {priv} on schema public",
                    _render(cur, sql.SQL("REVOKE {} ON SCHEMA public FROM {}").format(sql.SQL(priv), ident(role))),
                )
            )
    if "CREATE" in _privileges(cur, "schema", "public", None):
        changes.append(
            Change(
                "PUBLIC may create objects in schema public (anyone could add tables)",
                "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            )
        )
    return changes + _relation_changes(cur, roles) + _default_privilege_changes(cur, roles)


def _relation_changes(cur, roles: dict[str, str]) -> list[Change]:
    """Each table's and sequence's grants to the app and read-only roles, exactly as desired."""
    changes: list[Change] = []
    for relation, kind in _relations(cur):
        engine_table = relation in ENGINE_TABLES or relation.startswith(tuple(f"{t}_" for t in ENGINE_TABLES))
        desired: dict[str, tuple[str, ...]]
        every: tuple[str, ...]
        if kind == "S":
            desired, every, noun = DESIRED_SEQUENCES, SEQUENCE_ALL, "SEQUENCE"
        else:
            desired, every, noun = (DESIRED_ENGINE_TABLES if engine_table else DESIRED_TABLES), TABLE_ALL, "TABLE"
        for role_kind in ("app", "readonly"):
            role = roles[role_kind]
            held = _privileges(cur, "relation", relation, role)
            wanted = set(desired[role_kind])
            grant = [p for p in every if p in wanted - held]
            revoke = [p for p in every if p in held - wanted]
            if grant:
                changes.append(_relation_change(cur, "GRANT", grant, noun, relation, role, f"{role} lacks"))
            if revoke:
                changes.append(_relation_change(cur, "REVOKE", revoke, noun, relation, role, f"{role} must not have"))
    return changes


def _default_privilege_changes(cur, roles: dict[str, str]) -> list[Change]:
    """Tables that later migrations create (as the owner role) are covered without granting again."""
    changes: list[Change] = []
    ident = sql.Identifier
    for objtype, noun, desired in (("r", "TABLES", DESIRED_TABLES), ("S", "SEQUENCES", DESIRED_SEQUENCES)):
        for role_kind in ("app", "readonly"):
            role = roles[role_kind]
            held = _default_privileges(cur, roles["owner"], objtype, role)
            missing = [p for p in desired[role_kind] if p not in held]
            if missing:
                changes.append(
                    Change(
                        f"tables {roles['owner']} creates later would not be granted to {role}"
                        if objtype == "r"
                        else f"sequences {roles['owner']} creates later would not be granted to {role}",
                        _render(
                            cur,
                            sql.SQL(
                                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT {} ON {} TO {}"
                            ).format(
                                ident(roles["owner"]),
                                sql.SQL(", ").join(map(sql.SQL, missing)),
                                sql.SQL(noun),
                                ident(role),
                            ),
                        ),
                    )
                )
    return changes


def _relation_change(cur, verb: str, privileges: list[str], noun: str, relation: str, role: str, why: str) -> Change:
    statement = sql.SQL("{} {} ON {} {} {} {}").format(
        sql.SQL(verb),
        sql.SQL(", ").join(map(sql.SQL, privileges)),
        sql.SQL(noun),
        sql.Identifier(SCHEMA, relation),  # qualified: the admin's search_path may lead elsewhere
        sql.SQL("TO" if verb == "GRANT" else "FROM"),
        sql.Identifier(role),
    )
    return Change(f"{why} {', '.join(privileges)} on {SCHEMA}.{relation}", _render(cur, statement))


def _render(cur, statement: sql.Composable) -> str:
    return statement.as_string(cur)


def _one(cur, query: str, params=None):
    cur.execute(query, params)
    return cur.fetchone()[0]


def _existing_roles(cur, names) -> set[str]:
    cur.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(names),))
    return {r[0] for r in cur.fetchall()}


def _privileges(cur, kind: str, name: str | None, role: str | None) -> set[str]:
    """Privileges granted explicitly to `role` (None: PUBLIC) on one object; defaults count as granted."""
    grantee = "0::oid" if role is None else "(SELECT oid FROM pg_roles WHERE rolname = %(role)s)"
    if kind == "database":
        source = (
            "pg_database o, aclexplode(coalesce(o.datacl, acldefault('d', o.datdba))) a "
            "WHERE o.datname = current_database()"
        )
    elif kind == "schema":
        source = (
            "pg_namespace o, aclexplode(coalesce(o.nspacl, acldefault('n', o.nspowner))) a WHERE o.nspname = %(name)s"
        )
    else:
        source = (
            "pg_class o, aclexplode(coalesce(o.relacl, acldefault((CASE o.relkind WHEN 'S' THEN 's' "
            "ELSE 'r' END)::\"char\", o.relowner))) a "
            "WHERE o.relnamespace = 'public'::regnamespace AND o.relname = %(name)s"
        )
    cur.execute(f"SELECT a.privilege_type FROM {source} AND a.grantee = {grantee}", {"name": name, "role": role})
    return {r[0] for r in cur.fetchall()}


def _default_privileges(cur, owner: str, objtype: str, role: str) -> set[str]:
    cur.execute(
        """
        SELECT a.privilege_type FROM pg_default_acl d, aclexplode(d.defaclacl) a
         WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = %s)
           AND d.defaclnamespace = 'public'::regnamespace AND d.defaclobjtype = %s
           AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = %s)
        """,
        (owner, objtype, role),
    )
    return {r[0] for r in cur.fetchall()}


def _relations(cur) -> list[tuple[str, str]]:
    """Tables, views and sequences in schema public, except those that belong to an extension."""
    cur.execute(
        """
        SELECT c.relname, c.relkind::text FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                                      AND d.objid = c.oid AND d.deptype = 'e')
         ORDER BY c.relname
        """
    )
    return [(r[0], r[1]) for r in cur.fetchall()]
