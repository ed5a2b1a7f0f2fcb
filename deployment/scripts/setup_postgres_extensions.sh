#!/usr/bin/env bash
# One-time setup of the PostgreSQL extensions the Bridge database needs (the seed's
# deployment/scripts/setup_postgres_extensions.sh), through `bridge-db setup-extensions`:
# CREATE EXTENSION IF NOT EXISTS for uuid-ossp and pg_stat_statements as a superuser, and a warning
# with the fix when pg_stat_statements is not in shared_preload_libraries.
#
#   bash deployment/scripts/setup_postgres_extensions.sh                 # dev: the embedded database
#   PGHOST=localhost PGUSER=postgres bash deployment/scripts/setup_postgres_extensions.sh
#   BRIDGE_DB_ENV=staging bash deployment/scripts/setup_postgres_extensions.sh --check
#
# Same connection rules as scripts/run_migrations.sh; extra arguments go to the command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/_bridge_db.sh"
exec "${bridge_db[@]}" setup-extensions "${connection[@]}" "$@"
