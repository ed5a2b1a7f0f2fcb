"""A comparable snapshot of everything a migration can create in schema public (tests only)."""

from __future__ import annotations

from bridge_db.history import ENGINE_TABLES

QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r','p','v','m','S','i','f')
    """,
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = 'public' AND c.relkind IN ('r','p','v','m') AND a.attnum > 0 AND NOT a.attisdropped
    """,
    "constraints": """
        SELECT c.relname, con.conname, pg_get_constraintdef(con.oid)
          FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
    """,
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "comments": """
        SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c
          JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'
    """,
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
    """,
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND NOT t.tgisinternal
    """,
}


def snapshot(conn, include_engine_tables: bool = False) -> dict[str, list[tuple]]:
    """Sorted rows per catalog aspect; the engine's own tables are left out unless asked for."""
    result = {}
    with conn.cursor() as cur:
        for aspect, query in QUERIES.items():
            cur.execute(query)
            rows = [tuple(r) for r in cur.fetchall()]
            if not include_engine_tables:
                rows = [r for r in rows if not any(str(r[0]).startswith(t) for t in ENGINE_TABLES)]
            result[aspect] = sorted(rows, key=repr)
    return result


def bridge_tables(conn) -> list[str]:
    return [r[0] for r in snapshot(conn)["relations"] if r[1] == "r"]
