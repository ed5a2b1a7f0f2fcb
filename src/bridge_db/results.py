"""The facade's own results (the engine's, backups' and the others' live beside their code). Kept out of
api.py so that a run that never returns one (a no-op migrate) does not build their classes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backup import BackupEntry
    from .config import Policy
    from .extensions import ExtensionReport
    from .lint import Finding
    from .pgbuilds import Build


@dataclass
class BackupListing:
    folder: Path
    entries: list[BackupEntry]

    def as_dict(self) -> dict:
        return {"folder": str(self.folder), "backups": [e.as_dict() for e in self.entries]}


@dataclass
class PruneResult:
    folder: Path
    dry_run: bool
    deleted: list[str]
    policy: Policy
    untrusted: list[BackupEntry] = field(default_factory=list)  # kept: their manifest is not trusted

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "deleted": self.deleted}


@dataclass
class NewMigration:
    forward: Path
    rollback: Path

    def as_dict(self) -> dict:
        return {"forward": str(self.forward), "rollback": str(self.rollback)}


@dataclass
class LintResult:
    migrations: int
    findings: list[Finding]

    def as_dict(self) -> dict:
        return {"migrations": self.migrations, "findings": [f.__dict__ for f in self.findings]}


@dataclass
class PreloadedExtensions:
    report: ExtensionReport
    preload_changed: bool = False
    restart_required: bool = False


@dataclass
class ToolsReport:
    """`tools list`: the client tools backups choose from; `tools install`: the build fetched."""

    found: dict[str, list[Any]] = field(default_factory=dict)
    installed: Build | None = None

    def as_dict(self) -> dict:
        if self.installed:
            b = self.installed
            return {"major": b.major, "version": b.version, "bindir": str(b.bindir), "source": b.source,
                    "sha256": b.sha256}  # fmt: skip
        return {n: [{"major": t.major, "path": str(t.path)} for t in tools] for n, tools in self.found.items()}
