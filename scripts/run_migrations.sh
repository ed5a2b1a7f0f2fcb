#!/usr/bin/env bash
# Apply every pending migration (the seed's ./scripts/run_migrations.sh), through bridge-db: each
# migration and its history row in one transaction, under the migration lock. Running it twice is
# safe: the second run has nothing to do.
#
#   ./scripts/run_migrations.sh                      # dev: the embedded database
#   BRIDGE_DB_ENV=staging ./scripts/run_migrations.sh
#   PGHOST=localhost PGUSER=postgres ./scripts/run_migrations.sh   # libpq variables, db omninode_bridge
#   ./scripts/run_migrations.sh --dry-run            # extra arguments go to `bridge-db migrate`
#
# Exit codes are bridge-db's (README: Exit codes).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_bridge_db.sh"
exec "${bridge_db[@]}" migrate "${connection[@]}" "$@"
