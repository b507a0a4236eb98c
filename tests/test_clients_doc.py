"""docs/clients.md stays true: every test it names exists, and every pinned version it
states is the one ``make test`` installs."""

from __future__ import annotations

import ast
import json
import re

from conftest import ROOT

DOC = ROOT / "docs" / "clients.md"


def table_rows() -> list[list[str]]:
    rows = [line.strip().strip("|").split("|") for line in DOC.read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| client") and not line.startswith("| ---")]
    assert rows, "docs/clients.md has no table"
    return [[cell.strip() for cell in row] for row in rows]


def test_every_named_test_exists():
    named = set()
    for row in table_rows():
        for ref in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", row[-1]):
            named.add(ref)
    assert len(named) == len(table_rows()), "each row names exactly one test"
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in functions, f"docs/clients.md names {path}::{name}, which does not exist"


def pinned_python() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements-test.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_stated_versions_are_the_pinned_ones():
    text = DOC.read_text()
    python = pinned_python()
    lock = json.loads((ROOT / "tests" / "clients" / "node" / "package-lock.json").read_text())
    actual = {"websockets": python["websockets"], "Playwright": python["playwright"],
              "ws": lock["packages"]["node_modules/ws"]["version"]}
    for name, version in actual.items():
        stated = set(re.findall(rf"\b{name} (\d+(?:\.\d+)+)", text))
        assert stated == {version}, f"docs/clients.md states {name} {stated}, make test installs {version}"
