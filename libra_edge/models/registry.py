"""The installed models: `<name>.gguf` + `<name>.manifest.json` pairs in the models folder."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from libra_edge import __version__, paths
from libra_edge.errors import ModelError
from libra_edge.models import config
from libra_edge.models.ggufinfo import GGUFInfo, read_model_info
from libra_edge.models.manifest import (
    MANIFEST_SUFFIX,
    Manifest,
    Progress,
    copy_with_sha256,
    load_manifest,
    manifest_path_for,
    now_iso,
    sha256_file,
    write_manifest,
)
from libra_edge.engine.prompt import PROMPT_TEMPLATE_VERSION

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class PublishedGuard:
    """One Libra-Guard release on the Hugging Face hub, known to `models pull` by a short name."""

    name: str  # the short name `models pull` accepts
    repo_id: str
    base: str  # the model it fine-tunes
    architecture: str  # config.json `architectures[0]`, the converter's registry key
    libra_test_average: float  # published Libra-Test average accuracy, percent


# The seven published guards. Averages as the authors publish them (../shared/libra/NOTES.md
# for the Qwen2.5 series; the authors' comparison table for the Yi-1.5 and Qwen1 bases).
PUBLISHED_GUARDS: tuple[PublishedGuard, ...] = (
    *(
        PublishedGuard(f"libra-guard-{size.lower()}", f"caskcsg/Libra-Guard-Qwen2.5-{size}-Instruct",
                       f"Qwen2.5-{size}-Instruct", "Qwen2ForCausalLM", average)
        for size, average in (("0.5B", 81.46), ("1.5B", 83.93), ("3B", 84.75), ("7B", 85.24), ("14B", 86.79))
    ),
    PublishedGuard("libra-guard-yi-9b", "caskcsg/Libra-Guard-Yi-1.5-9B-Chat", "Yi-1.5-9B-Chat",
                   "LlamaForCausalLM", 85.93),
    PublishedGuard("libra-guard-qwen-14b", "caskcsg/Libra-Guard-Qwen-14B-Chat", "Qwen-14B-Chat",
                   "QWenLMHeadModel", 86.48),
)
# Short name -> hub repo id, for `models pull NAME`.
KNOWN_MODELS: dict[str, str] = {g.name: g.repo_id for g in PUBLISHED_GUARDS}


@dataclass(frozen=True)
class InstalledModel:
    """One registered model. `problem` is set when its manifest cannot be read."""

    name: str
    path: Path
    manifest: Manifest | None
    problem: str | None = None

    @property
    def manifest_path(self) -> Path:
        """The manifest file beside the GGUF."""
        return manifest_path_for(self.path)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of re-hashing one installed model."""

    model: InstalledModel
    status: str  # "OK", "CORRUPT", "MISSING" or "BROKEN"
    detail: str

    @property
    def ok(self) -> bool:
        """True only when the file's sha256 matches its manifest."""
        return self.status == "OK"


def check_name(name: str) -> str:
    """A valid model name (letters, digits, `.`, `_`, `-`, `+`) or a ModelError."""
    if name.endswith(".gguf"):
        name = name[: -len(".gguf")]
    if not _NAME_RE.match(name):
        raise ModelError(
            f"invalid model name {name!r}: use letters, digits, '.', '_', '-' or '+' "
            "(up to 100 characters, starting with a letter or digit)"
        )
    return name


def name_from_file(path: Path) -> str:
    """A model name derived from a file name: `Libra Guard 3B.gguf` -> `Libra-Guard-3B`."""
    stem = path.name[: -len(".gguf")] if path.name.endswith(".gguf") else path.stem
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-._+")
    return cleaned[:100] or "model"


def gguf_path(name: str) -> Path:
    """Where the model NAME's GGUF lives (installed or not)."""
    return paths.models_dir() / f"{name}.gguf"


IMATRIX_SUFFIX = ".imatrix.gguf"


def imatrix_path(gguf: Path) -> Path:
    """`dir/x.gguf` -> `dir/x.imatrix.gguf`: the importance matrix kept beside a model."""
    stem = gguf.name[: -len(".gguf")] if gguf.name.endswith(".gguf") else gguf.name
    return gguf.with_name(stem + IMATRIX_SUFFIX)


def installed_models() -> list[InstalledModel]:
    """Every registered model, sorted by name (no GGUF is opened)."""
    folder = paths.models_dir()
    if not folder.is_dir():
        return []
    found = []
    for mpath in sorted(folder.glob(f"*{MANIFEST_SUFFIX}")):
        name = mpath.name[: -len(MANIFEST_SUFFIX)]
        try:
            found.append(InstalledModel(name, gguf_path(name), load_manifest(mpath)))
        except ModelError as exc:
            found.append(InstalledModel(name, gguf_path(name), None, problem=str(exc)))
    return found


def find_model(name: str) -> InstalledModel | None:
    """The installed model called NAME, if any."""
    if not _NAME_RE.match(name):
        return None
    mpath = paths.models_dir() / f"{name}{MANIFEST_SUFFIX}"
    if not mpath.is_file():
        return None
    try:
        return InstalledModel(name, gguf_path(name), load_manifest(mpath))
    except ModelError as exc:
        return InstalledModel(name, gguf_path(name), None, problem=str(exc))


def get_model(name: str) -> InstalledModel:
    """The installed model called NAME, or a ModelError listing what is installed."""
    model = find_model(name)
    if model is None:
        names = [m.name for m in installed_models()]
        have = f"installed: {', '.join(names)}" if names else "no models are installed"
        raise ModelError(f"no installed model named {name!r} ({have})")
    return model


@contextmanager
def staged_file(name: str) -> Iterator[Path]:
    """A `.partial` path in the models folder; removed unless `commit()` renamed it into place."""
    folder = paths.models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stage = folder / f"{name}.gguf{PARTIAL_SUFFIX}"
    stage.unlink(missing_ok=True)
    try:
        yield stage
    finally:
        # Never leave half a model behind (Ctrl-C, a failed check): it would look installable.
        stage.unlink(missing_ok=True)


@contextmanager
def staging_dir(name: str) -> Iterator[Path]:
    """A scratch folder in the models folder (same filesystem: renames out of it are atomic)."""
    folder = paths.models_dir() / f".staging-{name}"
    shutil.rmtree(folder, ignore_errors=True)  # left by a pull that was killed
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def commit(stage: Path, manifest: Manifest, *, imatrix: Path | None = None) -> InstalledModel:
    """Move a fully written, hashed staged GGUF into place and register it with MANIFEST.

    `imatrix`: the importance matrix it was quantized with, kept beside it (`models rm` removes it).
    """
    final = gguf_path(manifest.name)
    if imatrix is not None:
        os.replace(imatrix, imatrix_path(final))
    os.replace(stage, final)  # same folder: atomic
    # The manifest goes last: a model counts as installed only once its manifest exists.
    write_manifest(manifest, manifest_path_for(final))
    if config.default_model_name() is None:
        config.set_default_model_name(manifest.name)
    return InstalledModel(manifest.name, final, manifest)


def refuse_existing(name: str) -> None:
    """ModelError when NAME is already installed (names are never silently replaced)."""
    if find_model(name) is not None:
        raise ModelError(
            f"a model named {name!r} is already installed",
            hint=f"choose another --name, or remove it first: libra-edge models rm {name}",
        )


def new_manifest(name: str, info: GGUFInfo, sha256: str, *, origin: str, **extra: object) -> Manifest:
    """A manifest for a GGUF about to be installed as NAME."""
    return Manifest(
        name=name,
        file=f"{name}.gguf",
        sha256=sha256,
        size=info.file_size,
        architecture=info.architecture,
        quant=info.quant,
        created=now_iso(),
        libra_edge_version=__version__,
        prompt_template_version=PROMPT_TEMPLATE_VERSION,
        origin=origin,
        context_length=info.context_length,
        n_params=info.n_params,
        imatrix_dataset=info.imatrix.dataset if info.imatrix else None,
        imatrix_calibration_sha256=info.imatrix.calibration_sha256 if info.imatrix else None,
        imatrix_entries=info.imatrix.entries if info.imatrix else None,
        **extra,  # type: ignore[arg-type]
    )


def import_model(
    src: Path, *, name: str | None = None, force: bool = False, progress: Progress | None = None
) -> tuple[InstalledModel, bool]:
    """Validate SRC and copy it in; returns (model, newly_installed).

    A manifest beside SRC (as `export` writes it) is checked against the copied bytes and
    its provenance (source repo, commit) is kept. Raises ModelError for a file that is not
    a complete GGUF, lacks a tokenizer or chat template, has another architecture (unless
    FORCE), or does not match its manifest.
    """
    src = Path(src).expanduser()
    info = read_model_info(src)
    problems = info.problems()
    if problems and not force:
        raise ModelError(f"{src}: cannot import: {'; '.join(problems)}",
                         hint="pass --force to import it anyway")
    carried = _carried_manifest(src, info)
    name = check_name(name or (carried.name if carried else name_from_file(src)))
    existing = find_model(name)
    if existing is not None and (existing.manifest is None or existing.manifest.size != info.file_size):
        refuse_existing(name)
    with staged_file(name) as stage:
        sha = copy_with_sha256(src, stage, progress)
        if carried is not None and sha != carried.sha256:
            raise ModelError(
                f"{src}: corrupt copy: sha256 {sha[:16]}… differs from its manifest's "
                f"{carried.sha256[:16]}… ({manifest_path_for(src).name})",
                hint="copy the file again from the export",
            )
        if existing is not None:
            if existing.manifest is not None and existing.manifest.sha256 == sha:
                return existing, False  # the very same file: nothing to do
            refuse_existing(name)
        extra: dict[str, object] = {"imported_from": str(src.resolve())}
        origin = "import"
        if carried is not None:
            origin = carried.origin
            extra.update(source_repo=carried.source_repo, source_revision=carried.source_revision,
                         source_commit=carried.source_commit)
        manifest = new_manifest(name, info, sha, origin=origin, **extra)
        return commit(stage, manifest), True


def _carried_manifest(src: Path, info: GGUFInfo) -> Manifest | None:
    """The manifest exported beside SRC, if there is one; checks the size before any copying."""
    mpath = manifest_path_for(src)
    if not mpath.is_file():
        return None
    carried = load_manifest(mpath)
    if carried.size != info.file_size:
        raise ModelError(
            f"{src}: incomplete copy: {info.file_size:,} bytes, its manifest says {carried.size:,}",
            hint="copy the file again from the export",
        )
    return carried


def export_model(name: str, dest_dir: Path, progress: Progress | None = None) -> Path:
    """Copy NAME's GGUF and manifest into DEST_DIR (checking the hash as it copies)."""
    model = get_model(name)
    if model.manifest is None:
        raise ModelError(f"{name}: cannot export: {model.problem}")
    if not model.path.is_file():
        raise ModelError(f"{name}: cannot export: {model.path} is missing")
    dest_dir = Path(dest_dir).expanduser()
    if dest_dir.exists() and not dest_dir.is_dir():
        raise ModelError(f"{dest_dir}: not a folder")
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / f"{name}.gguf"
    stage = target.with_name(target.name + PARTIAL_SUFFIX)
    try:
        sha = copy_with_sha256(model.path, stage, progress)
        if sha != model.manifest.sha256:
            raise ModelError(
                f"{name}: not exported: the installed file is corrupt "
                f"(sha256 {sha[:16]}… != manifest {model.manifest.sha256[:16]}…)",
                hint="pull or import it again",
            )
        os.replace(stage, target)
    finally:
        stage.unlink(missing_ok=True)
    write_manifest(model.manifest, manifest_path_for(target))
    return target


def verify_model(model: InstalledModel, progress: Progress | None = None) -> VerifyResult:
    """Re-hash an installed model's GGUF and compare with its manifest."""
    if model.manifest is None:
        return VerifyResult(model, "BROKEN", model.problem or "manifest unreadable")
    if not model.path.is_file():
        return VerifyResult(model, "MISSING", f"{model.path} is missing")
    size = model.path.stat().st_size
    if size != model.manifest.size:
        return VerifyResult(model, "CORRUPT",
                            f"size {size:,} bytes, manifest says {model.manifest.size:,}")
    sha = sha256_file(model.path, progress)
    if sha != model.manifest.sha256:
        return VerifyResult(model, "CORRUPT",
                            f"sha256 {sha[:16]}… != manifest {model.manifest.sha256[:16]}…")
    return VerifyResult(model, "OK", f"sha256 {sha[:16]}…")


def remove_model(name: str) -> InstalledModel:
    """Unregister NAME and delete its files; clears the default if it pointed at NAME."""
    model = get_model(name)
    # Manifest first: an interrupted removal leaves an unregistered file, never a
    # registered model whose GGUF is gone.
    model.manifest_path.unlink(missing_ok=True)
    model.path.unlink(missing_ok=True)
    imatrix_path(model.path).unlink(missing_ok=True)
    if config.default_model_name() == name:
        config.set_default_model_name(None)
    return model
