"""Strategies from outside the package: a team's own file or module, or an
installed package's entry point (group ``countdrift.strategies``), loaded
and registered beside the built-in ones.

Loading one registers its classes in ``strategies.STRATEGIES`` by their
``name``, beside the built-in ones, so that every command finds them the
same way. A file is imported as a module of its own (its Lua files load
from beside it, as a built-in strategy's do). A file that does not import
(a syntax error, an exception at import) or defines no strategy ends the
command with one line naming the file and the line.

To run on a Dask worker, the classes travel with the task by value
(:func:`packed`, :func:`unpack`): the worker needs neither the file nor its
Lua files.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
import traceback
from importlib.metadata import entry_points
from pathlib import Path

import cloudpickle

from sim.errors import UsageError
from sim.lua import compile_problem
from strategies import STRATEGIES
from strategies.base import Strategy

ENTRY_POINTS = "countdrift.strategies"
BUILT_IN = frozenset(STRATEGIES)
_FROM: dict[str, str] = {}   # an outside strategy's name: where it came from
_LOADED_POINTS: set[str] = set()


class StrategyCodeError(UsageError):
    """A strategy's code that cannot be loaded: one line, naming the file and the line."""


def load_file(path: str | Path) -> list[type[Strategy]]:
    """Import a strategy file and register the strategies it defines."""
    path = Path(path).resolve()
    if not path.is_file():
        raise StrategyCodeError(f"strategy file {path}: not found (a Python file that defines a Strategy; "
                                f"`countdrift new-strategy NAME` writes one)")
    if path.suffix != ".py":
        raise StrategyCodeError(f"strategy file {path}: not a Python file (.py)")
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"countdrift_strategy_{path.stem}_{digest}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException as error:
            del sys.modules[module_name]
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
            raise StrategyCodeError(f"strategy file {_where(error, path)}: {_what(error)}") from None
        cloudpickle.register_pickle_by_value(module)
    return _register(module, f"strategy file {path}")


def load_module(name: str) -> list[type[Strategy]]:
    """Import a module by name (an installed package's) and register its strategies."""
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise StrategyCodeError(f"strategy module {name}: cannot be imported ({error})") from None
    except Exception as error:   # noqa: BLE001 - the user's module failed at import: say where
        path = Path(getattr(error, "filename", None) or name)
        raise StrategyCodeError(f"strategy module {name}: {_where(error, path)}: {_what(error)}") from None
    return _register(module, f"strategy module {name}")


def load_installed() -> list[type[Strategy]]:
    """The strategies installed packages register (entry points of group
    ``countdrift.strategies``, each a class or a module)."""
    found = []
    for point in entry_points(group=ENTRY_POINTS):
        if point.value in _LOADED_POINTS:
            continue
        try:
            target = point.load()
        except Exception as error:   # noqa: BLE001 - an installed package's bug: name it
            raise StrategyCodeError(f"strategy entry point {point.name} = {point.value}: {_what(error)}") from None
        if inspect.ismodule(target):
            found += _register(target, f"strategy entry point {point.value}")
        elif _is_strategy(target):
            found += _add([target], f"strategy entry point {point.value}")
        else:
            raise StrategyCodeError(f"strategy entry point {point.name} = {point.value}: names neither a module "
                                    f"nor a Strategy class")
        _LOADED_POINTS.add(point.value)
    return found


def packed(names) -> bytes:
    """The outside strategies among ``names``, ready to travel (by value)."""
    return cloudpickle.dumps([STRATEGIES[name] for name in names if name not in BUILT_IN])


def unpack(code: bytes) -> None:
    """Register strategies that travelled with a task."""
    for cls in cloudpickle.loads(code):
        STRATEGIES.setdefault(cls.name, cls)


def origin(name: str) -> str:
    """Where a strategy's code is: built in, a file, a module, an entry point."""
    return "built in" if name in BUILT_IN else _FROM.get(name, "registered in code")


def _register(module, where: str) -> list[type[Strategy]]:
    classes = [cls for _, cls in inspect.getmembers(module, _is_strategy) if cls.__module__ == module.__name__]
    if not classes:
        raise StrategyCodeError(f"{where}: defines no strategy (a subclass of strategies.base.Strategy "
                                f"with a name, a summary and deliver, open_conversation, fetch_badge)")
    return _add(classes, where)


def _add(classes: list[type[Strategy]], where: str) -> list[type[Strategy]]:
    """Register the classes, all or none: each checked first."""
    names = [cls.name for cls in classes]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise StrategyCodeError(f"{where}: two strategies are named {twice[0]!r}; give each a name of its own")
    for cls in classes:
        name = cls.name
        for script in (*cls.scripts, *(script for library in cls.libraries for script in library.scripts)):
            problem = compile_problem(script)
            if problem is not None:
                line, _, message = problem.partition(": ")
                raise StrategyCodeError(f"strategy {name}: Lua script {script.place(line)} does not compile: "
                                        f"{message}")
        known = STRATEGIES.get(name)
        if name in BUILT_IN and known is not cls:
            raise StrategyCodeError(f"{where}: strategy name {name!r} is a built-in strategy's; "
                                    f"give yours a name of its own")
        if known is not None and known is not cls and _FROM.get(name) != where:
            raise StrategyCodeError(f"{where}: strategy name {name!r} is taken by "
                                    f"{_FROM.get(name, 'another strategy')}")
    for cls in classes:
        if STRATEGIES.get(cls.name) is not cls:
            STRATEGIES[cls.name] = cls
            _FROM[cls.name] = where
    return classes


def _is_strategy(value) -> bool:
    return (inspect.isclass(value) and issubclass(value, Strategy) and value is not Strategy
            and isinstance(value.__dict__.get("name"), str) and not inspect.isabstract(value))


def _where(error: BaseException, path: Path) -> str:
    """``path:line`` of the error in the user's file (a syntax error's own line)."""
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename).resolve() == path:
        return f"{path}:{error.lineno}"
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if Path(frame.filename).resolve() == path]
    return f"{path}:{lines[-1]}" if lines else str(path)


def _what(error: BaseException) -> str:
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg}"
    return f"{type(error).__name__}: {str(error)[:200]}"
