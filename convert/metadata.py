"""General GGUF metadata: name, size label, license, provenance and the libra-edge prompt version."""

from __future__ import annotations

import re
from dataclasses import dataclass

import gguf

from .checkpoint import Checkpoint
from libra_edge import __version__
from libra_edge.engine.prompt import PROMPT_TEMPLATE_VERSION

# libra-edge's own keys (a GGUF namespace of its own, read back by the engine).
KEY_PROMPT_TEMPLATE = "libra_edge.prompt_template"
KEY_SOURCE_REPO = "libra_edge.source.repo"
KEY_SOURCE_REVISION = "libra_edge.source.revision"
KEY_CONVERTER = "libra_edge.converter"


@dataclass(frozen=True)
class Provenance:
    """Where the checkpoint came from, when known (CLI flags win over libra_edge_source.json)."""

    repo: str | None = None
    revision: str | None = None

    @classmethod
    def resolve(cls, checkpoint: Checkpoint, repo: str | None, revision: str | None) -> Provenance:
        """Combine explicit values with the checkpoint's `libra_edge_source.json`."""
        return cls(repo or checkpoint.source.get("repo"), revision or checkpoint.source.get("revision"))


def model_name(checkpoint: Checkpoint, provenance: Provenance, explicit: str | None) -> str:
    """A human name: --name, else the repo's last part, else the folder name."""
    if explicit:
        return explicit
    if provenance.repo:
        return provenance.repo.rstrip("/").split("/")[-1]
    return checkpoint.path.resolve().name


def readme_license(checkpoint: Checkpoint) -> str | None:
    """`license:` from the model card's YAML front matter (README.md), if there is one."""
    readme = checkpoint.path / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    front = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if not front:
        return None
    found = re.search(r"^license:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", front.group(1), re.M)
    return found.group(1) if found else None


def add_metadata(
    writer: gguf.GGUFWriter,
    checkpoint: Checkpoint,
    *,
    n_params: int,
    provenance: Provenance,
    name: str | None = None,
) -> None:
    """Write the general.* keys and libra-edge's own keys."""
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(model_name(checkpoint, provenance, name))
    if n_params:
        writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    license_ = readme_license(checkpoint)
    if license_:
        writer.add_license(license_)
    if provenance.repo:
        writer.add_source_repo_url(f"https://huggingface.co/{provenance.repo}")
        writer.add_string(KEY_SOURCE_REPO, provenance.repo)
    if provenance.revision:
        writer.add_string(KEY_SOURCE_REVISION, provenance.revision)
    writer.add_string(KEY_PROMPT_TEMPLATE, PROMPT_TEMPLATE_VERSION)
    writer.add_string(KEY_CONVERTER, f"libra-edge {__version__}")
