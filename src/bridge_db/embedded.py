"""The embedded dev database: a project-local PostgreSQL cluster under .devdb/, run from the machine's
own server binaries, reachable only through a private Unix socket."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PrerequisiteMissing

if TYPE_CHECKING:
    import subprocess

SUPERUSER = "postgres"
# What the seed's prerequisites create in the Bridge database.
DEV_EXTENSIONS = ("uuid-ossp", "pg_stat_statements")
SERVICE_USER_ENV = "BRIDGE_DEVDB_OS_USER"
BINDIR_ENV = "BRIDGE_PG_BINDIR"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS


@dataclass
class ClusterStatus:
    initialised: bool
    running: bool
    pid: int | None
    data_dir: str
    socket_dir: str
    port: int
    log_file: str
    server_version: str | None
    bindir: str | None
    service_user: str | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def find_server_binaries(data_dir: Path | None = None) -> Path:
    """A folder with initdb, pg_ctl and postgres; the major version that created `data_dir` first."""
    import shutil
    import subprocess

    candidates: list[Path] = []
    if os.environ.get(BINDIR_ENV):
        candidates.append(Path(os.environ[BINDIR_ENV]))
    pg_version = data_dir / "PG_VERSION" if data_dir else None
    if pg_version and pg_version.is_file():
        major = pg_version.read_text().strip()
        candidates += [Path(f"/usr/lib/postgresql/{major}/bin"), Path(f"/usr/pgsql-{major}/bin")]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass

    def by_version(p: Path) -> int:
        digits = re.findall(r"\d+", str(p))
        return int(digits[-1]) if digits else 0

    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin"):
        candidates += sorted((Path(p) for p in _glob(pattern)), key=by_version, reverse=True)
    candidates.append(Path("/usr/local/pgsql/bin"))
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PrerequisiteMissing(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in PATH or /usr/lib/postgresql/*/bin",
        "install them (Debian/Ubuntu: sudo apt-get install postgresql; macOS: brew install postgresql@16), "
        f"or point {BINDIR_ENV} at their folder",
    )


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern)


class EmbeddedCluster:
    def __init__(self, base_dir: Path, port: int, service_user: str | None = None, bindir: Path | None = None) -> None:
        self.base_dir = Path(base_dir)
        self.bindir = Path(bindir) if bindir else None  # None: find the machine's binaries
        self.port = port
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "server.log"
        self.service_user = service_user or (_pick_service_user() if os.geteuid() == 0 else None)
        socket_dir = self.base_dir / "run"
        if len(str(socket_dir / f".s.PGSQL.{port}")) > MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
            import tempfile

            socket_dir = Path(tempfile.gettempdir()) / f"bridge-db-{digest}"
        self.socket_dir = socket_dir

    @classmethod
    def for_project(cls, project_root: Path, port: int, folder: str = ".devdb") -> EmbeddedCluster:
        """`folder` (.devdb/) in the checkout; when root runs it from a folder the unprivileged server
        user cannot reach (e.g. under /root), a folder under /var/tmp named after the checkout instead."""
        base = Path(project_root) / folder
        service_user = _pick_service_user() if os.geteuid() == 0 else None
        if service_user and not _reachable_by(base.parent, service_user):
            digest = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:12]
            base = Path("/var/tmp") / f"bridge-db-devdb-{digest}"
        return cls(base, port, service_user)

    def connection_params(self) -> dict[str, Any]:
        return {"host": str(self.socket_dir), "port": self.port, "user": SUPERUSER}

    # ------------------------------------------------------------------ commands

    def up(self, database: str | None = None, extensions: tuple[str, ...] = DEV_EXTENSIONS) -> ClusterStatus:
        """Initialise (first time), start (if stopped), create `database` and its extensions. Idempotent."""
        with self._file_lock():
            bindir = self._server_binaries()
            if not (self.data_dir / "PG_VERSION").is_file():
                self._initdb(bindir)
            self._write_runtime_conf()
            if not self._running(bindir):
                self._start(bindir)
            if database:
                self._ensure_database(database, extensions)
        return self.status()

    def down(self) -> ClusterStatus:
        with self._file_lock():
            if (self.data_dir / "PG_VERSION").is_file():
                bindir = self._server_binaries()
                if self._running(bindir):
                    self._pg(bindir, "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop")
        return self.status()

    def status(self) -> ClusterStatus:
        initialised = (self.data_dir / "PG_VERSION").is_file()
        pid = None
        bindir = None
        version = None
        if initialised:
            version = (self.data_dir / "PG_VERSION").read_text().strip()
            try:
                bindir = self._server_binaries()
            except PrerequisiteMissing:
                bindir = None
            pid = self._running(bindir) if bindir else None
        return ClusterStatus(
            initialised=initialised,
            running=bool(pid),
            pid=pid or None,
            data_dir=str(self.data_dir),
            socket_dir=str(self.socket_dir),
            port=self.port,
            log_file=str(self.log_file),
            server_version=version,
            bindir=str(bindir) if bindir else None,
            service_user=self.service_user,
        )

    # ------------------------------------------------------------------ steps

    def _server_binaries(self) -> Path:
        return self.bindir or find_server_binaries(self.data_dir)

    def _initdb(self, bindir: Path) -> None:
        for folder in (self.base_dir, self.socket_dir):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            self._give_to_service_user(folder)
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise PrerequisiteMissing(
                f"{self.data_dir} exists but is not a PostgreSQL cluster",
                "move it away or delete it, then run `invoke db.up` again",
            )
        self._pg(
            bindir,
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        )  # no --no-instructions: PostgreSQL 13's initdb refuses it, and the output is captured anyway
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(
                "\n# Added by bridge-db: settings that depend on where the checkout lives.\n"
                "include_if_exists = 'bridge_db.conf'\n"
            )

    def _write_runtime_conf(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.socket_dir, 0o700)
        self._give_to_service_user(self.socket_dir)
        socket_dir = str(self.socket_dir).replace("'", "''")
        conf = self.data_dir / "bridge_db.conf"
        conf.write_text(
            "# Written by bridge-db on every `db up`; edit environments.toml instead.\n"
            f"port = {self.port}\n"
            "listen_addresses = ''            # no TCP: only the private socket below\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "unix_socket_permissions = 0700\n"
            "shared_preload_libraries = 'pg_stat_statements'\n"
            "pg_stat_statements.track = all\n",
            encoding="utf-8",
        )
        self._give_to_service_user(conf)

    def _start(self, bindir: Path) -> None:
        self.log_file.touch()
        self._give_to_service_user(self.log_file)
        try:
            self._pg(bindir, "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", "start")
        except PrerequisiteMissing as exc:
            tail = self._log_tail()
            raise PrerequisiteMissing(
                f"the embedded dev cluster did not start: {tail or exc.message}",
                f"read {self.log_file}; `invoke db.status` shows the cluster",
            ) from None

    def _ensure_database(self, database: str, extensions: tuple[str, ...]) -> None:
        import psycopg2
        from psycopg2 import sql

        params = {**self.connection_params(), "application_name": "bridge-db"}
        conn = psycopg2.connect(dbname="postgres", **params)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        finally:
            conn.close()
        conn = psycopg2.connect(dbname=database, **params)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for ext in extensions:
                    cur.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext)))
        finally:
            conn.close()

    def _running(self, bindir: Path) -> int | None:
        """The postmaster's pid if `pg_ctl status` says the cluster runs."""
        if not (self.data_dir / "postmaster.pid").is_file():
            return None
        result = self._run([str(bindir / "pg_ctl"), "-D", str(self.data_dir), "status"], check=False)
        match = re.search(r"PID: (\d+)", result.stdout)
        return int(match.group(1)) if result.returncode == 0 and match else None

    def _pg(self, bindir: Path, tool: str, *args: str) -> None:
        result = self._run([str(bindir / tool), *args], check=False)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            detail = [ln for ln in lines if not ln.startswith("Try ")] or lines  # not "Try --help"
            raise PrerequisiteMissing(
                f"{tool} failed: {detail[-1] if detail else 'exit ' + str(result.returncode)}",
                f"read {self.log_file} and the message above; `invoke db.status` shows the cluster",
            )

    def _run(self, cmd: list[str], check: bool) -> subprocess.CompletedProcess:
        """Server tools refuse to run as root: run them as the unprivileged service user then."""
        import subprocess

        kwargs: dict = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.service_user:
            entry = pwd.getpwnam(self.service_user)
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
            env["HOME"] = entry.pw_dir
        cwd = self.base_dir if self.base_dir.is_dir() else "/"
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=check, timeout=120, **kwargs)

    def _give_to_service_user(self, path: Path) -> None:
        if self.service_user:
            entry = pwd.getpwnam(self.service_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _log_tail(self) -> str:
        try:
            lines = [ln for ln in self.log_file.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        serious = [ln for ln in lines if any(level in ln for level in ("FATAL:", "PANIC:", "ERROR:"))]
        return (serious or lines or [""])[-1]

    @contextmanager
    def _file_lock(self):
        """Serialise `up`/`down` across processes: eight runners may find the cluster stopped at once."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.service_user:
            self._give_to_service_user(self.base_dir)
            os.chmod(self.base_dir, 0o700)
        with open(self.base_dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _pick_service_user() -> str:
    """The OS user that runs the server when we are root: $BRIDGE_DEVDB_OS_USER, postgres, or nobody."""
    for name in (os.environ.get(SERVICE_USER_ENV), "postgres", "nobody"):
        if not name:
            continue
        try:
            if pwd.getpwnam(name).pw_uid != 0:
                return name
        except KeyError:
            continue
    raise PrerequisiteMissing(
        "running as root and no unprivileged user (postgres, nobody) exists to run the dev server",
        f"create one (useradd --system postgres) or set {SERVICE_USER_ENV}",
    )


def _reachable_by(folder: Path, user: str) -> bool:
    """Can `user` traverse every ancestor of `folder` and write into it? Checked from mode bits only."""
    entry = pwd.getpwnam(user)
    groups = {entry.pw_gid} | {g for g in os.getgrouplist(user, entry.pw_gid)}
    folder = folder.resolve()
    for part in (folder, *folder.parents):
        try:
            st = part.stat()
        except FileNotFoundError:
            continue  # created later by us, with the usual umask: traversable
        except OSError:
            return False
        if st.st_uid == entry.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
    return True
