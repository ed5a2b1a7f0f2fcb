"""Migration files on disk: naming rules, pairing, checksums, directives and statement splitting.

Everything here runs before any connection is opened, so a broken `migrations/` folder is refused
without touching a database.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .errors import UsageError, ValidationFailed

FORWARD_RE = re.compile(r"^(?P<version>\d{3,})_(?P<name>(?!rollback_)[a-z0-9][a-z0-9_]*)\.sql$")
ROLLBACK_RE = re.compile(r"^(?P<version>\d{3,})_rollback_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
# Files that may live beside the migrations without being one.
ALLOWED_EXTRA_FILES = {"README.md"}

# Header directives, e.g. `-- bridge:requires-extension uuid-ossp`.
DIRECTIVE_RE = re.compile(r"^--\s*bridge:(?P<key>[a-z-]+)\s*(?P<value>.*?)\s*$")
KNOWN_DIRECTIVES = {"requires-extension", "no-transaction"}


def normalised_checksum(raw: bytes) -> str:
    """SHA-256 of the file with line endings normalised to LF and a UTF-8 BOM ignored.

    A CRLF checkout on Windows, or an editor that adds a BOM, is not a modified migration.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return hashlib.sha256(raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")).hexdigest()


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int  # 1-based line in the file where the statement starts
    kind: str = ""  # the parse node, e.g. CreateStmt, IndexStmt
    concurrent_index: str | None = None  # name of an index built or dropped CONCURRENTLY
    relations: tuple[str, ...] = ()  # tables the statement names (to find who blocks it)


@dataclass(frozen=True)
class SqlFile:
    """One migration file, read and decoded once."""

    path: Path
    raw: bytes = field(repr=False)

    @cached_property
    def checksum(self) -> str:
        return normalised_checksum(self.raw)

    @cached_property
    def text(self) -> str:
        data = self.raw[3:] if self.raw.startswith(b"\xef\xbb\xbf") else self.raw
        if b"\x00" in data:
            raise ValidationFailed(
                f"{self.path.name}: contains NUL bytes; this is not a SQL text file",
                "replace the file with the intended SQL text",
                file=str(self.path),
            )
        try:
            return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ValidationFailed(
                f"{self.path.name}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                "save the file as UTF-8",
                file=str(self.path),
                line=line,
            ) from None

    @cached_property
    def directives(self) -> dict[str, list[str]]:
        """`-- bridge:key value` lines from the leading comment block of the file."""
        found: dict[str, list[str]] = {}
        for number, line in enumerate(self.text.split("\n"), start=1):
            stripped = line.strip()
            if not stripped:
                continue
            if not stripped.startswith("--"):
                break  # the header ends at the first statement
            match = DIRECTIVE_RE.match(stripped)
            if not match:
                continue
            key, value = match["key"], match["value"]
            if key not in KNOWN_DIRECTIVES:
                raise ValidationFailed(
                    f"{self.path.name}:{number}: unknown directive 'bridge:{key}'",
                    f"use one of: {', '.join(sorted('bridge:' + k for k in KNOWN_DIRECTIVES))}",
                    file=str(self.path),
                    line=number,
                )
            found.setdefault(key, []).append(value)
        return found

    @cached_property
    def statements(self) -> list[Statement]:
        """The file split into statements by PostgreSQL's own parser (libpg_query, via pglast).

        Splitting with the real grammar keeps dollar-quoted bodies, quoted semicolons and comments
        intact, reports a syntax error with its line before anything runs, and tells which statements
        cannot run inside the transaction bridge-db wraps around a file.
        """
        statements = _cached_statements(self.checksum)
        if statements is None:
            text = self.text
            statements = []
            for raw in self.parse_tree():
                start = raw.stmt_location
                sql = text[start : start + raw.stmt_len] if raw.stmt_len else text[start:].rstrip()
                line = text[:start].count("\n") + 1
                statements.append(_describe(raw.stmt, sql, line))
            _cache_statements(self.checksum, statements)
        for statement in statements:
            self._refuse_transaction_control(statement)
        return statements

    def _refuse_transaction_control(self, statement: Statement) -> None:
        where = f"{self.path.name}:{statement.line}"
        if statement.kind == "TransactionStmt":
            raise ValidationFailed(
                f"{where}: transaction control ({statement.sql.split()[0].upper()}) inside a migration",
                "remove it: bridge-db runs each file and its history row in one transaction itself",
                file=str(self.path),
                line=statement.line,
            )
        if statement.concurrent_index and "no-transaction" not in self.directives:
            raise ValidationFailed(
                f"{where}: {statement.sql.split(' ON ')[0][:60]} cannot run inside a transaction",
                "put it in a migration of its own whose header says -- bridge:no-transaction",
                file=str(self.path),
                line=statement.line,
            )

    @property
    def transactional(self) -> bool:
        """False when the header says `-- bridge:no-transaction` (CREATE INDEX CONCURRENTLY and the like)."""
        return "no-transaction" not in self.directives

    def parse_tree(self):
        import pglast  # imported here: a no-op `migrate` never needs the parser

        try:
            return pglast.parse_sql(self.text)
        except pglast.parser.ParseError as exc:
            position = exc.args[1] if len(exc.args) > 1 else 0
            line = self.text[:position].count("\n") + 1
            raise ValidationFailed(
                f"{self.path.name}:{line}: {exc.args[0]}",
                "fix the SQL syntax; nothing was run",
                file=str(self.path),
                line=line,
            ) from None


# Parsing needs pglast, whose import alone costs ~50 ms. A file's statements depend only on its content
# (the normalised checksum) and the parser's version, so they are cached per user, like bytecode.
CACHE_ENV = "BRIDGE_DB_CACHE_DIR"


def _cache_file(checksum: str) -> Path | None:
    try:
        from importlib.metadata import version

        parser = version("pglast")
    except Exception:
        return None
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bridge-db"
    )
    return Path(base) / f"statements-pglast-{parser}" / f"{checksum}.json"


def _cached_statements(checksum: str) -> list[Statement] | None:
    path = _cache_file(checksum)
    try:
        rows = json.loads(path.read_text(encoding="utf-8")) if path else None
        return (
            [Statement(r["sql"], r["line"], r["kind"], r["concurrent_index"], tuple(r["relations"])) for r in rows]
            if rows is not None
            else None
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no cache, or a damaged one: parse again


def _cache_statements(checksum: str, statements: list[Statement]) -> None:
    path = _cache_file(checksum)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps([s.__dict__ for s in statements]), encoding="utf-8")
        os.replace(partial, path)
    except OSError:
        pass  # a read-only home is no reason to fail a migration


def _describe(node, sql: str, line: int) -> Statement:
    from pglast import ast, enums
    from pglast.visitors import Visitor

    relations: list[str] = []

    class Relations(Visitor):
        def visit_RangeVar(self, ancestors, rv):  # noqa: N802 (pglast's naming)
            relations.append(f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname)

    Relations()(node)
    concurrent = None
    if isinstance(node, ast.IndexStmt) and node.concurrent:
        concurrent = node.idxname or "(unnamed)"
    elif isinstance(node, ast.DropStmt) and node.concurrent and node.removeType == enums.ObjectType.OBJECT_INDEX:
        concurrent = ".".join(n.sval for n in node.objects[0])
    elif isinstance(node, ast.ReindexStmt) and any(
        getattr(p, "defname", "") == "concurrently" for p in (node.params or ())
    ):
        concurrent = node.name or "(reindex)"
    return Statement(sql, line, type(node).__name__, concurrent, tuple(dict.fromkeys(relations)))


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    forward: SqlFile
    rollback: SqlFile

    @property
    def label(self) -> str:
        return f"{self.version:03d}_{self.name}"

    @property
    def checksum(self) -> str:
        return self.forward.checksum

    def sql_file(self, action: str) -> SqlFile:
        return self.forward if action == "apply" else self.rollback

    @property
    def required_extensions(self) -> list[str]:
        return [v for v in self.forward.directives.get("requires-extension", []) if v]


def discover_migrations(directory: Path) -> list[Migration]:
    """Read and validate `directory`; return migrations ordered by version.

    Refuses (ValidationFailed, naming the file) a gap in numbering, a duplicate number, a forward file
    without its rollback or the reverse, an unexpected file, and a symlink leading out of the folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValidationFailed(
            f"migrations folder not found: {directory}",
            "run from the project root, or pass --migrations-dir",
        )
    root = directory.resolve()
    forwards: dict[int, tuple[str, Path]] = {}
    rollbacks: dict[int, Path] = {}
    for path in sorted(directory.iterdir()):
        name = path.name
        if name in ALLOWED_EXTRA_FILES or name.startswith("."):
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise ValidationFailed(
                f"{name}: is a symlink to {path.resolve()}, outside {directory}",
                "copy the file into the migrations folder instead of linking to it",
                file=str(path),
            )
        if not path.is_file():
            raise ValidationFailed(
                f"{name}: unexpected entry in {directory} (not a regular file)",
                "migrations/ holds only NNN_name.sql and NNN_rollback_name.sql files; move it elsewhere",
                file=str(path),
            )
        rollback = ROLLBACK_RE.match(name)
        forward = FORWARD_RE.match(name)
        if rollback:
            version = int(rollback["version"])
            if version in rollbacks:
                raise _duplicate(version, rollbacks[version], path)
            rollbacks[version] = path
        elif forward:
            version = int(forward["version"])
            if version in forwards:
                raise _duplicate(version, forwards[version][1], path)
            forwards[version] = (forward["name"], path)
        else:
            raise ValidationFailed(
                f"{name}: unexpected file in {directory}",
                "name migrations NNN_description.sql and NNN_rollback_description.sql "
                "(lower case, digits and underscores), or move the file out of migrations/",
                file=str(path),
            )

    for version, path in rollbacks.items():
        if version not in forwards:
            raise ValidationFailed(
                f"{path.name}: rollback without a forward migration {version:03d}_*.sql",
                "add the forward file or remove the orphan rollback",
                file=str(path),
            )
    for version, (_, path) in forwards.items():
        if version not in rollbacks:
            raise ValidationFailed(
                f"{path.name}: no rollback file {version:03d}_rollback_*.sql",
                "every migration needs its rollback; `invoke new NAME` scaffolds both",
                file=str(path),
            )
    expected = 1
    for version in sorted(forwards):
        if version != expected:
            raise ValidationFailed(
                f"{forwards[version][1].name}: gap in numbering, expected {expected:03d} before {version:03d}",
                "number migrations without gaps; never renumber one that was deployed",
                file=str(forwards[version][1]),
            )
        expected += 1

    return [
        Migration(
            version=version,
            name=name,
            forward=SqlFile(path, path.read_bytes()),
            rollback=SqlFile(rollbacks[version], rollbacks[version].read_bytes()),
        )
        for version, (name, path) in sorted(forwards.items())
    ]


def _duplicate(version: int, first: Path, second: Path) -> ValidationFailed:
    return ValidationFailed(
        f"{second.name}: duplicate migration number {version:03d} (also {first.name})",
        "give each migration its own number; renumber the one that was not deployed yet",
        file=str(second),
    )


NEW_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def scaffold_migration(directory: Path, description: str) -> tuple[Path, Path]:
    """Write the next numbered pair, NNN_description.sql and NNN_rollback_description.sql, from the
    templates that carry the seed's guideline header. Refuses a name that would not be discovered."""
    from string import Template

    if not NEW_NAME_RE.match(description) or description.startswith("rollback_"):
        raise UsageError(
            f"invalid migration name {description!r}",
            "use lower_snake_case starting with a letter, e.g. add_index_workflow_steps_status",
        )
    existing = discover_migrations(directory)  # refuse to build on a broken folder
    version = (existing[-1].version if existing else 0) + 1
    width = max(3, len(str(version)))
    number = f"{version:0{width}d}"
    forward = Path(directory) / f"{number}_{description}.sql"
    rollback = Path(directory) / f"{number}_rollback_{description}.sql"
    templates = Path(__file__).parent / "templates"
    values = {
        "number": number,
        "description": description,
        "forward": forward.name,
        "rollback": rollback.name,
        "previous": existing[-1].forward.path.name if existing else "none",
    }
    for path, template in ((forward, "forward.sql"), (rollback, "rollback.sql")):
        text = Template((templates / template).read_text(encoding="utf-8")).substitute(values)
        with open(path, "x", encoding="utf-8") as handle:  # never overwrite
            handle.write(text)
    return forward, rollback
