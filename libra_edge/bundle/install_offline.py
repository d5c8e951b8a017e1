"""The offline installer that travels inside a bundle (as `install.py`): standard library only.

    python3 install.py [--prefix DIR] [--no-models] [--no-doctor]

Checks, in this order, before anything is written: every file against the bundle's
MANIFEST (sha256 and size; a missing, changed or unlisted file is refused, naming it),
then that the bundle was built for this Python and platform. Then it creates a venv at
PREFIX, installs libra-edge from the bundle's wheels only (no index, no compiler: every
package is a wheel), imports the bundled models with their manifests, and runs `doctor`.
A failed step removes the venv it created; nothing is left half-installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

BUNDLE_FORMAT = 1
MANIFEST = "MANIFEST"
DESCRIPTION = "BUNDLE.json"
MARKER = ".libra-edge-bundle"  # written into a venv this installer made
EXIT_REFUSED = 2  # the bundle or this machine is not right: nothing was installed
EXIT_FAILED = 3  # a step failed after the checks; what it made was removed


class Refused(Exception):
    """The bundle cannot be installed here (the message says why, in one line)."""


def main(argv: list[str] | None = None) -> int:
    """Verify, check the target, install, import models, run doctor; the exit status."""
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(
        prog="install-offline.sh",
        description="Install libra-edge from this bundle, with no network and no compiler.",
    )
    parser.add_argument("--prefix", default=str(Path.home() / "libra-edge"),
                        help="the virtual environment to create (default: ~/libra-edge)")
    parser.add_argument("--no-models", action="store_true", help="do not import the bundled models")
    parser.add_argument("--no-doctor", action="store_true", help="skip doctor's smoke test at the end")
    args = parser.parse_args(argv)
    prefix = Path(args.prefix).expanduser().absolute()
    try:
        bundle = verify(here)
        check_target(bundle)
        check_prefix(prefix)
    except Refused as exc:
        print(f"install-offline: refused: {exc}; nothing was installed", file=sys.stderr)
        return EXIT_REFUSED
    created = not prefix.exists()
    try:
        install(here, bundle, prefix)
        models = [] if args.no_models else import_models(here, bundle, prefix)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"install-offline: failed: {exc}", file=sys.stderr)
        if created:
            shutil.rmtree(prefix, ignore_errors=True)
            print(f"install-offline: removed {prefix}", file=sys.stderr)
        return EXIT_FAILED
    doctor_status = None if args.no_doctor else run_doctor(prefix, models[0] if models else None)
    exe = prefix / "bin" / "libra-edge"
    print(f"==> installed libra-edge {bundle['libra_edge']} into {prefix} "
          f"({len(bundle['wheels'])} wheels from the bundle, no network)")
    for name in models:
        print(f"    model {name} imported (libra-edge models verify re-hashes it)")
    print(f"    run: {exe} check -q '问题' -r '回答'   (or: source {prefix / 'bin' / 'activate'})")
    if doctor_status == 3:  # it ran, and a built-in pair came out wrong (any non-guard model does)
        print("install-offline: doctor's smoke test did not judge both built-in pairs as expected "
              "(see above; a model that is not a trained guard never does)", file=sys.stderr)
    elif doctor_status not in (None, 0):
        print(f"install-offline: installed, but `libra-edge doctor` failed (exit {doctor_status}): "
              "llama.cpp does not run on this machine as installed; see its output above", file=sys.stderr)
        return EXIT_FAILED
    return 0


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, tuple[str, int]]:
    """MANIFEST's lines `sha256  size  path` as {path: (sha256, size)}."""
    path = root / MANIFEST
    if not path.is_file():
        raise Refused(f"{path} is missing: this folder is not a complete libra-edge bundle "
                      "(was the archive cut short?)")
    entries: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("  ", 2)
        if len(parts) != 3 or len(parts[0]) != 64 or not parts[1].isdigit():
            raise Refused(f"{path}:{number}: not a MANIFEST line (sha256  size  path)")
        entries[parts[2]] = (parts[0], int(parts[1]))
    return entries


def verify(root: Path) -> dict:  # type: ignore[type-arg]
    """Check every file against MANIFEST; the bundle's description (BUNDLE.json)."""
    entries = read_manifest(root)
    for rel, (sha, size) in sorted(entries.items()):
        path = root / rel
        if not path.is_file():
            raise Refused(f"{rel} is missing (the MANIFEST lists it): the bundle is incomplete, "
                          "perhaps a partial copy or a truncated archive")
        actual = path.stat().st_size
        if actual != size:
            raise Refused(f"{rel}: {actual:,} bytes, the MANIFEST says {size:,} "
                          "(a partial copy or a truncated archive)")
        if sha256_file(path) != sha:
            raise Refused(f"{rel}: sha256 differs from the MANIFEST (the file was changed or damaged)")
    listed = set(entries) | {MANIFEST}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and rel not in listed and "__pycache__" not in rel:
            raise Refused(f"{rel} is not in the MANIFEST (a file was added to the bundle)")
    if DESCRIPTION not in entries:
        raise Refused(f"the MANIFEST does not list {DESCRIPTION}")
    bundle = json.loads((root / DESCRIPTION).read_text(encoding="utf-8"))
    if bundle.get("format") != BUNDLE_FORMAT:
        raise Refused(f"{DESCRIPTION}: bundle format {bundle.get('format')!r}, this installer reads {BUNDLE_FORMAT}")
    print(f"==> verified {len(entries)} files against the MANIFEST "
          f"({sum(s for _, s in entries.values()) / 1e6:,.1f} MB)")
    return bundle  # type: ignore[no-any-return]


def target_of(bundle: dict) -> str:  # type: ignore[type-arg]
    """How a bundle names the machine it was built for."""
    return (f"CPython {bundle['python']} on {bundle['system']} {bundle['machine']}"
            + (f" (glibc {bundle['glibc']} or newer)" if bundle.get("glibc") else ""))


def check_target(bundle: dict) -> None:  # type: ignore[type-arg]
    """Refuse a bundle built for another Python version, OS, CPU architecture or older glibc."""
    here_python = "%d.%d" % sys.version_info[:2]
    here = f"CPython {here_python} on {platform.system().lower()} {platform.machine()}"
    built_for = target_of(bundle)
    if platform.python_implementation() != "CPython" or here_python != bundle["python"]:
        raise Refused(f"this bundle was built for {built_for}; {sys.executable} is "
                      f"{platform.python_implementation()} {here_python} (run it with "
                      f"python{bundle['python']}, or build a bundle with --python {here_python})")
    if platform.system().lower() != bundle["system"] or platform.machine() != bundle["machine"]:
        raise Refused(f"this bundle was built for {built_for}; this machine is {here}")
    wanted = bundle.get("glibc")
    if wanted:
        try:
            name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # type: ignore[union-attr]
        except (ValueError, OSError, AttributeError):
            name, version = "", ""
        if name != "glibc" or _version(version) < _version(wanted):
            raise Refused(f"this bundle was built for {built_for}; this machine has "
                          f"{'glibc ' + version if name == 'glibc' else 'no glibc'}")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def check_prefix(prefix: Path) -> None:
    """PREFIX must be new (or empty), or a venv this installer made before (reinstalled)."""
    if prefix.exists() and not prefix.is_dir():
        raise Refused(f"{prefix} exists and is not a folder")
    if prefix.is_dir() and any(prefix.iterdir()) and not (prefix / MARKER).is_file():
        raise Refused(f"{prefix} exists and is not empty (choose another --prefix, or remove it)")


def run(cmd: list[str], **kwargs: object) -> None:
    """Run CMD with pip pointed at nothing but the bundle (no index, no user config)."""
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", PIP_NO_INPUT="1")
    subprocess.run(cmd, check=True, env=env, **kwargs)  # type: ignore[call-overload]


def install(root: Path, bundle: dict, prefix: Path) -> None:  # type: ignore[type-arg]
    """Create the venv (pip from the bundle, not ensurepip) and install libra-edge into it."""
    wheels = root / "wheels"
    print(f"==> creating {prefix}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(prefix)], check=True)
    (prefix / MARKER).write_text(json.dumps({"libra_edge": bundle["libra_edge"]}) + "\n", encoding="utf-8")
    python = str(prefix / "bin" / "python")
    pip_wheel = wheels / bundle["pip_wheel"]
    # A wheel is a zip that Python can run from: the bundle's pip installs itself.
    run([python, f"{pip_wheel}/pip", "install", "-q", "--no-index", str(pip_wheel)])
    extras = ",".join(bundle.get("extras", []))
    requirement = f"libra-edge{'[' + extras + ']' if extras else ''}=={bundle['libra_edge']}"
    print(f"==> installing {requirement} from {len(bundle['wheels'])} wheels")
    run([python, "-m", "pip", "install", "-q", "--no-index", "--only-binary=:all:",
         "--find-links", str(wheels), requirement])


def import_models(root: Path, bundle: dict, prefix: Path) -> list[str]:  # type: ignore[type-arg]
    """`libra-edge models import` each bundled model (its manifest travels beside it)."""
    names = []
    exe = str(prefix / "bin" / "libra-edge")
    for model in bundle.get("models", []):
        print(f"==> importing model {model['name']}")
        run([exe, "models", "import", str(root / model["file"])])
        names.append(model["name"])
    return names


def run_doctor(prefix: Path, model: str | None) -> int:
    """`libra-edge doctor`, its smoke test on the first bundled model (if any); its exit status."""
    args = ["--model", model] if model else ["--no-smoke"]
    print(f"==> libra-edge doctor {' '.join(args)}" + ("" if model else " (no model in the bundle)"))
    exe = str(prefix / "bin" / "libra-edge")
    return subprocess.run([exe, "doctor", *args]).returncode


if __name__ == "__main__":
    sys.exit(main())
