"""`libra-edge bundle`: Build an offline bundle (wheels, models, installer) for an air-gapped machine.

Run on a connected machine, in a clone (`./install.sh --bundle OUT` builds the portable
llama-cpp-python wheel first, then runs this).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from libra_edge.cli.common import add_command, add_verbose_option, destination_folder
from libra_edge.units import human_size

EPILOG = """\
examples:
  ./install.sh --bundle ~/usb/libra-edge                     runtime only (this Python, Linux x86-64)
  libra-edge bundle ~/usb/le --model libra-guard-3b --archive  with a model, and le.tar.gz beside it
  libra-edge bundle out --with serve,report --python 3.12    the service and report extras, for 3.12
  libra-edge bundle out --offline                            only wheels already in .wheels/ (no index)

on the offline machine:
  tar xzf le.tar.gz && ./le/install-offline.sh --prefix ~/libra-edge

Every package is a wheel (no compiler needed there); llama-cpp-python is the portable
build, whose CPU kernels are picked at run time (any x86-64 CPU; `doctor` names them).
The MANIFEST lists every file's sha256: the installer refuses a changed, missing or extra
file, and a bundle for another Python or platform, before it installs anything.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "bundle", __doc__,
        description="Write a folder (and with --archive a .tar.gz) holding the wheels of libra-edge and "
                    "every runtime dependency for a named Python version, the portable llama-cpp-python wheel, "
                    "an installer script, optional models with their manifests, and a MANIFEST of sha256s.",
        epilog=EPILOG)
    p.add_argument("out", metavar="OUT", help="the bundle folder to create (must not exist, or be empty)")
    p.add_argument("--with", dest="extras", default="", metavar="EXTRAS",
                   help="optional parts to carry, comma-separated: serve, report, cluster, parquet")
    p.add_argument("--model", action="append", default=[], metavar="NAME|FILE",
                   help="an installed model or a GGUF file to carry (repeatable); imported by the installer")
    p.add_argument("--python", metavar="X.Y", help="the offline machine's Python version (default: this one)")
    p.add_argument("--platform", metavar="OS-ARCH",
                   help="the offline machine's platform (default and only one supported: linux-x86_64)")
    p.add_argument("--wheelhouse", action="append", default=[], metavar="DIR",
                   help="more folders of wheels to take packages from (besides .wheels/)")
    p.add_argument("--offline", action="store_true",
                   help="never contact the package index: every wheel must be in .wheels/ or --wheelhouse")
    p.add_argument("--archive", action="store_true", help="also write OUT.tar.gz")
    p.add_argument("--mkdir", action="store_true",
                   help="create OUT's parent folder if missing (else a missing one, e.g. a drive "
                   "that is not mounted, is an error)")
    add_verbose_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from libra_edge.bundle.build import BundleError, build_bundle

    if args.platform and args.platform.replace("_", "-").lower() not in ("linux-x86-64", "linux-x86_64"):
        raise BundleError(f"--platform {args.platform}: libra-edge bundles its portable llama.cpp for "
                          "linux-x86_64 only", hint="see README, 'Windows and macOS'")
    if args.python and not _is_version(args.python):
        raise BundleError(f"--python {args.python}: expected a version such as 3.11")
    out = Path(args.out).expanduser()
    # The rule of batch -o and models export: never a new folder in place of a missing drive.
    destination_folder(out.parent, mkdir=args.mkdir, name=args.out, missing=f" to hold it ({out.parent})")
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    result = build_bundle(
        out, extras=extras, models=args.model, python=args.python,
        wheelhouse=[Path(w) for w in args.wheelhouse], offline=args.offline, archive=args.archive,
        log=lambda line: print(line, file=sys.stderr),
    )
    print(f"bundle: {result.folder} ({human_size(result.size)}, {len(result.wheels)} wheels"
          + (f", models {', '.join(result.models)}" if result.models else "") + ")")
    print(f"  CPU kernels carried: {', '.join(result.cpu_variants)} (the best for each CPU is chosen when it loads; never sapphirerapids, the AMX one)")
    if result.archive is not None:
        print(f"archive: {result.archive} ({human_size(result.archive.stat().st_size)})")
    print(f"offline: {result.folder.name}/install-offline.sh --prefix ~/libra-edge")
    return 0


def _is_version(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 2 and all(p.isdigit() for p in parts)
