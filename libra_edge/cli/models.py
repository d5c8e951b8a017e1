"""`libra-edge models`: installed models: list, inspect, pull, import, export, verify, rm, default."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libra_edge import paths
from libra_edge.cli.common import add_command, add_verbose_option, destination_folder
from libra_edge.errors import ExitCode, LibraError
from libra_edge.units import human_size

if TYPE_CHECKING:
    from libra_edge.models.registry import InstalledModel


MODELS_EPILOG = """\
Across an air gap:
  online$  libra-edge models pull libra-guard-3b          # download, convert to Q4_K_M, install
  online$  libra-edge models export libra-guard-3b /media/usb
  offline$ libra-edge models import /media/usb/libra-guard-3b.gguf   # checks it against its manifest
  offline$ libra-edge models verify                       # re-hash every installed model

Other commands find their model by itself: --model PATH|NAME, else the default
(`libra-edge models default NAME`), else the only installed model.
Models live in {models_dir} (set LIBRA_EDGE_HOME to move all data).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `models` and its subcommands to the top-level parser."""
    p = add_command(sub, "models", __doc__,
        description="Manage the GGUF models libra-edge runs. Only `pull` uses the network.",
        epilog=MODELS_EPILOG.format(models_dir=paths.models_dir()))
    p.set_defaults(func=run_list, json=False)
    msub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")

    s = add_command(msub, "list", run_list.__doc__,
        description="List installed models: name, quantization, size, architecture, source.",
        epilog="Examples:\n  libra-edge models list\n  libra-edge models list --json | jq -r '.[].name'")
    s.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    s.set_defaults(func=run_list)

    s = add_command(msub, "info", run_info.__doc__,
        description="Show what a GGUF says about itself (architecture, quantization, context, "
                    "parameters, tokenizer, chat template) and its manifest (source, sha256).",
        epilog="Examples:\n  libra-edge models info libra-guard-3b\n"
                    "  libra-edge models info /media/usb/model.gguf --json")
    s.add_argument("model", metavar="NAME|FILE")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=run_info)

    from libra_edge.models.registry import PUBLISHED_GUARDS  # light: what `pull` knows by name

    # From the registry itself, so the help names every guard `pull` accepts.
    known = "\n".join(f"  {g.name:<22} {g.repo_id}" for g in PUBLISHED_GUARDS)
    s = add_command(msub, "pull", run_pull.__doc__,
        description="Download a checkpoint's safetensors, config and tokenizer files (nothing "
                    "else), convert and quantize it to GGUF, and install it with a manifest recording the "
                    "repo, the resolved commit and the file's sha256. Downloads are cached and resumable.",
        epilog=f"Known names ({len(PUBLISHED_GUARDS)}):\n{known}\n\n"
                    "Examples:\n  libra-edge models pull libra-guard-3b\n"
                    "  libra-edge models pull libra-guard-3b --quant q5_k_m   # 2/3 the size, with an importance matrix\n"
                    "  libra-edge models pull libra-guard-14b --quant q4_k_m --no-imatrix --name guard-plain\n"
                    "  libra-edge models pull caskcsg/Libra-Guard-Qwen2.5-3B-Instruct --revision 1a2b3c4 "
                    "--name guard\n\n"
                    "Environment: HF_ENDPOINT (a mirror), HF_TOKEN (gated or private repos),\n"
                    "HF_HOME / HF_HUB_CACHE (download cache), HF_HUB_OFFLINE=1 (use the cache only).")
    from libra_edge.models.hub import DEFAULT_QUANT, QUANTS  # light: no network libraries

    s.add_argument("repo", metavar="NAME|REPO_ID", help="known name or hub repo id (owner/name)")
    s.add_argument("--revision", metavar="REV", help="branch, tag or commit (default: main)")
    s.add_argument("--quant", default=DEFAULT_QUANT, choices=QUANTS, type=str.lower,
                   help=f"quantization of the GGUF (default: {DEFAULT_QUANT}, the most faithful measured; "
                   "q5_k_m with its importance matrix is next, at 2/3 the size)")
    s.add_argument("--no-imatrix", action="store_true",
                   help="quantize without an importance matrix (by default the K-quants below Q8 and "
                   "IQ4_XS get one, computed on the shipped Libra calibration set: one extra pass of "
                   "the unquantized model, closer scores at 4-6 bits)")
    s.add_argument("--name", metavar="NAME", help="install under this name "
                   "(default: the known name, plus -QUANT when not the default quant)")
    add_verbose_option(s)
    s.set_defaults(func=run_pull)

    s = add_command(msub, "import", run_import.__doc__,
        description="Check a GGUF (header, complete file, architecture, tokenizer, chat "
                    "template), hash it while copying it in, and register it. A manifest beside the "
                    "file (as `export` writes it) must match: a corrupt copy is refused.",
        epilog="Examples:\n  libra-edge models import /media/usb/libra-guard-3b.gguf\n"
                    "  libra-edge models import ~/Downloads/guard-q8.gguf --name guard-q8\n"
                    "  libra-edge models import other-arch.gguf --force   # skip the architecture check")
    s.add_argument("file", metavar="FILE.gguf", type=Path)
    s.add_argument("--name", metavar="NAME", help="install under this name (default: from the file)")
    s.add_argument("--force", action="store_true",
                   help="import even if the architecture, tokenizer or chat template look wrong")
    add_verbose_option(s)
    s.set_defaults(func=run_import)

    s = add_command(msub, "export", run_export.__doc__,
        description="Write NAME.gguf and NAME.manifest.json into DIR (checking the hash as it "
                    "copies), ready for `libra-edge models import` on another machine. DIR must exist "
                    "(a drive that is not mounted is an error, not a new local folder) unless --mkdir.",
        epilog="Examples:\n  libra-edge models export libra-guard-3b /media/usb\n"
                    "  libra-edge models export libra-guard-3b ~/transfer/guard --mkdir")
    s.add_argument("name", metavar="NAME")
    s.add_argument("dest", metavar="DIR", type=Path)
    s.add_argument("--mkdir", action="store_true", help="create DIR (and its parents) if missing")
    s.set_defaults(func=run_export)

    s = add_command(msub, "verify", run_verify.__doc__,
        description="Recompute each model's sha256 and compare it with its manifest. Prints "
                    "OK or CORRUPT/MISSING/BROKEN per model; exits 3 if any model fails.",
        epilog="Examples:\n  libra-edge models verify\n  libra-edge models verify libra-guard-3b")
    s.add_argument("name", metavar="NAME", nargs="?", help="one model (default: all)")
    s.set_defaults(func=run_verify)

    s = add_command(msub, "rm", run_rm.__doc__,
        description="Delete NAME's GGUF and manifest (and unset it as default).",
        epilog="Example:\n  libra-edge models rm libra-guard-3b-q8_0")
    s.add_argument("name", metavar="NAME")
    s.set_defaults(func=run_rm)

    s = add_command(msub, "default", run_default.__doc__,
        description="Without NAME: print the default model. With NAME: make it the default.",
        epilog="Examples:\n  libra-edge models default\n  libra-edge models default libra-guard-7b")
    s.add_argument("name", metavar="NAME", nargs="?")
    s.set_defaults(func=run_default)


class _ProgressLine:
    """`label:  42% (1.2 GB / 2.9 GB)` redrawn in place on stderr, only on a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        pct = done * 100 // total if total else 100
        if self.enabled and pct != self.last:
            self.last = pct
            print(f"\r{self.label}: {pct:3d}% ({human_size(done)} / {human_size(total)})",
                  end="", file=sys.stderr, flush=True)

    def finish(self) -> None:
        if self.enabled and self.last >= 0:
            print(file=sys.stderr)


def _params(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def run_list(args: argparse.Namespace) -> int:
    """List the installed models (* marks the default)."""
    from libra_edge.models import config, registry

    models = registry.installed_models()
    default = config.default_model_name()
    if args.json:
        rows = [_model_dict(m, m.name == default) for m in models]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return ExitCode.OK
    if not models:
        from libra_edge.models import HOW_TO_GET_ONE

        print(f"no models installed in {paths.models_dir()}", file=sys.stderr)
        print(f"get one: {HOW_TO_GET_ONE}", file=sys.stderr)
        return ExitCode.OK
    table = [("", "NAME", "QUANT", "SIZE", "ARCH", "SOURCE")]
    for m in models:
        mf = m.manifest
        if mf is None:
            table.append(("", m.name, "?", "?", "?", f"BROKEN: {m.problem}"))
            continue
        source = mf.source_repo + (f"@{mf.source_commit[:12]}" if mf.source_commit else "") \
            if mf.source_repo else f"imported {mf.imported_from or ''}".strip()
        table.append(("*" if m.name == default else "", m.name, mf.quant, human_size(mf.size),
                      mf.architecture or "?", source))
    _print_table(table)
    return ExitCode.OK


def _model_dict(m: InstalledModel, is_default: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"name": m.name, "path": str(m.path), "default": is_default}
    if m.manifest is not None:
        from dataclasses import asdict

        data.update(asdict(m.manifest))
        data["name"] = m.name
    else:
        data["problem"] = m.problem
    return data


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def run_info(args: argparse.Namespace) -> int:
    """Show the metadata of an installed model or a GGUF file, and its manifest."""
    from libra_edge.models import config, registry
    from libra_edge.models.ggufinfo import read_model_info
    from libra_edge.models.manifest import load_manifest, manifest_path_for

    path = Path(args.model).expanduser()
    model = None if path.is_file() else registry.get_model(args.model)
    if model is not None:
        path = model.path
    info = read_model_info(path)
    mpath = manifest_path_for(path)
    manifest = model.manifest if model is not None else (
        load_manifest(mpath) if mpath.is_file() else None)
    if args.json:
        from dataclasses import asdict

        data = {k: v for k, v in asdict(info).items() if k != "metadata"}
        data.update(path=str(path), metadata=info.metadata, problems=info.problems(),
                    manifest=asdict(manifest) if manifest else None,
                    default=model is not None and model.name == config.default_model_name())
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        return ExitCode.OK
    rows = [
        ("name", model.name if model else "(not installed)"),
        ("file", str(path)),
        ("size", f"{human_size(info.file_size)} ({info.file_size:,} bytes)"),
        ("architecture", info.architecture or "?"),
        ("quantization", info.quant),
        ("importance matrix", info.imatrix.line() if info.imatrix else "none"),
        ("parameters", f"{_params(info.n_params)} ({info.n_params:,}, {info.n_tensors} tensors)"),
        ("layers", str(info.n_layers or "?")),
        ("context (trained)", str(info.context_length or "?")),
        ("tokenizer", f"{info.tokenizer_model or '?'}, {info.vocab_size:,} tokens"),
        ("chat template", f"{len(info.chat_template):,} characters" if info.chat_template
         else "MISSING"),
        ("model name (GGUF)", info.name or "?"),
    ]
    if manifest is not None:
        source = manifest.source_repo or "-"
        if manifest.source_commit:
            source += f" @ {manifest.source_commit}"
        rows += [
            ("source", source),
            ("origin", manifest.origin + (f" from {manifest.imported_from}"
                                          if manifest.imported_from else "")),
            ("sha256", manifest.sha256),
            ("installed", manifest.created or "?"),
            ("prompt template", manifest.prompt_template_version or "?"),
            ("libra-edge", manifest.libra_edge_version or "?"),
        ]
    for problem in info.problems():
        rows.append(("WARNING", problem))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    return ExitCode.OK


def run_pull(args: argparse.Namespace) -> int:
    """Download from the Hugging Face hub, convert to GGUF, install."""
    from libra_edge.models import config, hub

    progress = _ProgressLine("hashing")
    model = hub.pull(args.repo, revision=args.revision, quant=args.quant, name=args.name,
                     progress=progress, say=lambda line: print(line, file=sys.stderr, flush=True),
                     no_imatrix=args.no_imatrix)
    progress.finish()
    _installed_message(model, config.default_model_name())
    return ExitCode.OK


def run_import(args: argparse.Namespace) -> int:
    """Install a GGUF file (e.g. from removable media), checked against its manifest."""
    from libra_edge.models import config, registry

    progress = _ProgressLine(f"importing {args.file.name}")
    model, new = registry.import_model(args.file, name=args.name, force=args.force,
                                       progress=progress)
    progress.finish()
    if not new:
        print(f"{model.name}: already installed (identical file)", file=sys.stderr)
        return ExitCode.OK
    _installed_message(model, config.default_model_name())
    return ExitCode.OK


def _installed_message(model: InstalledModel, default: str | None) -> None:
    mf = model.manifest
    assert mf is not None  # a model just installed has the manifest it was installed with
    source = f" from {mf.source_repo}@{(mf.source_commit or '?')[:12]}" if mf.source_repo else ""
    print(f"installed {model.name}{source} ({mf.quant}, {human_size(mf.size)}, "
          f"sha256 {mf.sha256[:16]}…)", file=sys.stderr)
    if default == model.name:
        print(f"{model.name} is the default model", file=sys.stderr)
    else:
        print(f"use it with --model {model.name}, or `libra-edge models default {model.name}`",
              file=sys.stderr)
    print(model.path)  # stdout: the path, for scripts


def run_export(args: argparse.Namespace) -> int:
    """Copy a model and its manifest into an existing folder, for transfer."""
    from libra_edge.models import registry

    dest = args.dest.expanduser()
    # On removable media a missing folder usually means the drive is not mounted: creating
    # it would silently write gigabytes to the local disk instead. The rule is batch -o's
    # (one function); the folder is made only once the model's name is known to be good.
    if not args.mkdir:
        destination_folder(dest, mkdir=False, name=str(dest), missing=" (is the drive mounted?)")
    registry.get_model(args.name)  # an unknown name is reported before any folder is made
    destination_folder(dest, mkdir=True, name=str(dest))
    progress = _ProgressLine(f"exporting {args.name}")
    target = registry.export_model(args.name, dest, progress)
    progress.finish()
    print(f"exported {args.name}: {target} (+ {target.stem}.manifest.json)", file=sys.stderr)
    print(target)
    return ExitCode.OK


def run_verify(args: argparse.Namespace) -> int:
    """Re-hash installed models against their manifests (exit 3 if any fails)."""
    from libra_edge.models import integrity, registry

    models = [registry.get_model(args.name)] if args.name else registry.installed_models()
    if not models:
        print("no models installed: nothing to verify", file=sys.stderr)
        return ExitCode.OK
    failed = 0
    for m in models:
        progress = _ProgressLine(f"verifying {m.name}")
        result = registry.verify_model(m, progress)
        progress.finish()
        integrity.remember(m.name, m.path, result.status, result.detail)
        failed += not result.ok
        print(f"{result.status:8} {m.name}  {result.detail}")
    if failed:
        print(f"{failed} of {len(models)} model(s) failed verification: remove them "
              "(`libra-edge models rm NAME`) and pull or import them again", file=sys.stderr)
        return ExitCode.MODEL
    return ExitCode.OK


def run_rm(args: argparse.Namespace) -> int:
    """Delete an installed model."""
    from libra_edge.models import integrity, registry

    model = registry.remove_model(args.name)
    integrity.forget(model.name)
    print(f"removed {model.name} ({model.path})", file=sys.stderr)
    return ExitCode.OK


def run_default(args: argparse.Namespace) -> int:
    """Show or set the default model."""
    from libra_edge.models import config, registry

    if args.name is None:
        name = config.default_model_name()
        if name is None:
            print("no default model set (commands use the only installed model, if there is "
                  "one)", file=sys.stderr)
            return ExitCode.OK
        print(name)
        return ExitCode.OK
    model = registry.get_model(args.name)
    config.set_default_model_name(model.name)
    print(f"default model: {model.name}", file=sys.stderr)
    return ExitCode.OK
