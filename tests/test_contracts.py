"""The import contract: which layer may import what, checked on the source tree itself.

The picture (HOUSE-STYLE.md): a headless core that never imports Textual, one adapter
module (`libra_edge/engine/llama.py`) as the only door to llama_cpp, a TUI and a bench
that use public names only, faces (cli/, tui/) that nothing below imports, an engine
whose private names nobody outside `libra_edge/engine/` uses, and no private module of
a dependency imported but the Textual ones the TUI must use (TEXTUAL_PRIVATES, tied to
the pinned minor version). A private name belongs to the module that defines it: one
reached through any attribute (`self._x` included) that the module never defines is
another module's.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "libra_edge"
CONVERT = ROOT / "convert"  # installed as libra_edge.convert

# Where Textual (and the other optional stacks) may appear: everything else is the core.
NOT_CORE = ("libra_edge/tui/", "libra_edge/cli/tui.py", "libra_edge/serve/", "libra_edge/batch/cluster.py")
LLAMA_ADAPTER = "libra_edge/engine/llama.py"
TUI_FILES = ("libra_edge/tui/", "libra_edge/cli/tui.py")
FACES = ("libra_edge.cli", "libra_edge.tui")

# Textual privates the TUI must use, checked against one minor version of Textual (the pin in
# pyproject.toml, TEXTUAL_PIN below; the snapshot tests are recorded with it too). Each is
# `file name-used`; a new Textual minor version means reading each again, then moving both.
TEXTUAL_PIN = (8, 2)
TEXTUAL_PRIVATES = {
    # The footer's key widgets have no public module: KeysFooter lays them out itself.
    "libra_edge/tui/widgets/footer.py imports textual.widgets._footer",
    # Footer's flag that its bindings were read once (a rebuild before that must not be skipped).
    "libra_edge/tui/widgets/footer.py self._bindings_ready",
    # DataTable's per-state style caches, cleared when only the cursor's pseudo-class changed.
    "libra_edge/tui/widgets/results_table.py self._styles_cache",
    "libra_edge/tui/widgets/results_table.py self._get_styles_to_render_cell",
}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()


def within(module: str, package: str) -> bool:
    """Whether MODULE is PACKAGE or one of its submodules."""
    return module == package or module.startswith(package + ".")


def source_files() -> Iterator[Path]:
    """Every Python file shipped in the package (libra_edge/ and convert/), tests excluded."""
    for folder in (PACKAGE, CONVERT):
        yield from sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    """The importable name of a source file (convert/x.py is libra_edge.convert.x)."""
    if path.is_relative_to(CONVERT):
        parts = ["libra_edge", "convert", *path.relative_to(CONVERT).with_suffix("").parts]
    elif not path.is_relative_to(ROOT):  # a file a test writes to try a scan on
        parts = [path.stem]
    else:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in PATH, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from libra_edge.engine import llama` imports a module too
                yield node.lineno, f"{module}.{alias.name}"


def private(name: str) -> bool:
    """`_x` is private; dunders (`__init__`) are not."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def defined_names(tree: ast.AST) -> set[str]:
    """Every name a module defines itself: functions, classes, arguments, imports, and every
    name or attribute it assigns (`x = ...`, `self._x = ...`, `for _x in ...`)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return names


def private_uses(path: Path) -> list[str]:
    """`file:line name` for each private name of another module that PATH uses.

    A private name (`_x`) belongs to the module that defines it. Reached through an
    attribute (`obj._x`, `self._x`, `cls._x`) it is another module's when PATH never
    defines `_x` itself, e.g. a private of a dependency's base class read through `self`;
    `from m import _x` always is. Dunders are not private.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    own = defined_names(tree)
    # Type annotations name types (`argparse._SubParsersAction` has no public name); they
    # access nothing at run time.
    in_annotations = {id(sub) for node in ast.walk(tree) for ann in _annotations(node)
                      for sub in ast.walk(ann)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and private(node.attr) and id(node) not in in_annotations
                and node.attr not in own):
            found.append(f"{rel(path)}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{rel(path)}:{node.lineno} from {node.module} import {alias.name}")
    return found


def private_module_imports(path: Path) -> list[str]:
    """`file:line imports MODULE` for each private module (`a._b`) PATH imports, ours or a dependency's.

    The standard library's are left out: Python keeps them (`_ctypes.dlclose` closes what
    `ctypes.CDLL` opened, with no public name).
    """
    found = set()
    for line, name in imported_modules(path):
        parts = name.split(".")
        if parts[0] in sys.stdlib_module_names:
            continue
        for i, part in enumerate(parts):
            if private(part) and (i + 1 < len(parts) or _is_module(name)):
                found.add(f"{rel(path)}:{line} imports {'.'.join(parts[:i + 1])}")
                break
    return sorted(found)


def _is_module(name: str) -> bool:
    """Whether NAME (`a.b._c`) names a module (not a private name imported from one)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def without_lines(uses: list[str]) -> set[str]:
    """`file:line text` as `file text` (what the allow-lists name)."""
    return {re.sub(r":\d+ ", " ", use, count=1) for use in uses}


def _annotations(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                *filter(None, (node.args.vararg, node.args.kwarg))]
        return [a.annotation for a in args if a.annotation] + ([node.returns] if node.returns else [])
    if isinstance(node, ast.AnnAssign):
        return [node.annotation]
    return []


def test_the_headless_core_never_imports_textual() -> None:
    core = [module_name(p) for p in source_files()
            if not rel(p).startswith(NOT_CORE) and p.name != "__main__.py"]
    assert "libra_edge.cli.main" in core and "libra_edge.store.db" in core
    # One fresh interpreter imports the modules one by one and names the first that pulls
    # Textual in (a module may do so through another one: the culprit is still named).
    script = (
        "import importlib, json, sys\n"
        f"names = {core!r}\n"
        "failed = {}\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed[name] = f'{type(exc).__name__}: {exc}'\n"
        "    if any(m in sys.modules for m in ('textual', 'starlette', 'uvicorn', 'ray')):  # TUI, web, cluster\n"
        "        print(json.dumps({'textual_after': name, 'failed': failed})); break\n"
        "else:\n"
        "    print(json.dumps({'textual_after': None, 'failed': failed}))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["textual_after"] is None, f"importing {outcome['textual_after']} loads textual"
    assert outcome["failed"] == {}, "core modules that do not even import"


def test_only_the_adapter_imports_llama_cpp() -> None:
    offenders = sorted({f"{rel(p)}:{line} imports llama_cpp"
                        for p in source_files() if rel(p) != LLAMA_ADAPTER
                        for line, name in imported_modules(p) if within(name, "llama_cpp")})
    assert offenders == [], f"llama_cpp outside {LLAMA_ADAPTER}:\n" + "\n".join(offenders)


def test_the_tui_uses_only_public_names() -> None:
    files = [p for p in source_files() if rel(p).startswith(TUI_FILES)]
    assert files, "no TUI sources found"
    found = without_lines([use for p in files for use in private_uses(p) + private_module_imports(p)])
    offenders = sorted(found - TEXTUAL_PRIVATES)
    assert offenders == [], "the TUI reaches past the public API:\n" + "\n".join(offenders)
    stale = sorted(TEXTUAL_PRIVATES - found)
    assert stale == [], "TEXTUAL_PRIVATES names uses the TUI no longer has (drop them):\n" + "\n".join(stale)


def test_the_textual_privates_are_allowed_for_the_pinned_minor_version_only() -> None:
    """The allow-list holds for the Textual that pyproject pins and this environment runs."""
    from importlib.metadata import version

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    major, minor = TEXTUAL_PIN
    assert f'"textual>={major}.{minor},<{major}.{minor + 1}"' in pyproject, (
        "pyproject.toml must pin textual to the minor version TEXTUAL_PRIVATES was checked against")
    assert tuple(int(x) for x in version("textual").split(".")[:2]) == TEXTUAL_PIN


def test_bench_uses_no_private_name() -> None:
    bench = PACKAGE / "bench.py"
    offenders = private_uses(bench) + private_module_imports(bench)
    assert offenders == [], "bench reaches past the engine's public API:\n" + "\n".join(offenders)


def test_no_module_imports_a_private_module() -> None:
    """Ours or a dependency's: `textual.widgets._footer` is Textual's to change in any release."""
    found = without_lines([use for p in source_files() for use in private_module_imports(p)])
    offenders = sorted(found - TEXTUAL_PRIVATES)
    assert offenders == [], "private modules imported:\n" + "\n".join(offenders)


def engine_privates() -> set[str]:
    """The private names the engine's modules define (functions, classes, attributes, constants)."""
    return {name for p in sorted((PACKAGE / "engine").glob("*.py"))
            for name in defined_names(ast.parse(p.read_text(encoding="utf-8"))) if private(name)}


def test_nothing_outside_the_engine_names_an_engine_private() -> None:
    """The engine's interface is its public names: a private one used elsewhere (`guard._lock`,
    `from libra_edge.engine.checker import _is_text`, `libra_edge.engine._x`) is a seam that
    the engine cannot change without breaking another module."""
    engine = engine_privates()
    assert {"_lock", "_judge_window"} <= engine  # the scan sees the engine's own privates
    outside = [p for p in source_files() if not rel(p).startswith("libra_edge/engine/")]
    offenders = []
    for p in outside:
        offenders += [use for use in private_uses(p) if use.rsplit(".", 1)[-1].split()[-1] in engine]
        offenders += [f"{rel(p)}:{line} imports {name}" for line, name in imported_modules(p)
                      if within(name, "libra_edge.engine") and any(private(part) for part in name.split("."))]
    assert sorted(set(offenders)) == [], "engine privates used outside the engine:\n" + "\n".join(offenders)


def test_the_scans_catch_a_private_of_another_module_however_it_is_reached(tmp_path: Path) -> None:
    source = tmp_path / "widget.py"
    source.write_text(
        "from textual.widgets import DataTable\n"
        "from textual.widgets._footer import FooterKey\n"
        "from libra_edge.engine.checker import _is_text\n"
        "class Table(DataTable):\n"
        "    def __init__(self) -> None:\n"
        "        self._mine = 1\n"
        "    def clear_caches(self, guard) -> None:\n"
        "        self._mine += 1\n"
        "        self._styles_cache.clear()\n"
        "        guard._lock.acquire()\n", encoding="utf-8")
    uses = {use.split(" ", 1)[1] for use in private_uses(source)}
    assert uses == {"self._styles_cache", "guard._lock", "from libra_edge.engine.checker import _is_text"}
    assert [use.split(" ", 1)[1] for use in private_module_imports(source)] == ["imports textual.widgets._footer"]
    assert {"_lock", "_is_text"} <= engine_privates()


def test_the_scheduler_drives_the_checker_through_its_public_interface() -> None:
    """engine/scheduler.py schedules; engine/checker.py checks. The scheduler names no private
    of another module (the Guard's, the Checker's, the decoder's), and imports no private
    name: a change inside a check cannot break scheduling without a visible interface change."""
    scheduler = PACKAGE / "engine" / "scheduler.py"
    offenders = private_uses(scheduler) + private_module_imports(scheduler)
    assert offenders == [], "the scheduler reaches past the Checker's interface:\n" + "\n".join(offenders)
    imported = {name for _line, name in imported_modules(scheduler)}
    assert "libra_edge.engine.guard" not in imported, "the scheduler depends on the Guard it serves"


def test_nothing_below_the_faces_imports_them() -> None:
    below = [p for p in source_files() if p.name != "__main__.py"
             and not any(within(module_name(p), face) for face in FACES)]
    offenders = sorted({f"{rel(p)}:{line} imports {name}" for p in below
                        for line, name in imported_modules(p)
                        if any(within(name, face) for face in FACES)})
    assert offenders == [], "the core imports the CLI or the TUI:\n" + "\n".join(offenders)
