"""The errors a user can cause, each with its documented exit code and a one-line next step."""

from __future__ import annotations


class BridgeDbError(Exception):
    """Base of every error the engine raises on purpose.

    `message` says what went wrong in one line; `next_step` says what to do about it.
    Front-ends print both and exit with `exit_code`.
    """

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, next_step: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.next_step = next_step
        self.details = details

    def as_dict(self) -> dict:
        return {
            "error": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "next_step": self.next_step,
            **{k: v for k, v in self.details.items() if v is not None},
        }


class UsageError(BridgeDbError):
    """Bad arguments, an unknown environment, a malformed config file."""

    exit_code = 2
    kind = "usage"


class ConnectionFailed(BridgeDbError):
    """The server cannot be reached, or refuses the login, or went away mid-run."""

    exit_code = 3
    kind = "connection"


class LockTimeout(BridgeDbError):
    """Another runner held the migration lock for longer than we agreed to wait."""

    exit_code = 4
    kind = "lock_timeout"


class ValidationFailed(BridgeDbError):
    """Migration files and history disagree: a gap, a duplicate, an edited or missing file."""

    exit_code = 5
    kind = "validation"


class MigrationFailed(BridgeDbError):
    """A statement of a migration failed; its transaction was rolled back."""

    exit_code = 6
    kind = "migration_failed"


class PrerequisiteMissing(BridgeDbError):
    """Something outside the migrations is missing: an extension, server binaries, privileges."""

    exit_code = 7
    kind = "prerequisite"


class BackupFailed(BridgeDbError):
    """A backup or restore did not complete; no half-written file is left, earlier backups are untouched."""

    exit_code = 8
    kind = "backup_failed"


class HistoryUnusable(BridgeDbError):
    """The engine's own history tables cannot be read or written: another tool's table of the same
    name, no privilege on them, or a failed history write. Never the migration file's fault."""

    exit_code = 10
    kind = "history"


class RefusedByPolicy(BridgeDbError):
    """The environment's policy forbids the command (e.g. `reset` outside dev)."""

    exit_code = 9
    kind = "refused"


# `status --exit-code` when migrations are pending and nothing is wrong: a CI job can gate a deploy on it.
# Not an error: no cause or next step is printed, and an edited or missing file still exits 5 (drift).
PENDING_EXIT_CODE = 11


# The table the README prints; kept here so that docs and code cannot drift apart.
EXIT_CODES: list[tuple[int, str]] = [
    (0, "success (including 'nothing to do')"),
    (1, "unexpected internal error (a bug: please report it with the output)"),
    (UsageError.exit_code, "usage or configuration error: bad arguments, unknown environment, malformed config"),
    (ConnectionFailed.exit_code, "cannot connect to the server, or the connection was lost"),
    (LockTimeout.exit_code, "migration lock not acquired within the configured wait"),
    (ValidationFailed.exit_code, "validation failure: gap, duplicate, edited or missing migration file"),
    (
        MigrationFailed.exit_code,
        "SQL error in a migration (its transaction rolled back, no history row; "
        "a no-transaction file keeps the statements it completed)",
    ),
    (PrerequisiteMissing.exit_code, "missing prerequisite: extension, PostgreSQL server binaries"),
    (BackupFailed.exit_code, "backup or restore failed (no partial file kept, earlier backups untouched)"),
    (RefusedByPolicy.exit_code, "refused: policy (e.g. reset outside dev) or confirmation not given"),
    (
        HistoryUnusable.exit_code,
        "bridge-db's own history tables unusable (another tool's table, privileges); "
        "the migration's transaction is not kept",
    ),
    (PENDING_EXIT_CODE, "status --exit-code: migrations are pending (and no file changed); run migrate"),
    (130, "interrupted (Ctrl-C); the running transaction was rolled back"),
    (143, "terminated (SIGTERM); the running transaction was rolled back"),
]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so that every cleanup path of Ctrl-C runs."""
