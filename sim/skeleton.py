"""`countdrift new-strategy NAME`: a strategy of one's own to start from,
which runs as it is: a class with an option and its bounds, two Lua
scripts (the built-in lua strategy's) and a test."""
from __future__ import annotations

import inspect
import keyword
import re
from pathlib import Path
from string import Template

from sim.errors import UsageError
from sim.report.output import write_text
from strategies.base import Strategy

SCRIPTS = Path(inspect.getfile(Strategy)).parent   # the built-in lua strategy's scripts, copied as the skeleton's
HERE = SCRIPTS / "skeleton"   # the templates of its Python files
NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


TAKEN_CLASS_NAMES = {"Operation", "Pipeline", "Script", "Sequence", "Strategy"}   # what the skeleton imports


def values(name: str) -> dict[str, str]:
    """What the templates are filled with: the strategy's name and its class's."""
    return {"name": name, "cls": "".join(part.capitalize() for part in name.split("_"))}


def files(name: str) -> dict[str, str]:
    """The skeleton's files (name: text) for strategy ``name``."""
    filled = values(name)
    return {f"{name}.py": Template((HERE / "strategy.py.txt").read_text()).substitute(filled),
            f"{name}_deliver.lua": (SCRIPTS / "deliver.lua").read_text(),
            f"{name}_read.lua": (SCRIPTS / "read.lua").read_text(),
            f"test_{name}.py": Template((HERE / "test_strategy.py.txt").read_text()).substitute(filled)}


def write_skeleton(name: str, out: Path) -> list[Path]:
    """Write the skeleton into ``out`` (made if missing); refuse a name
    that is not a plain identifier or is taken, and any file already there
    (nothing is written then)."""
    from strategies import STRATEGIES

    if not NAME.fullmatch(name) or keyword.iskeyword(name):
        raise UsageError(f"new-strategy: {name!r} is not a strategy name: lower-case letters, digits and '_', "
                         f"starting with a letter, at most 40 (it names the class, the files and the scenario's "
                         f"[strategy_options.<name>])")
    if values(name)["cls"] in TAKEN_CLASS_NAMES:
        raise UsageError(f"new-strategy: {name!r} would name its class {values(name)['cls']}, which the skeleton "
                         f"imports; choose another name")
    if name in STRATEGIES:
        raise UsageError(f"new-strategy: {name!r} is taken by a strategy countdrift knows; choose another name")
    texts = files(name)
    there = [str(out / file) for file in texts if (out / file).exists() or (out / file).is_symlink()]
    if there:
        raise UsageError(f"new-strategy: {', '.join(there)} already exist(s); nothing written (choose another "
                         f"name or --out folder)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"new-strategy: --out {out} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file, text in texts.items():
        write_text(out / file, text)
        written.append(out / file)
    return written
