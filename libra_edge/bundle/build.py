"""Assemble an offline bundle: wheels for a named Python and platform, models, installer, MANIFEST.

Run on a connected machine from a clone (`libra-edge bundle OUT`, or `./install.sh
--bundle OUT`, which first builds the portable llama-cpp-python wheel). Every package goes
in as a wheel, so the offline side needs neither the package index nor a compiler; the
llama-cpp-python wheel must be the portable one (one CPU-kernel library per x86-64 level,
chosen at run time by `engine/llama.py`), so the bundle runs on any x86-64 CPU with AVX2
(and older ones, on slower kernels).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from libra_edge import __version__
from libra_edge.bundle import install_offline
from libra_edge.errors import ExitCode, LibraError
from libra_edge.models.manifest import now_iso

LLAMA_DIST = "llama_cpp_python"
# The one target this project can build a portable llama.cpp for (see README, "Windows and macOS").
SUPPORTED = (("linux", "x86_64"),)
EXTRAS = ("serve", "report", "cluster", "parquet")
INSTALL_SH = """#!/bin/sh
# Install libra-edge from this bundle: no network, no compiler, no root.
#   ./install-offline.sh [--prefix DIR]     (default ~/libra-edge; PYTHON=python3.12 picks the interpreter)
exec "${PYTHON:-python3}" "$(dirname "$0")/install.py" "$@"
"""
README = """libra-edge {version}: offline bundle for {target}

  ./install-offline.sh --prefix ~/libra-edge       verify, install, import models, run doctor

Every file is listed in MANIFEST with its sha256 and size; the installer refuses a bundle
with a missing, changed or extra file, or one built for another Python or platform, before
it writes anything. Built {created} with {wheels} wheels{models}.
"""


class BundleError(LibraError):
    """A bundle cannot be built as asked (the message says what is missing or unsupported)."""

    exit_code = ExitCode.USAGE


@dataclass
class Target:
    """The machine a bundle is for: Python version, OS and CPU architecture, glibc."""

    python: str
    system: str
    machine: str
    glibc: str | None

    @classmethod
    def here(cls) -> Target:
        """This machine (the default target)."""
        libc, version = platform.libc_ver()
        return cls("%d.%d" % sys.version_info[:2], platform.system().lower(), platform.machine(),
                   version if libc == "glibc" else None)

    def pip_options(self) -> list[str]:
        """`pip download` options for a target other than the running interpreter."""
        if self.python == "%d.%d" % sys.version_info[:2]:
            return []
        major, minor = self.python.split(".")
        platforms = ["linux_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
        if self.glibc:
            glibc_minor = int(self.glibc.split(".")[1])
            platforms += [f"manylinux_2_{m}_x86_64" for m in range(17, glibc_minor + 1)]
        opts = ["--python-version", self.python, "--implementation", "cp", "--abi", f"cp{major}{minor}",
                "--abi", "abi3", "--abi", "none"]
        for tag in platforms:
            opts += ["--platform", tag]
        return opts


@dataclass
class BundleResult:
    """What was written: the folder, the archive (if asked), sizes."""

    folder: Path
    archive: Path | None
    wheels: list[str]
    models: list[str]
    size: int
    cpu_variants: list[str] = field(default_factory=list)


def source_tree() -> Path:
    """The clone this libra-edge runs from (a bundle carries a wheel built from it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "convert").is_dir():
        raise BundleError("libra-edge bundle needs a clone of the repository (this libra-edge is "
                          f"installed from a wheel, {root} has no pyproject.toml)",
                          hint="run ./install.sh --bundle OUT in a clone")
    return root


def wheelhouse_dirs(root: Path) -> list[Path]:
    """Where `install.sh` keeps the wheels it built or fetched: `.wheels/*/`."""
    base = root / ".wheels"
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def portable_llama_wheel(dirs: Iterable[Path]) -> tuple[Path, list[str]]:
    """The newest portable llama-cpp-python wheel in DIRS, and its CPU variants."""
    from libra_edge.engine.llama import PINNED_VERSION

    found = []
    for d in dirs:
        found += sorted(d.glob(f"{LLAMA_DIST}-{PINNED_VERSION}-*.whl"))
    portable: list[tuple[Path, list[str]]] = []
    native: list[tuple[Path, list[str]]] = []
    for wheel in found:
        with zipfile.ZipFile(wheel) as zf:
            variants = sorted(
                Path(n).name[len("libggml-cpu-"):-len(".so")] for n in zf.namelist()
                if Path(n).name.startswith("libggml-cpu-") and n.endswith(".so")
            )
        (portable if variants else native).append((wheel, variants))
    if not portable:
        why = (f"the llama-cpp-python wheels found ({', '.join(str(w) for w, _ in native)}) are built "
               "for this CPU only" if native else f"no llama-cpp-python {PINNED_VERSION} wheel was found")
        raise BundleError(f"{why}; a bundle needs the portable build",
                          hint="run ./install.sh (its default build is portable), or ./install.sh --bundle OUT")
    wheel, variants = max(portable, key=lambda wv: wv[0].stat().st_mtime)
    return wheel, variants


def runtime_requirements(extras: Sequence[str]) -> list[str]:
    """`name==version` of every installed distribution the runtime (and EXTRAS) needs.

    A bundle for this interpreter carries exactly the versions this machine runs (and its
    tests ran); the libra-edge and llama-cpp-python wheels are added separately.
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned: dict[str, str] = {}
    seen = {"libra-edge"}
    todo = [(r, tuple(extras)) for r in importlib.metadata.requires("libra-edge") or []]
    while todo:
        text, active = todo.pop()
        req = Requirement(text)
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in (*active, "")):
            continue
        name = canonicalize_name(req.name)
        if name in pinned or name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise BundleError(f"{req.name} (needed by the bundle) is not installed here",
                              hint="install the extras you bundle first, e.g. pip install -e '.[serve]'") from None
        if name != "llama-cpp-python":  # its wheel is the portable build, added as a file
            pinned[name] = dist.version
        todo += [(r, tuple(req.extras)) for r in dist.requires or []]
    return sorted(f"{n}=={v}" for n, v in pinned.items())


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    if proc.returncode != 0:
        last = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        raise BundleError(f"{what} failed: {last[-1] if last else f'pip exited {proc.returncode}'}")


def build_bundle(
    out: Path,
    *,
    extras: Sequence[str] = (),
    models: Sequence[str] = (),
    python: str | None = None,
    wheelhouse: Sequence[Path] = (),
    offline: bool = False,
    archive: bool = False,
    log: Callable[[str], None] = print,
) -> BundleResult:
    """Write the bundle folder OUT (and OUT.tar.gz with ARCHIVE); see the module docstring."""
    here = Target.here()
    target = Target(python or here.python, here.system, here.machine, here.glibc)
    if (target.system, target.machine) not in SUPPORTED:
        raise BundleError(f"cannot build a bundle for {target.system} {target.machine}: libra-edge builds its "
                          "portable llama.cpp for Linux x86-64 only",
                          hint="see README, 'Windows and macOS' for what works there")
    unknown = sorted(set(extras) - set(EXTRAS))
    if unknown:
        raise BundleError(f"--with {','.join(unknown)}: unknown extra (known: {', '.join(EXTRAS)})")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty folder", hint="choose a new folder")
    root = source_tree()
    dirs = [*map(Path, wheelhouse), *wheelhouse_dirs(root)]
    llama_wheel, variants = portable_llama_wheel(dirs)
    model_files = [_resolve_model(m) for m in models]

    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "wheels").mkdir(parents=True)
    try:
        log(f"==> building the libra-edge {__version__} wheel from {root}")
        # From a copy of the sources: setuptools keeps a `build/` folder in the tree it
        # builds, and a file deleted since an earlier build would stay in the wheel.
        source = stage / ".source"
        for part in ("libra_edge", "convert"):
            shutil.copytree(root / part, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for part in ("pyproject.toml", "README.md"):
            shutil.copy2(root / part, source / part)
        _pip(["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(stage / "wheels"), str(source)],
             "building the libra-edge wheel")
        shutil.rmtree(source)
        own = next((stage / "wheels").glob("libra_edge-*.whl"))
        shutil.copy2(llama_wheel, stage / "wheels" / llama_wheel.name)
        requirement = f"{own}{'[' + ','.join(extras) + ']' if extras else ''}"
        pins = runtime_requirements(extras) if target.python == here.python else []
        log(f"==> collecting the runtime's wheels for CPython {target.python} {target.system} {target.machine}"
            + (" (no index: from .wheels/ only)" if offline else ""))
        # Not the folders of other llama-cpp-python builds: their wheels have the same name.
        links: list[str] = []
        for d in dict.fromkeys([stage / "wheels", *map(Path, wheelhouse), root / ".wheels" / "deps"]):
            links += ["--find-links", str(d)]
        _pip(["download", "-q", "--only-binary=:all:", "-d", str(stage / "wheels"), *links,
              *(["--no-index"] if offline else []), *target.pip_options(), requirement, *pins, "pip"],
             "collecting wheels (pip download)")
        wheels = sorted(p.name for p in (stage / "wheels").glob("*.whl"))
        sdists = [p.name for p in (stage / "wheels").iterdir() if not p.name.endswith(".whl")]
        if sdists:
            raise BundleError(f"not a wheel: {', '.join(sdists)} (the offline side cannot compile)")
        pip_wheel = next(n for n in wheels if n.startswith("pip-"))
        bundled_models = _copy_models(model_files, stage / "models", log)
        description = {
            "format": install_offline.BUNDLE_FORMAT,
            "libra_edge": __version__,
            "python": target.python,
            "implementation": "cpython",
            "system": target.system,
            "machine": target.machine,
            "glibc": target.glibc,
            "extras": list(extras),
            "llama_cpp_python": llama_wheel.name,
            "cpu_variants": variants,
            "pip_wheel": pip_wheel,
            "wheels": [n for n in wheels if n != pip_wheel],
            "models": bundled_models,
            "created": now_iso(),
        }
        (stage / install_offline.DESCRIPTION).write_text(json.dumps(description, indent=2, ensure_ascii=False) + "\n",
                                                          encoding="utf-8")
        shutil.copy2(install_offline.__file__, stage / "install.py")
        sh = stage / "install-offline.sh"
        sh.write_text(INSTALL_SH, encoding="utf-8")
        sh.chmod(0o755)
        (stage / "README.txt").write_text(README.format(
            version=__version__, target=install_offline.target_of(description), created=description["created"],
            wheels=len(wheels), models=(", models " + ", ".join(m["name"] for m in bundled_models)) if bundled_models else "",
        ), encoding="utf-8")
        _write_manifest(stage)
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    tarball = _archive(out) if archive else None
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return BundleResult(out, tarball, wheels, [m["name"] for m in bundled_models], size, variants)


def _resolve_model(spec: str) -> tuple[str, Path, bool]:
    """(name, GGUF path, installed?) of an installed model name or a GGUF file."""
    from libra_edge.models import registry
    from libra_edge.models.manifest import load_manifest, manifest_path_for

    path = Path(spec).expanduser()
    if path.is_file():
        carried = manifest_path_for(path)  # an export's manifest names the model
        name = load_manifest(carried).name if carried.is_file() else registry.name_from_file(path)
        return name, path, False
    model = registry.find_model(spec)
    if model is None:
        raise BundleError(f"--model {spec}: no such file and no installed model of that name",
                          hint="see libra-edge models list")
    return model.name, model.path, True


def _copy_models(models: list[tuple[str, Path, bool]], dest: Path, log: Callable[[str], None]) -> list[dict[str, str]]:
    """Each model into DEST with its manifest, as `models export` writes them (made here for a bare file)."""
    from libra_edge.models import registry
    from libra_edge.models.ggufinfo import read_model_info
    from libra_edge.models.manifest import copy_with_sha256, load_manifest, manifest_path_for, write_manifest

    out = []
    for name, path, installed in models:
        dest.mkdir(parents=True, exist_ok=True)
        log(f"==> adding model {name} ({path.stat().st_size / 1e6:,.0f} MB)")
        if installed:  # checked against its manifest as it is copied
            target = registry.export_model(name, dest)
            sha = load_manifest(manifest_path_for(target)).sha256
        else:
            target = dest / f"{name}.gguf"
            sha = copy_with_sha256(path, target)
            carried = manifest_path_for(path)
            if carried.is_file():
                manifest = load_manifest(carried)
                if manifest.sha256 != sha:
                    raise BundleError(f"{path}: sha256 differs from its manifest ({carried.name}): not bundled",
                                      hint="copy the file again from its export")
            else:
                manifest = registry.new_manifest(name, read_model_info(target), sha, origin="bundle",
                                                 imported_from=str(path.resolve()))
            write_manifest(manifest, manifest_path_for(target))
        out.append({"name": name, "file": f"models/{target.name}", "sha256": sha})
    return out


def _write_manifest(root: Path) -> None:
    """MANIFEST: `sha256  size  path` for every file of the bundle but itself, sorted."""
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        lines.append(f"{install_offline.sha256_file(path)}  {path.stat().st_size}  {rel}")
    (root / install_offline.MANIFEST).write_text("\n".join(lines) + "\n", encoding="utf-8")


# The small files first, so that an archive cut short still yields the installer and the
# MANIFEST, which then say what is missing.
_FIRST = (install_offline.MANIFEST, install_offline.DESCRIPTION, "install.py", "install-offline.sh", "README.txt")


def _archive(folder: Path) -> Path:
    """FOLDER.tar.gz (written beside it, atomically)."""
    tarball = folder.with_name(folder.name + ".tar.gz")
    partial = tarball.with_name(tarball.name + ".partial")
    files = sorted((p for p in folder.rglob("*") if p.is_file()),
                   key=lambda p: (p.name not in _FIRST, p.relative_to(folder).as_posix()))
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        for path in files:
            tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}")
    os.replace(partial, tarball)
    return tarball



if __name__ == "__main__":  # `python -m libra_edge.bundle.build --requirements` (install.sh)
    if sys.argv[1:] != ["--requirements"]:
        sys.exit("usage: python -m libra_edge.bundle.build --requirements")
    print("\n".join(runtime_requirements(())))
