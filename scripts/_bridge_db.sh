# Shared by run_migrations.sh and rollback_migrations.sh: find the bridge-db CLI and decide where to
# connect. Sourced, not run.
#
# Connection: when any of PGHOST, PGPORT, PGDATABASE, PGUSER or PGSERVICE is set, libpq's own
# variables decide, as they did for the seed's psql loops (PGDATABASE defaults to omninode_bridge;
# the password comes from PGPASSWORD or ~/.pgpass). Otherwise the environment $BRIDGE_DB_ENV from
# environments.toml is used (default: dev, the embedded database).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"  # this file lives in scripts/
if [[ -x "$root/.venv/bin/bridge-db" ]]; then
    bridge_db=("$root/.venv/bin/bridge-db")
elif command -v bridge-db >/dev/null 2>&1; then
    bridge_db=(bridge-db)
else
    echo "error: the bridge-db CLI is not installed" >&2
    echo "  next: python3 -m venv .venv && .venv/bin/pip install -e . (see README)" >&2
    exit 2
fi
connection=(--config "$root/environments.toml" --env "${BRIDGE_DB_ENV:-dev}")
if [[ -n "${PGHOST:-}${PGPORT:-}${PGDATABASE:-}${PGUSER:-}${PGSERVICE:-}" ]]; then
    export PGDATABASE="${PGDATABASE:-omninode_bridge}"
    connection+=(--dsn "")
fi
