"""Installed models: finding the GGUF a command should use (and managing the collection).

Layout: `paths.models_dir()` holds `<name>.gguf` + `<name>.manifest.json`; the config file
names the default. `ggufinfo` reads a GGUF's metadata, `registry` installs/exports/verifies,
`hub` downloads and converts (the only networked part).
"""

from __future__ import annotations

from pathlib import Path

from libra_edge import paths
from libra_edge.errors import ModelError
from libra_edge.models import integrity

HOW_TO_GET_ONE = (
    "online: `libra-edge models pull libra-guard-3b`; "
    "offline: `libra-edge models import FILE.gguf`; or pass --model FILE.gguf"
)


def resolve_model(spec: str | None) -> Path:
    """The GGUF to load: `--model` path or installed name > configured default > the only model.

    Raises ModelError saying exactly how to get a model when none can be chosen, and
    refuses an installed model that `models verify` found corrupt. Never opens the
    network and never reads the GGUF (`Guard.load` validates it).
    """
    from libra_edge.models import config, registry

    if spec:
        return _resolve_spec(spec)
    default = config.default_model_name()
    if default:
        model = registry.find_model(default)
        if model is None:
            raise ModelError(
                f"the default model {default!r} is not installed (config: {config.config_file()})",
                hint="choose another with `libra-edge models default NAME`, see `libra-edge models list`",
            )
        return _existing_file(model.path, default)
    models = registry.installed_models()
    if len(models) == 1:
        return _existing_file(models[0].path, models[0].name)
    if not models:
        raise ModelError("no model installed", hint=HOW_TO_GET_ONE)
    names = ", ".join(m.name for m in models)
    raise ModelError(
        f"several models are installed ({names}) and none is the default",
        hint="pick one with `libra-edge models default NAME`, or pass --model NAME",
    )


def _resolve_spec(spec: str) -> Path:
    from libra_edge.models import registry

    path = Path(spec).expanduser()
    if path.is_file():
        if path.name.endswith(".gguf") and _same_folder(path.parent, paths.models_dir()):
            integrity.refuse_if_corrupt(path.name[: -len(".gguf")], path)  # an installed model by path
        return path
    if path.is_dir():
        raise ModelError(f"{spec}: is a folder, expected a GGUF file or an installed model name")
    model = registry.find_model(spec)
    if model is not None:
        return _existing_file(model.path, model.name)
    if "/" in spec or "\\" in spec or spec.endswith(".gguf"):
        raise ModelError(f"{spec}: no such model file")
    names = [m.name for m in registry.installed_models()]
    have = f"installed: {', '.join(names)}" if names else "no models are installed"
    raise ModelError(
        f"{spec}: neither a file nor an installed model name ({have})",
        hint=HOW_TO_GET_ONE if not names else None,
    )


def _existing_file(path: Path, name: str) -> Path:
    if not path.is_file():
        raise ModelError(
            f"model {name!r} is registered but its file {path} is missing",
            hint=f"remove it with `libra-edge models rm {name}` and pull or import it again",
        )
    integrity.refuse_if_corrupt(name, path)
    return path


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False
