"""The core (``streams/domain``) is pure: standard library only, no clock, no randomness.

Two checks: the imports written in each module (read from its syntax tree, so the answer does
not depend on what the interpreter happened to import already), and a fresh interpreter that
imports every module of the package with the I/O libraries, ``random`` and ``time`` blocked.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import streams.domain

DOMAIN = Path(streams.domain.__file__).resolve().parent
REPO = DOMAIN.parent.parent
MODULES = sorted(DOMAIN.glob("*.py"))
MODULE_NAMES = [
    f"streams.domain.{p.stem}" if p.stem != "__init__" else "streams.domain" for p in MODULES
]

IO_LIBRARIES = ("faust", "aiokafka", "fastavro", "rocksdict", "prometheus_client", "aiohttp")
CLOCK_AND_CHANCE = ("random", "time", "datetime", "secrets")
FORBIDDEN_CALLS = ("uuid1", "uuid4", "urandom", "getrandbits", "time_ns", "monotonic", "now")


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = "streams.domain"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                assert node.module is not None
                names.add(node.module)
    return names


def _is_domain(name: str) -> bool:
    return name == "streams.domain" or name.startswith("streams.domain.")


def test_there_are_modules_to_check() -> None:
    assert {"events", "state", "effects", "retry", "fold"} <= {p.stem for p in MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_only_the_standard_library_and_the_core(path: Path) -> None:
    outside = {
        name
        for name in _imports(path)
        if not _is_domain(name) and name.split(".")[0] not in sys.stdlib_module_names
    }
    assert outside == set(), f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_imports_no_clock_no_randomness_and_no_io(path: Path) -> None:
    roots = {name.split(".")[0] for name in _imports(path)}
    assert roots.isdisjoint(IO_LIBRARIES + CLOCK_AND_CHANCE + ("importlib", "os", "socket"))
    tree = ast.parse(path.read_text())
    called = {
        node.attr if isinstance(node, ast.Attribute) else node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute | ast.Name)
    }
    assert called.isdisjoint((*FORBIDDEN_CALLS, "__import__", "open", "print"))


_PROBE = textwrap.dedent(
    """
    import builtins
    import importlib
    import importlib.abc
    import json
    import sys

    BLOCKED_EVERYWHERE = set(sys.argv[1].split(","))
    BLOCKED_IN_CORE = set(sys.argv[2].split(","))
    MODULES = sys.argv[3].split(",")


    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED_EVERYWHERE:
                raise ImportError(f"blocked: {name}")
            return None


    sys.meta_path.insert(0, Blocker())
    original_import = builtins.__import__


    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__", "")
        in_core = importer == "streams.domain" or importer.startswith("streams.domain.")
        if in_core and level == 0 and name.split(".")[0] in BLOCKED_IN_CORE:
            raise ImportError(f"{importer} imports {name}")
        return original_import(name, globals, locals, fromlist, level)


    builtins.__import__ = guarded_import

    # the blockers work
    for probe, where in (("faust", "__main__"), ("random", "streams.domain.probe")):
        try:
            exec(f"import {probe}", {"__name__": where})
        except ImportError:
            pass
        else:
            raise SystemExit(f"{probe} was not blocked")

    before = set(sys.modules)
    for module in MODULES:
        importlib.import_module(module)
    loaded = sorted(set(sys.modules) - before)
    print(json.dumps(loaded))
    """
)


def test_core_imports_with_io_libraries_random_and_time_blocked() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            ",".join(IO_LIBRARIES),
            ",".join(CLOCK_AND_CHANCE),
            ",".join(MODULE_NAMES),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(MODULE_NAMES) <= set(loaded)
    # the package's parent (``streams``) is imported too; nothing else outside the stdlib
    foreign = {
        name
        for name in loaded
        if name.split(".")[0] not in sys.stdlib_module_names and name.split(".")[0] != "streams"
    }
    assert foreign == set()
    assert not {name for name in loaded if name.split(".")[0] in IO_LIBRARIES}
