"""The CLI, Invoke and the Ansible modules take the same options per verb, as declared once in
bridge_db.options, and honour the same environment variables."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import yaml

from bridge_db import options
from bridge_db.cli import build_parser

from conftest import ROOT, run_cli

sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT))

import tasks  # noqa: E402

# The Ansible module over each verb, and what only Ansible has (no CLI counterpart).
MODULES = {
    "bridge_migrate": ("migrate", "rollback"),
    "bridge_backup": ("backup",),
    "bridge_extensions": ("setup-extensions",),
    "bridge_privileges": ("grant",),
    "bridge_restore": ("restore",),
}
ANSIBLE_ONLY = {"project_dir", "password", "state", "preload"}
# A fleet run must name its environment: required in Ansible ($BRIDGE_DB_ENV satisfies it), optional on
# the command line where dev is the default.
ANSIBLE_REQUIRED = {"environment"}
INVOKE_TASKS = {verb: verb for verb in options.VERBS if verb not in ("db", "lint", "pitr")} | {
    "lint": "lint-migrations"
}
ACTION_TASKS = {"db": ("up", "down", "status"), "pitr": ("status", "restore")}  # a collection, a task per action


def _cli_options(verb: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb").choices[verb]
    return {a.dest for a in sub._actions if a.dest != "help"}


def _invoke_options(name: str) -> set[str]:
    task = tasks.ns[name] if "." not in name else tasks.ns.collections[name.split(".")[0]][name.split(".")[1]]
    return set(task.argspec(task.body).parameters)


def _module(name: str):
    return importlib.import_module(f"ansible_collections.omninode.bridge.plugins.modules.{name}")


@pytest.mark.parametrize("verb", options.VERBS)
def test_cli_and_invoke_take_the_same_options_as_the_table(verb):
    declared = {o.name for o in options.for_verb(verb)}
    assert _cli_options(verb) == declared
    if verb in ACTION_TASKS:
        for action in ACTION_TASKS[verb]:
            assert _invoke_options(f"{verb}.{action}") == declared - {"action"}
    else:
        assert _invoke_options(INVOKE_TASKS[verb]) == declared


@pytest.mark.parametrize("verb", [v for v in options.VERBS if v not in ACTION_TASKS])
def test_invoke_help_is_the_table_help(verb):
    task = tasks.ns[INVOKE_TASKS[verb]]
    assert task.help == {o.name: o.help_text(verb) for o in options.for_verb(verb)}
    assert task.__doc__ == options.VERB_HELP[verb]


@pytest.mark.parametrize("module_name", MODULES)
def test_ansible_argument_spec_matches_the_table(module_name):
    spec = _module(module_name).ARGUMENT_SPEC
    expected = options.ansible_spec(MODULES[module_name])
    assert set(spec) - ANSIBLE_ONLY == set(expected)
    for name, entry in expected.items():
        got = {k: v for k, v in spec[name].items() if k != "fallback"}
        if name in ANSIBLE_REQUIRED:
            got.pop("required")
        assert got == entry, name
    # every option with an environment variable falls back to it, as on the command line
    for option in options.OPTIONS:
        name = option.ansible_name()
        if option.env and name in spec:
            assert spec[name]["fallback"][1] == [option.env], name


@pytest.mark.parametrize("module_name", MODULES)
def test_ansible_documentation_matches_the_argument_spec(module_name):
    from ansible_collections.omninode.bridge.plugins.doc_fragments.bridge import ModuleDocFragment

    module = _module(module_name)
    doc = yaml.safe_load(module.DOCUMENTATION)
    documented = {**yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"], **doc["options"]}
    assert set(documented) == set(module.ARGUMENT_SPEC)
    for name, entry in module.ARGUMENT_SPEC.items():
        d = documented[name]
        assert d.get("type", "str") == entry.get("type", "str"), name
        assert bool(d.get("required")) == bool(entry.get("required")), name
        assert d.get("default") == entry.get("default"), name
        assert d.get("choices") == entry.get("choices"), name
        assert d["description"], name
    for key, value in yaml.safe_load(module.RETURN).items():  # renders in ansible-doc: block style, typed
        assert {"description", "type", "returned", "sample"} <= set(value), key


def test_every_invoke_task_has_help():
    """Every task has a docstring and every parameter of every task a help text (this fails for one
    missing), and Invoke itself lists and explains each."""
    names = [*tasks.ns.task_names]
    assert {"migrate", "db.up", "lint", "sanity", "deploy"} <= set(names)
    missing = []
    for name in names:
        task = tasks.ns[name] if "." not in name else tasks.ns.collections[name.split(".")[0]][name.split(".")[1]]
        if not (task.__doc__ or "").strip():
            missing.append(f"{name}: no docstring")
        for param in task.argspec(task.body).parameters:
            if not (task.help or {}).get(param, "").strip():
                missing.append(f"{name} --{param.replace('_', '-')}: no help")
    assert missing == []
    listing = _invoke("--list").stdout
    for name in names:
        assert name in listing
    assert "--env" in _invoke("--help", "migrate").stdout


def _invoke(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "invoke"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**full_env, **(env or {})},
        timeout=120,
    )


def _ansible(module: str, args: str, env: dict | None = None) -> dict:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_DB_")}
    out = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "ansible"),
            "localhost",
            "-m",
            f"omninode.bridge.{module}",
            "-a",
            args,
            "--check",
            "-e",
            f"ansible_connection=local ansible_python_interpreter={sys.executable}",
        ],
        cwd=ROOT,
        env={**full_env, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    status, result = out.stdout.split(" => ", 1)  # localhost | FAILED! => {...}
    return {**json.loads(result), "failed": "FAILED" in status}


def test_an_unknown_environment_from_the_environment_variable_is_exit_2_everywhere():
    nope = {"BRIDGE_DB_ENV": "nope"}
    out = run_cli("status", env=nope)
    assert out.returncode == 2 and "unknown environment 'nope'" in out.stderr
    out = _invoke("status", env=nope)
    assert out.returncode == 2 and "unknown environment 'nope'" in out.stderr
    result = _ansible("bridge_privileges", f"project_dir={ROOT}", env=nope)  # no environment= given
    assert result["failed"] and result["exit_code"] == 2 and "unknown environment 'nope'" in result["msg"]


def test_the_connection_and_config_variables_are_honoured_everywhere(db, tmp_path):
    """$BRIDGE_DB_DSN reaches the same database and $BRIDGE_DB_CONFIG names the environments, whichever
    front-end runs."""
    (tmp_path / "migrations").symlink_to(ROOT / "migrations")
    config = tmp_path / "other.toml"
    config.write_text(
        (ROOT / "environments.toml").read_text().replace("[environments.staging]", "[environments.elsewhere]")
    )
    env = {"BRIDGE_DB_DSN": db.dsn, "BRIDGE_DB_CONFIG": str(config), "BRIDGE_DB_ENV": "elsewhere"}
    out = run_cli("status", "--json", env=env)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)["target"]
    out = _invoke("status", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["target"] == cli
    assert cli.startswith("elsewhere") and db.name in cli
    result = _ansible("bridge_migrate", f"project_dir={ROOT}", env=env)
    assert not result["failed"], result
    assert result["target"] == cli


def test_no_front_end_assembles_the_context_itself():
    """Config, target, migrations and folders are the facade's (bridge_db.api) to resolve."""
    plugins = ROOT / "collections" / "ansible_collections" / "omninode" / "bridge" / "plugins"
    front_ends = [ROOT / "src" / "bridge_db" / "cli.py", ROOT / "tasks.py", *plugins.glob("*/*.py")]
    for path in front_ends:
        text = path.read_text()
        for name in ("load_config", "resolve_target", "discover_migrations", "admin_target", "backup_folder("):
            assert name not in text, f"{path.relative_to(ROOT)} uses {name}"


def test_backups_with_a_folder_still_resolves_the_environment(tmp_path):
    out = run_cli("backups", "--env", "nope", "--backup-dir", str(tmp_path))
    assert out.returncode == 2 and "unknown environment 'nope'" in out.stderr
