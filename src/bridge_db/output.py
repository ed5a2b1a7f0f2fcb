"""What a command prints, made safe: known secrets replaced in every stream (errors, --json, the run log),
and the run log that copies a changing verb's output into log_dir when the environment's policy asks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .errors import BridgeDbError

if TYPE_CHECKING:
    from .api import Bridge

# Verbs that change something: where the environment says so (staging), each run leaves a log file.
LOGGED_VERBS = {"migrate", "rollback", "reset", "backup", "restore", "prune", "grant", "setup-extensions"}


def hide_connection_strings(message: str, argv: list[str]) -> str:
    """argparse quotes what it did not understand; a connection string there may carry a password
    that libpq would not even read as one (an unencoded '/' in a URI), so it is never repeated."""
    import psycopg2.extensions

    from .connection import URI_PREFIXES

    for arg in sorted(argv, key=len, reverse=True):
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        try:
            is_dsn = bool(psycopg2.extensions.parse_dsn(value)) or value.lstrip().startswith(URI_PREFIXES)
        except Exception:
            is_dsn = value.lstrip().startswith(URI_PREFIXES) or "password" in value
        if is_dsn and value:
            for shown in (value, repr(value)[1:-1]):  # argparse quotes with repr()
                message = message.replace(shown, "<connection string not shown>")
    return message


def secrets_in(argv: list[str]) -> list[str]:
    """Every password a DSN on the command line or in the environment carries, as libpq reads it."""
    from .connection import ADMIN_DSN_ENV_VAR, DSN_ENV_VAR, dsn_secrets

    found: list[str] = []
    for arg in argv:
        found += dsn_secrets(arg)
        if arg.startswith("--") and "=" in arg:  # --dsn=...
            found += dsn_secrets(arg.split("=", 1)[1])
    for var in (DSN_ENV_VAR, ADMIN_DSN_ENV_VAR):
        found += dsn_secrets(os.environ.get(var))
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    if not found:
        return []
    import json

    # as printed: plain, inside JSON (--json, error details), inside a repr()
    shown = {form for secret in found for form in (secret, json.dumps(secret)[1:-1], repr(secret)[1:-1])}
    return sorted(shown, key=len, reverse=True)


@contextmanager
def redacting(secrets: list[str]):
    """Whatever the command prints (errors, --json, the run log) passes through this: a known secret
    is replaced, whichever code path would have printed it."""
    if not secrets:
        yield
        return
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Redacted(out, secrets), _Redacted(err, secrets)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


class _Redacted:
    def __init__(self, stream, secrets: list[str]) -> None:
        self.stream, self.secrets = stream, secrets

    def write(self, text: str) -> int:
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


@contextmanager
def run_log(verb: str, bridge: Bridge, dry_run: bool) -> Iterator[None]:
    """Copy everything the command prints into log_dir/<env>-<verb>-<UTC time>.log (0600, in a folder
    created 0700) when the environment's policy names a log_dir. The log never gets the command line
    (it may hold a DSN). A log that cannot be written (unwritable, full, size-limited) is a warning:
    it never turns the command's result into a failure."""
    log_dir = None
    if verb in LOGGED_VERBS and not dry_run:
        try:
            config = bridge.config
            policy = config.environments[bridge.env].policy
            if policy.log_dir:
                log_dir = Path(policy.log_dir)
                log_dir = log_dir if log_dir.is_absolute() else config.project_root / log_dir
        except (BridgeDbError, KeyError):
            log_dir = None  # the command itself reports a bad config or environment
    if log_dir is None:
        yield
        return
    from datetime import UTC, datetime

    from .backup import private_folder

    now = datetime.now(UTC)
    path = log_dir / f"{bridge.env}-{verb}-{now.strftime('%Y%m%dT%H%M%S%fZ')}.log"
    try:
        private_folder(log_dir)
        log = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8")
        log.write(f"# bridge-db {__version__} {verb} --env {bridge.env} at {now.isoformat()}\n")
    except (OSError, BridgeDbError) as exc:
        _log_warning(log_dir, exc)
        yield
        return
    out, err = sys.stdout, sys.stderr
    tee_out, tee_err = _Tee(out, log, err), _Tee(err, log, err)
    sys.stdout, sys.stderr = tee_out, tee_err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        try:
            log.close()
        except OSError as exc:
            tee_out.failed = tee_out.failed or _log_warning(path, exc)
    if not (tee_out.failed or tee_err.failed):
        print(f"log: {path}", file=sys.stderr)


def _log_warning(where, exc) -> bool:
    reason = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc)
    print(
        f"warning: the run log {where} could not be written ({reason}); the command's result is unaffected",
        file=sys.stderr,
    )
    return True


class _Tee:
    """A stream that also copies into the run log; the first failed log write warns once and stops
    the copying, and the stream itself goes on."""

    def __init__(self, stream, log, warn_to) -> None:
        self.stream, self.log, self.warn_to = stream, log, warn_to
        self.failed = False

    def _to_log(self, action) -> None:
        if self.failed:
            return
        try:
            action()
        except (OSError, ValueError) as exc:
            self.failed = True
            print(
                f"warning: the run log could not be written ({getattr(exc, 'strerror', None) or exc}); "
                "the command's result is unaffected",
                file=self.warn_to,
            )

    def write(self, text: str) -> int:
        self._to_log(lambda: self.log.write(text.replace("\r", "\n")))
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
        self._to_log(self.log.flush)

    def isatty(self) -> bool:
        return self.stream.isatty()
