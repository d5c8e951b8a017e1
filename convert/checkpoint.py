"""A Hugging Face checkpoint folder: config, tokenizer files and safetensors weights, validated up front."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .safetensors_reader import TensorRef, read_tensor_refs
from libra_edge.errors import ConversionError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Weight formats that are Python pickles: loading one can execute arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Optional file beside the weights recording where they came from (written by `models pull`).
SOURCE_FILE = "libra_edge_source.json"


@dataclass
class Checkpoint:
    """A validated checkpoint folder: every file needed is present and every shard is complete."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorRef]
    weight_files: list[Path]
    source: dict[str, str] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        """`config.json` `architectures[0]`, e.g. `Qwen2ForCausalLM`."""
        return str(self.config["architectures"][0])

    def read_json(self, name: str) -> dict[str, Any]:
        """A JSON file of the checkpoint, or a one-line error naming it."""
        return read_json(self.path / name)


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object from `path`; ConversionError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{path}: missing") from None
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def open_checkpoint(path: Path) -> Checkpoint:
    """Validate a checkpoint folder and index its tensors (headers only; no weights are read)."""
    path = Path(path)
    if not path.is_dir():
        raise ConversionError(f"{path}: not a folder (expected a Hugging Face checkpoint folder)")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{config_path}: missing (not a Hugging Face checkpoint folder?)")
    config = read_json(config_path)
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise ConversionError(f"{config_path}: no `architectures` list naming the model class")
    files = _weight_files(path)
    tensors: dict[str, TensorRef] = {}
    for file in files:
        for name, ref in read_tensor_refs(file).items():
            if name in tensors:
                raise ConversionError(f"{file}: tensor {name!r} is also in {tensors[name].file.name}")
            tensors[name] = ref
    index = path / INDEX_FILE
    if index.is_file():
        for name, shard in _weight_map(index).items():
            if name not in tensors:
                raise ConversionError(f"{path / shard}: tensor {name!r} listed in {INDEX_FILE} is missing")
    source = _read_source(path)
    return Checkpoint(path, config, tensors, files, source)


def _weight_map(index: Path) -> dict[str, str]:
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConversionError(f"{index}: no `weight_map`")
    return {str(k): str(v) for k, v in weight_map.items()}


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files holding the weights; pickles are refused by name."""
    index = path / INDEX_FILE
    if index.is_file():
        files = []
        for shard in sorted(set(_weight_map(index).values())):
            file = path / shard
            if not file.is_file():
                raise ConversionError(f"{file}: shard listed in {INDEX_FILE} is missing")
            files.append(file)
        return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ConversionError(
            f"{pickles[0]}: pickle (PyTorch .bin/.pt) weights are refused because loading them can "
            "run arbitrary code; use the safetensors release of this model"
        )
    raise ConversionError(f"{path}: no model weights (*.safetensors) found")


def _read_source(path: Path) -> dict[str, str]:
    """`libra_edge_source.json`'s repo/revision, when the folder has one."""
    file = path / SOURCE_FILE
    if not file.is_file():
        return {}
    data = read_json(file)
    out: dict[str, str] = {}
    repo = data.get("repo") or data.get("repo_id")
    if isinstance(repo, str) and repo:
        out["repo"] = repo
    revision = data.get("revision")
    if isinstance(revision, str) and revision:
        out["revision"] = revision
    return out
