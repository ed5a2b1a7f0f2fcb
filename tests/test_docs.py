"""The documentation states what the code does: the policy keys and their defaults, what the shipped
environments.toml sets, the roles' variables, and links that lead somewhere."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from bridge_db.config import Policy, load_config

ROOT = Path(__file__).resolve().parents[1]
POLICY_DOC = ROOT / "docs" / "policy.md"


def _toml_value(cell: str):
    return tomllib.loads(f"value = {cell}")["value"]


def _policy_table() -> dict[str, str]:
    """key -> default cell of the 'Policy keys' table."""
    section = POLICY_DOC.read_text().split("## Policy keys", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \| `(.*?)` \| ", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_the_policy_table_is_the_code_s_policy():
    table = _policy_table()
    code = {f.name: f.default for f in fields(Policy)}
    assert list(table) == list(code)  # every key, in the code's order, and nothing else
    for key, default in code.items():
        expected = list(default) if isinstance(default, tuple) else default
        value = _toml_value(table[key])
        assert (
            value == expected
            and type(value) is type(expected)
            or (isinstance(expected, float) and isinstance(value, int) and value == expected)
        ), f"{key}: docs say {table[key]}, the code {default!r}"


def test_what_the_shipped_file_sets_is_what_the_docs_say():
    """Every policy value of a shipped environment that differs from the code's default is named in the
    docs, as `key = value`, under [defaults] or in that environment's line."""
    text = POLICY_DOC.read_text().split("## What the shipped file sets", 1)[1]
    defaults_part, envs_part = text.split("Per environment:", 1)
    lines = {m.group(1): m.group(0) for m in re.finditer(r"^- `(\w+)`:.*(?:\n  .*)*", envs_part, re.M)}
    config = load_config(ROOT / "environments.toml")
    assert set(lines) == set(config.environments)
    code = {f.name: f.default for f in fields(Policy)}
    for name, environment in config.environments.items():
        for key, default in code.items():
            value = getattr(environment.policy, key)
            if value == default:
                continue
            assert f"`{key} = {_render(value)}`" in lines[name] + defaults_part, f"{name}: {key} = {value!r}"


def _render(value) -> str:
    """A value as environments.toml writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return str(value)


ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES)
def test_each_role_documents_every_variable(role):
    """defaults/main.yml, meta/argument_specs.yml and the README name the same variables, all with the
    role's prefix."""
    folder = ROOT / "roles" / role
    specs = yaml.safe_load((folder / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((folder / "defaults" / "main.yml").read_text()) or {}
    readme = (folder / "README.md").read_text()
    derived = {name for name in defaults if role == "bridge" and name.startswith("bridge_engine_")}
    assert set(defaults) - derived <= set(specs), set(defaults) - derived - set(specs)
    assert all(f"`{name}`" in readme for name in derived)
    for name in specs:
        # the role `bridge` holds the project-wide variables (bridge_run_on, bridge_db_password, ...)
        assert name.startswith(f"{role}_"), name
        assert f"`{name}`" in readme, f"{role}/README.md does not name {name}"


def test_the_roles_are_the_bridge_roles():
    assert ROLES == [
        "bridge",
        "bridge_backup",
        "bridge_db_install",
        "bridge_extensions",
        "bridge_migrations",
        "bridge_privileges",
        "postgresql_pitr",
    ]


DOCS = [
    ROOT / "README.md",
    ROOT / "CONTRIBUTING.md",
    ROOT / "CHANGELOG.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "roles").glob("*/README.md")),
    ROOT / "migrations" / "README.md",
]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        assert file.exists(), f"{doc.name}: link to {target} leads nowhere"
        if anchor and file.suffix == ".md":
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}
            assert anchor in slugs, f"{doc.name}: no heading #{anchor} in {file.name}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return heading.replace(" ", "-")


def test_no_stale_lines_in_the_readmes():
    readme = (ROOT / "README.md").read_text() + (ROOT / "migrations" / "README.md").read_text()
    for stale in [
        "(next)",
        "the Ansible work will read it too",
        "two engine tables",
        "two tables of its own",
        "postgresql_extensions",
        "postgresql_privileges",
        "postgresql_backup",
        "bridge_confirm_production",
    ]:
        assert stale not in readme, stale
