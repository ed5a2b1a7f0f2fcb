"""Migration files on disk: naming rules, pairing, checksums, directives and statement splitting.

Everything here runs before any connection is opened, so a broken `migrations/` folder is refused
without touching a database.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .errors import UsageError, ValidationFailed

# ASCII digits only: `\d` would also accept Arabic-Indic or full-width digits, which int() reads as a number.
FORWARD_RE = re.compile(r"^(?P<version>[0-9]{3,})_(?P<name>(?!rollback_)[a-z0-9][a-z0-9_]*)\.sql$", re.ASCII)
ROLLBACK_RE = re.compile(r"^(?P<version>[0-9]{3,})_rollback_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$", re.ASCII)
# Files that may live beside the migrations without being one.
ALLOWED_EXTRA_FILES = {"README.md"}

# Header directives, e.g. `-- bridge:requires-extension uuid-ossp`.
DIRECTIVE_RE = re.compile(r"^--\s*bridge:(?P<key>[a-z-]+)\s*(?P<value>.*?)\s*$")
KNOWN_DIRECTIVES = {"requires-extension", "no-transaction"}
# An extension name as it may appear in a hint or a CREATE EXTENSION: nothing a shell or SQL interprets.
EXTENSION_NAME_RE = re.compile(r"^[a-z0-9_][a-z0-9_-]{0,62}$", re.ASCII)


class MigrationFolderWarning(UserWarning):
    """Something in migrations/ that is not an error but that a person should know about."""


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
    repeatable: bool = False  # running it twice changes nothing (allowed in a no-transaction file)
    # What the engine checks before running it in a no-transaction file, so that a repeat is a no-op:
    # ("index exists", name, table) | ("index absent", name) | ("enum value exists", type, value)
    repeat_check: tuple[str, ...] | None = None


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
            if key == "requires-extension" and not EXTENSION_NAME_RE.match(value):
                raise ValidationFailed(
                    f"{self.path.name}:{number}: 'bridge:requires-extension' needs one extension name, got {value!r}",
                    "write e.g. -- bridge:requires-extension uuid-ossp (lower case letters, digits, - and _)",
                    file=str(self.path),
                    line=number,
                )
            if key == "no-transaction" and value:
                raise ValidationFailed(
                    f"{self.path.name}:{number}: 'bridge:no-transaction' takes no value, got {value!r}",
                    "write the line as: -- bridge:no-transaction",
                    file=str(self.path),
                    line=number,
                )
            found.setdefault(key, []).append(value)
        return found

    @property
    def has_statement(self) -> bool:
        """Whether anything but whitespace, comments and semicolons is in the file. Exact without a
        parser: until the first token no string or dollar quote can have started."""
        text, i, n = self.text, 0, len(self.text)
        while i < n:
            c = text[i]
            if c.isspace() or c == ";":
                i += 1
            elif text.startswith("--", i):
                end = text.find("\n", i)
                i = n if end < 0 else end + 1
            elif text.startswith("/*", i):  # PostgreSQL's block comments nest
                depth, i = 1, i + 2
                while i < n and depth:
                    if text.startswith("/*", i):
                        depth, i = depth + 1, i + 2
                    elif text.startswith("*/", i):
                        depth, i = depth - 1, i + 2
                    else:
                        i += 1
            else:
                return True
        return False

    @cached_property
    def statements(self) -> list[Statement]:
        """The file split into statements by PostgreSQL's own parser (libpg_query, via pglast).

        Splitting with the real grammar keeps dollar-quoted bodies, quoted semicolons and comments
        intact, reports a syntax error with its line before anything runs, and tells which statements
        cannot run inside the transaction bridge-db wraps around a file. Linear in the file's size: line
        numbers are counted from one statement to the next, never from the start of the file. Never
        cached on disk: what runs is parsed from the file's own bytes in this process.
        """
        text = self.text
        statements: list[Statement] = []
        position, line = 0, 1
        collecting = gc.isenabled()
        gc.disable()  # the parse tree is a million small objects: the cyclic GC rescanning them is superlinear
        try:
            for raw in self.parse_tree():
                start = raw.stmt_location
                line += text.count("\n", position, start)
                position = start
                sql = text[start : start + raw.stmt_len] if raw.stmt_len else text[start:].rstrip()
                statements.append(_describe(raw.stmt, sql, line))
        finally:
            if collecting:
                gc.enable()
        for statement in statements:
            self._refuse_transaction_control(statement)
            self._refuse_never_in_a_transaction(statement)
            if not self.transactional:
                self._refuse_unrepeatable(statement)
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

    def _refuse_never_in_a_transaction(self, statement: Statement) -> None:
        """Statements PostgreSQL never runs inside a transaction block and that a no-transaction file
        may not hold either (a repeat after an interruption would fail or do it twice): no file can run
        them, so say so before the run, instead of failing mid-run with the opposite advice."""
        if statement.kind not in NEVER_IN_A_TRANSACTION:
            return
        what = " ".join(statement.sql.split()[:2]).upper()
        raise ValidationFailed(
            f"{self.path.name}:{statement.line}: {what} ... cannot run inside a transaction, and a "
            "no-transaction migration may not hold it (it cannot be repeated safely after an interruption)",
            "run it by hand outside bridge-db, or use a form that runs in a transaction "
            "(e.g. DETACH PARTITION without CONCURRENTLY)",
            file=str(self.path),
            line=statement.line,
        )

    def _refuse_unrepeatable(self, statement: Statement) -> None:
        """A no-transaction file has no atomic progress record: a run killed after a statement but
        before its progress row repeats that statement. Only statements whose repetition changes
        nothing may be in such a file (the engine checks the catalog before the index and enum ones)."""
        if statement.repeatable:
            return
        what = " ".join(statement.sql.split()[:2]).upper()
        raise ValidationFailed(
            f"{self.path.name}:{statement.line}: {what} ... in a no-transaction migration "
            "would run twice if a run were interrupted right after it",
            "move it to a migration without -- bridge:no-transaction; such a file may hold only "
            "CREATE/DROP INDEX CONCURRENTLY (with an index name), REINDEX, ALTER TYPE ... ADD VALUE, "
            "VACUUM, ANALYZE and SET",
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


# Statement kinds (see _describe) that PostgreSQL refuses inside a transaction block and that are not
# safe to repeat: neither kind of migration file can hold them.
NEVER_IN_A_TRANSACTION = {
    "DetachPartitionConcurrently",
    "CreatedbStmt",
    "DropdbStmt",
    "AlterSystemStmt",
    "CreateTableSpaceStmt",
    "DropTableSpaceStmt",
}


def _describe(node, sql: str, line: int) -> Statement:
    from pglast import ast, enums

    concurrent = None
    repeat_check: tuple[str, ...] | None = None
    repeatable = False
    if isinstance(node, ast.IndexStmt) and node.concurrent:
        concurrent = node.idxname or "(unnamed)"
        if node.idxname:
            schema = node.relation.schemaname
            name = f"{_quote(schema)}.{_quote(node.idxname)}" if schema else _quote(node.idxname)
            rel = node.relation
            table = f"{_quote(rel.schemaname)}.{_quote(rel.relname)}" if rel.schemaname else _quote(rel.relname)
            repeatable, repeat_check = True, ("index exists", name, table)
    elif isinstance(node, ast.DropStmt) and node.concurrent and node.removeType == enums.ObjectType.OBJECT_INDEX:
        concurrent = ".".join(n.sval for n in node.objects[0])
        repeatable = len(node.objects) == 1
        if not node.missing_ok:
            repeat_check = ("index absent", ".".join(_quote(n.sval) for n in node.objects[0]))
    elif isinstance(node, ast.ReindexStmt):
        if any(getattr(p, "defname", "") == "concurrently" for p in (node.params or ())):
            concurrent = node.name or "(reindex)"
        repeatable = True
    elif isinstance(node, ast.AlterEnumStmt) and node.oldVal is None:
        repeatable = True
        if not node.skipIfNewValExists:
            repeat_check = ("enum value exists", ".".join(_quote(n.sval) for n in node.typeName), node.newVal)
    elif isinstance(node, ast.VacuumStmt):
        repeatable = True
    elif isinstance(node, ast.VariableSetStmt):
        repeatable = node.name not in ("role", "session_authorization") and node.kind != (
            enums.VariableSetKind.VAR_RESET_ALL
        )
    relations = tuple(dict.fromkeys(_relations(node)))
    kind = type(node).__name__
    if isinstance(node, ast.AlterTableStmt) and any(
        getattr(cmd, "subtype", None) == enums.AlterTableType.AT_DetachPartition
        and getattr(getattr(cmd, "def_", None), "concurrent", False)
        for cmd in node.cmds or ()
    ):
        kind = "DetachPartitionConcurrently"
    return Statement(sql, line, kind, concurrent, relations, repeatable, repeat_check)


def _quote(identifier: str) -> str:
    """An identifier as PostgreSQL reads it back (to_regclass, to_regtype): quoted unless plain lower case."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", identifier):
        return identifier
    return '"' + identifier.replace('"', '""') + '"'


def _relations(node) -> list[str]:
    """The tables a statement names (to find who blocks it), in the order they appear. A plain walk
    over the node's slots: pglast's generic Visitor costs as much again as parsing."""
    from pglast import ast

    found: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            stack.extend(reversed(item))
        elif isinstance(item, ast.RangeVar):
            found.append(f"{item.schemaname}.{item.relname}" if item.schemaname else item.relname)
        elif isinstance(item, ast.Node):
            children = [getattr(item, slot) for slot in item.__slots__]
            stack.extend(c for c in reversed(children) if isinstance(c, (ast.Node, tuple)))
    return found


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

    @property
    def rollback_checksum(self) -> str:
        return self.rollback.checksum

    def sql_file(self, action: str) -> SqlFile:
        return self.forward if action == "apply" else self.rollback

    @property
    def required_extensions(self) -> list[str]:
        return [v for v in self.forward.directives.get("requires-extension", []) if v]


def discover_migrations(
    directory: Path, *, warn: Callable[[str], None] | None = None, allow_empty: bool = False
) -> list[Migration]:
    """Read and validate `directory`; return migrations ordered by version.

    Refuses (ValidationFailed, naming the file) a gap in numbering, a duplicate number, a number
    below 001, a forward file without its rollback or the reverse, an unexpected file, a symlink
    leading out of the folder, a malformed directive, and a file without any statement (an empty or
    unfinished one would be recorded as applied while doing nothing; `allow_empty` is for `new`,
    which builds on a pair it just scaffolded). Hidden files are skipped with a warning through `warn`
    (default: Python's warnings, as MigrationFolderWarning).
    """
    if warn is None:

        def warn(message: str) -> None:
            warnings.warn(message, MigrationFolderWarning, stacklevel=3)

    directory = Path(directory)
    if not directory.is_dir():
        raise ValidationFailed(
            f"migrations folder not found: {directory}",
            "run from the project root, or pass --migrations-dir",
        )
    forwards, rollbacks = _read_folder(directory, warn)
    _check_numbering(forwards, rollbacks)
    migrations = [
        Migration(
            version=version,
            name=name,
            forward=SqlFile(path, _read(path)),
            rollback=SqlFile(rollbacks[version], _read(rollbacks[version])),
        )
        for version, (name, path) in sorted(forwards.items())
    ]
    for migration in migrations:
        for sql_file in (migration.forward, migration.rollback):
            _ = sql_file.directives  # decodes the file and validates every directive value
            if not allow_empty and not sql_file.has_statement:
                raise ValidationFailed(
                    f"{sql_file.path.name}: has no SQL statement (only comments or nothing); "
                    "it would be recorded as done while changing nothing",
                    "write the migration's SQL (for a scaffold from `new`, replace its TODO), or delete the pair "
                    "if it was never applied",
                    file=str(sql_file.path),
                )
    return migrations


def _read_folder(directory: Path, warn: Callable[[str], None]) -> tuple[dict[int, tuple[str, Path]], dict[int, Path]]:
    """Forward files (name, path) and rollback files by version; anything else in the folder is refused."""
    root = directory.resolve()
    forwards: dict[int, tuple[str, Path]] = {}
    rollbacks: dict[int, Path] = {}
    # os.scandir: the kind of each entry comes with the listing, no stat per file (500 migrations: 1000)
    with os.scandir(directory) as listing:
        entries = sorted(listing, key=lambda e: e.name)
    for entry in entries:
        name = entry.name
        if name in ALLOWED_EXTRA_FILES:
            continue
        if name.startswith("."):
            warn(f"{directory / name}: hidden file ignored (a migration name starts with its number)")
            continue
        path = directory / name
        if entry.is_symlink() and not path.resolve().is_relative_to(root):
            raise ValidationFailed(
                f"{name}: is a symlink to {path.resolve()}, outside {directory}",
                "copy the file into the migrations folder instead of linking to it",
                file=str(path),
            )
        if not entry.is_file():
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
    return forwards, rollbacks


def _read(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _check_numbering(forwards: dict[int, tuple[str, Path]], rollbacks: dict[int, Path]) -> None:
    """Every forward file has its rollback and the reverse; numbers run from 001 without gaps."""
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
    if 0 in forwards:
        raise ValidationFailed(
            f"{forwards[0][1].name}: migration numbers start at 001",
            "renumber it after the newest migration (000 is never applied)",
            file=str(forwards[0][1]),
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
    if not NEW_NAME_RE.match(description) or description.startswith("rollback_"):
        raise UsageError(
            f"invalid migration name {description!r}",
            "use lower_snake_case starting with a letter, e.g. add_index_workflow_steps_status",
        )
    with _folder_lock(directory):  # two `new` at once must not pick the same number
        return _scaffold_locked(Path(directory), description)


@contextmanager
def _folder_lock(directory: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself: no lock file to leave behind or to mistake for a migration."""
    import fcntl

    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ValidationFailed(
            f"migrations folder not usable: {directory} ({exc.strerror})",
            "run from the project root, or pass --migrations-dir",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _scaffold_locked(directory: Path, description: str) -> tuple[Path, Path]:
    from string import Template

    existing = discover_migrations(directory, allow_empty=True)  # refuse to build on a broken folder
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
