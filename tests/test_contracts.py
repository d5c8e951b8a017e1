"""The import contract: which layer may import what, checked on the source tree itself.

The picture (HOUSE-STYLE.md): a headless core that never imports Textual, one adapter
module (`libra_edge/engine/llama.py`) as the only door to llama_cpp, a TUI and a bench
that use the engine's public API only, and faces (cli/, tui/) that nothing below imports.
"""

from __future__ import annotations

import ast
import json
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


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


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


def private_uses(path: Path) -> list[str]:
    """`file:line name` for each private name used from another object or module.

    `obj._x` where obj is not `self`/`cls`, and `from m import _x`; dunders are not private.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    # Type annotations name types (`argparse._SubParsersAction` has no public name); they
    # access nothing at run time.
    in_annotations = {id(sub) for node in ast.walk(tree) for ann in _annotations(node)
                      for sub in ast.walk(ann)}

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and id(node) not in in_annotations:
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            found.append(f"{rel(path)}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if private(alias.name):
                    found.append(f"{rel(path)}:{node.lineno} from {node.module} import {alias.name}")
    return found


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
    offenders = [use for p in files for use in private_uses(p)]
    offenders += sorted({f"{rel(p)}:{line} imports {name}" for p in files
                         for line, name in imported_modules(p)
                         if within(name, "libra_edge") and any(
                             part.startswith("_") and not part.startswith("__")
                             for part in name.split("."))})
    assert offenders == [], "the TUI reaches past the public API:\n" + "\n".join(offenders)


def test_bench_uses_no_private_attribute() -> None:
    bench = PACKAGE / "bench.py"
    offenders = private_uses(bench)
    assert offenders == [], "bench reaches past the engine's public API:\n" + "\n".join(offenders)


def test_nothing_below_the_faces_imports_them() -> None:
    below = [p for p in source_files() if p.name != "__main__.py"
             and not any(within(module_name(p), face) for face in FACES)]
    offenders = sorted({f"{rel(p)}:{line} imports {name}" for p in below
                        for line, name in imported_modules(p)
                        if any(within(name, face) for face in FACES)})
    assert offenders == [], "the core imports the CLI or the TUI:\n" + "\n".join(offenders)
