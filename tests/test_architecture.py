"""ARCHITECTURE.md's "Where things are" is generated from each module's
docstring, and kept true here: a module added, moved or described anew
fails this test until the table is written again (the failure prints it)."""
from __future__ import annotations

import ast
import re

from conftest import ROOT

ROOMS = ("sim", "strategies")


def first_sentence(text: str) -> str:
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.])(\s|$)", paragraph)
    return (match.group(1) if match else paragraph).replace("|", "\\|")


def where_things_are() -> str:
    lines = ["| module | what it is |", "|---|---|"]
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            doc = ast.get_docstring(ast.parse(path.read_text()))
            assert doc, f"{path.relative_to(ROOT)} has no docstring: its first sentence says what it is"
            lines.append(f"| `{path.relative_to(ROOT)}` | {first_sentence(doc)} |")
    return "\n".join(lines)


def test_the_table_of_where_things_are_is_the_modules_own_words():
    expected = where_things_are()
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert expected in text, f"ARCHITECTURE.md's table is out of date; it should read:\n\n{expected}\n"
