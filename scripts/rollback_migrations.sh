#!/usr/bin/env bash
# Roll back migrations newest first (the seed's ./scripts/rollback_migrations.sh), through bridge-db:
# each rollback file and its history delete in one transaction, under the migration lock.
# With no arguments it rolls back ALL migrations, as the seed's script did; otherwise the arguments
# go to `bridge-db rollback` (e.g. --steps 1, --to 3, --dry-run). Same connection rules as
# run_migrations.sh. A rollback of a database named by PGHOST/PGDATABASE/... (not the environment's
# own) asks first, naming it; without a terminal pass --yes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_bridge_db.sh"
selection=no
for arg in "$@"; do
    case "$arg" in --yes|-y) ;; *) selection=yes ;; esac
done
if [[ $selection == no ]]; then
    set -- "$@" --to 0
fi
exec "${bridge_db[@]}" rollback "${connection[@]}" "$@"
