"""Generate a realistic OmniNode Bridge database of a given size, for benchmarks.

    python benchmarks/bridge_data.py --dsn "host=127.0.0.1 user=postgres dbname=postgres" \
        --database bench_bridge --size-gb 1.0

Creates the database (uuid-ossp), migrates it with the project's own engine, and fills every table
server-side (INSERT ... SELECT generate_series) with rows shaped as the OmniNode Bridge application
writes them (upper-case states, step_data, UUID entity ids, 64-digit BLAKE3-style hashes, JSONB objects;
see tests/test_application_contract.py), in batches until pg_database_size reaches the target.
Reuses the database if it is already big enough.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bridge_db import engine  # noqa: E402
from bridge_db.config import parse_config  # noqa: E402
from bridge_db.connection import resolve_target  # noqa: E402
from bridge_db.discovery import discover_migrations  # noqa: E402

BATCH = """
WITH w AS (
  INSERT INTO workflow_executions (correlation_id, workflow_type, namespace, current_state, started_at,
                                   completed_at, execution_time_ms, metadata)
  SELECT uuid_generate_v4(), (ARRAY['metadata_stamping','batch_stamping','validation'])[1 + g %% 3],
         'omninode.tenant' || (g %% 50), (ARRAY['COMPLETED','COMPLETED','COMPLETED','FAILED','PROCESSING'])[1 + g %% 5],
         now() - (g %% 86400) * interval '1 second', now(), g %% 5000,
         jsonb_build_object('source', 'bench', 'host', 'node-' || (g %% 17), 'trace', md5((g * 7)::text),
                            'file_path', '/repo/src/module_' || g || '.py',
                            'options', jsonb_build_object('hash', 'blake3', 'depth', g %% 7,
                                                          'labels', jsonb_build_array('a','b','c')),
                            'result', jsonb_build_object('stamp_id', md5(g::text), 'bytes', g %% 100000, 'ok', true))
    FROM generate_series(%(start)s, %(stop)s) g
  RETURNING id, correlation_id, namespace
), s AS (
  INSERT INTO workflow_steps (workflow_id, step_name, step_order, status, execution_time_ms, step_data)
  SELECT w.id, (ARRAY['validate_input','generate_blake3_hash','create_stamp','persist_stamp'])[k + 1], k, 'COMPLETED',
         10 + k, jsonb_build_object('step', k, 'input', jsonb_build_object('attempt', 1),
                                    'output', jsonb_build_object('result', md5(w.id::text || k)))
    FROM w CROSS JOIN generate_series(0, 3) k
  RETURNING 1
), t AS (
  INSERT INTO fsm_transitions (entity_id, entity_type, from_state, to_state, transition_event, transition_data)
  SELECT w.correlation_id, 'workflow', (ARRAY[NULL,'PENDING','PROCESSING','PROCESSING','COMPLETED'])[k + 1],
         (ARRAY['PENDING','PROCESSING','PROCESSING','COMPLETED','COMPLETED'])[k + 1],
         (ARRAY['create','start_processing','step_completed','complete','archive'])[k + 1],
         jsonb_build_object('reason', 'bench', 'step', k)
    FROM w CROSS JOIN generate_series(0, 4) k
  RETURNING 1
)
INSERT INTO metadata_stamps (workflow_id, file_hash, namespace, stamp_data)
SELECT w.id, md5(w.id::text) || md5(w.correlation_id::text), w.namespace,
       jsonb_build_object('version', '1.0', 'hash', md5(w.id::text), 'stamped_by', 'bench',
                          'file_path', '/repo/src/' || w.id || '.py', 'file_size_bytes', 4096,
                          'content_type', 'text/x-python', 'lines', jsonb_build_array(1, 2, 3, 5, 8, 13),
                          'intelligence', jsonb_build_object('summary', repeat('lorem ipsum ', 8)))
  FROM w
"""


def target_for(dsn: str):
    config = parse_config({"environments": {"bench": {"database": "unused"}}}, ROOT / "environments.toml")
    return resolve_target(config, "bench", dsn)


def generate(admin_dsn: str, database: str, size_gb: float, batch: int = 50_000) -> str:
    params = psycopg2.extensions.parse_dsn(admin_dsn)
    params["dbname"] = database
    dsn = psycopg2.extensions.make_dsn(**params)
    admin = psycopg2.connect(admin_dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(database)))
    admin.close()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
    engine.migrate(target_for(dsn), discover_migrations(ROOT / "migrations"))
    target_bytes = int(size_gb * 1024**3)
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM workflow_executions")
        done = cur.fetchone()[0]
        cur.execute("SELECT pg_database_size(current_database())")
        size = cur.fetchone()[0]
        started = time.perf_counter()
        while size < target_bytes:
            cur.execute(BATCH, {"start": done + 1, "stop": done + batch})
            done += batch
            cur.execute("SELECT pg_database_size(current_database())")
            size = cur.fetchone()[0]
            print(
                f"  {done} workflows, {size / 1024**3:.2f} GiB ({time.perf_counter() - started:.0f}s)", file=sys.stderr
            )
        cur.execute(
            "INSERT INTO bridge_states (namespace, current_fsm_state, total_workflows_processed, aggregation_metadata) "
            "SELECT 'omninode.tenant' || g, (ARRAY['IDLE','aggregating','PROCESSING'])[1 + g % 3], g * 100, "
            "jsonb_build_object('window', '1h') "
            "FROM generate_series(1, 1000) g WHERE NOT EXISTS (SELECT 1 FROM bridge_states)"
        )
        cur.execute(
            "INSERT INTO node_registrations (node_id, node_type, node_version, capabilities, health_status, "
            "last_heartbeat, health_endpoint) "
            "SELECT 'node-' || g, (ARRAY['orchestrator','reducer','effect'])[1 + g % 3], '1.0.0', "
            "jsonb_build_object('stamping', true), (ARRAY['HEALTHY','UNKNOWN','critical'])[1 + g % 3], now(), "
            "'http://node-' || g || ':8053/health' FROM generate_series(1, 500) g ON CONFLICT DO NOTHING"
        )
        cur.execute("VACUUM ANALYZE")
    conn.close()
    return dsn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--database", default="bench_bridge")
    parser.add_argument("--size-gb", type=float, default=1.0)
    args = parser.parse_args()
    print(generate(args.dsn, args.database, args.size_gb))


if __name__ == "__main__":
    main()
