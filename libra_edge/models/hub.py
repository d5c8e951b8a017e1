"""`models pull`: download a checkpoint from the Hugging Face hub, convert it, install it.

The only module of libra-edge that opens network connections. It leans on
huggingface-hub for everything the hub's users expect: `HF_ENDPOINT` (mirrors),
`HF_TOKEN` (gated/private repos), `HF_HOME`/`HF_HUB_CACHE` (where downloads are cached:
a second pull of the same commit downloads nothing) and `HF_HUB_OFFLINE` (use the cache
only). A dropped connection resumes from the byte it stopped at (an HTTP Range request);
files completed before an interrupted pull stay in the cache and are not fetched again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from libra_edge.errors import ConversionError, LibraError, ModelError, NetworkError
from libra_edge.models import registry
from libra_edge.models.ggufinfo import read_model_info
from libra_edge.models.manifest import Progress, sha256_file

# Short names of the seven published guards (Qwen2.5 series, Yi-1.5-9B-Chat, Qwen-14B-Chat).
KNOWN_MODELS = registry.KNOWN_MODELS

# Exactly what the converter reads: weights, their index, config and tokenizer files.
# Never *.bin/*.pt (pickles), never other formats' copies of the weights.
CONVERSION_FILES = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",  # SentencePiece vocabulary (Yi-1.5, Llama)
    "added_tokens.json",
    "qwen.tiktoken",  # Qwen1's vocabulary (its tokenization_qwen.py is never downloaded)
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
]

# Q8_0: the most faithful file of the measured table (README "Quantizations: size, speed,
# fidelity"), and it needs no calibration pass. Q5_K_M with the importance matrix comes next.
DEFAULT_QUANT = "q8_0"
# A subset of the converter's `convert.OUTTYPES` (kept here so `--help` stays import-cheap).
QUANTS = ("q4_k_m", "q4_k_s", "q5_k_m", "q6_k", "q8_0", "iq4_xs", "q4_0", "f16", "bf16", "f32")
# The quants `pull` gives an importance matrix by default (`--no-imatrix` turns it off):
# the K-quants below Q8 and IQ4_XS, where it measurably moves scores toward the
# checkpoint's (the converter's `outtypes.IMATRIX_DEFAULT_OUTTYPES`, restricted to QUANTS).
IMATRIX_QUANTS = ("q4_k_m", "q4_k_s", "q5_k_m", "q6_k", "iq4_xs")

_DEFAULT_ENDPOINT = "https://huggingface.co"
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Checkpoint:
    """A downloaded snapshot of a hub repo (files in the hub's cache)."""

    repo_id: str
    revision: str
    commit: str
    path: Path


def resolve_repo(spec: str) -> tuple[str, str]:
    """(repo_id, default model name) for a known name or an `owner/name` repo id."""
    key = spec.strip().lower()
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key], key
    if _REPO_RE.match(spec.strip()):
        repo_id = spec.strip()
        return repo_id, model_name_for_repo(repo_id)
    known = ", ".join(KNOWN_MODELS)
    raise LibraError(f"{spec!r}: not a known model ({known}) nor a hub repo id like owner/name")


def model_name_for_repo(repo_id: str) -> str:
    """`org/Some-Guard-0.5B` -> `some-guard-0.5b`: the repo's name, lowercased, as a model name.

    Not through a file name: `Path("some-guard-0.5b").stem` would cut at the last dot.
    """
    return registry.name_from_file(Path(repo_id.split("/", 1)[1].lower() + ".gguf"))


def default_name(base: str, quant: str) -> str:
    """`libra-guard-3b` for the default quant, `libra-guard-3b-q8_0` for others."""
    return base if quant == DEFAULT_QUANT else f"{base}-{quant}"


def endpoint() -> str:
    """The hub URL in effect (`HF_ENDPOINT` or huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", _DEFAULT_ENDPOINT).rstrip("/")


def offline_mode() -> bool:
    """Whether the hub's offline switch (`HF_HUB_OFFLINE`) is on."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """Where huggingface-hub caches downloads (`HF_HUB_CACHE`, else `$HF_HOME/hub`)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def download_checkpoint(repo_id: str, revision: str | None = None) -> Checkpoint:
    """Fetch the conversion inputs of REPO_ID at REVISION into the hub cache (resumable).

    Progress bars go to stderr (huggingface-hub's; `HF_HUB_DISABLE_PROGRESS_BARS=1`
    hides them). Every failure becomes a one-line NetworkError.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        raise NetworkError("huggingface-hub is not installed", hint="pip install huggingface-hub") from None
    rev = revision or "main"
    try:
        folder = snapshot_download(
            repo_id, revision=rev, allow_patterns=CONVERSION_FILES, max_workers=4
        )
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one clear line
        raise _network_error(exc, repo_id, rev) from None
    path = Path(folder)
    # snapshot_download returns <cache>/models--owner--name/snapshots/<commit>.
    checkpoint = Checkpoint(repo_id=repo_id, revision=rev, commit=path.name, path=path)
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise ConversionError(
            f"{repo_id}@{rev}: the repo has no config.json + *.safetensors to convert",
            hint="libra-edge converts safetensors checkpoints only (no pickled .bin weights)",
        )
    return checkpoint


def _network_error(exc: Exception, repo_id: str, rev: str) -> LibraError:
    """Map a huggingface-hub/httpx failure to one line that says what to do."""
    from huggingface_hub import errors as hf

    where = endpoint()
    if isinstance(exc, hf.HFValidationError):
        return LibraError(f"{repo_id!r}: not a valid hub repo id ({_first_line(exc)})")
    if offline_mode() and isinstance(exc, (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled)):
        return NetworkError(
            f"offline mode is on (HF_HUB_OFFLINE) and {repo_id}@{rev} is not complete in the hub "
            f"cache ({hub_cache_dir()})",
            hint="unset HF_HUB_OFFLINE to download it, or on an air-gapped machine use "
            "`libra-edge models import FILE.gguf`",
        )
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, hf.LocalEntryNotFoundError) and isinstance(cause, hf.HfHubHTTPError):
        exc = cause  # the hub answered with an error: report that, not "cannot reach"
    if isinstance(exc, hf.GatedRepoError):
        return NetworkError(
            f"{repo_id}: gated repo on {where}: accept its terms on the hub, then set HF_TOKEN"
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        status = _status(exc)
        return NetworkError(
            f"{repo_id}: repository not found on {where} (HTTP {status})",
            hint="check the name; a private repo needs HF_TOKEN",
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return NetworkError(f"{repo_id}: revision {rev!r} not found on {where}")
    if isinstance(exc, hf.HfHubHTTPError):
        status = _status(exc)
        auth = " (check HF_TOKEN)" if status in ("401", "403") else ""
        return NetworkError(f"{repo_id}: HTTP {status} from {where}{auth}")
    if isinstance(exc, hf.LocalEntryNotFoundError):
        cause = exc.__cause__ or exc.__context__
        reason = _first_line(cause) if cause else "connection failed"
        return NetworkError(
            f"cannot reach the Hugging Face hub at {where}: {reason}",
            hint="check the network (or HF_ENDPOINT); run the pull again to resume",
        )
    if type(exc).__module__.startswith("httpx") or isinstance(exc, (OSError, ConnectionError)):
        return NetworkError(
            f"download of {repo_id} from {where} failed: {_first_line(exc)}",
            hint="run the pull again: finished files are kept and not downloaded twice",
        )
    return NetworkError(f"download of {repo_id} failed: {type(exc).__name__}: {_first_line(exc)}")


def _size_mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _status(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    return str(getattr(response, "status_code", "?"))


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
    return text[:200]


def uses_imatrix(quant: str, no_imatrix: bool = False) -> bool:
    """Whether `pull` quantizes `quant` with an importance matrix."""
    return quant.lower() in IMATRIX_QUANTS and not no_imatrix


def convert(checkpoint: Checkpoint, out: Path, quant: str, *, imatrix: bool = False) -> Path:
    """Convert + quantize a downloaded checkpoint with the project's converter (`convert/`).

    `imatrix`: compute the importance matrix over the shipped calibration set first
    (`convert --imatrix auto`); it is saved beside `out` as `<name>.imatrix.gguf`.
    """
    import sys

    from libra_edge.convert import convert_checkpoint

    result = convert_checkpoint(
        checkpoint.path, out, outtype=quant, source_repo=checkpoint.repo_id,
        source_revision=checkpoint.commit, progress_stream=sys.stderr, imatrix="auto" if imatrix else None,
    )
    return Path(result.path)


def pull(
    spec: str,
    *,
    revision: str | None = None,
    quant: str = DEFAULT_QUANT,
    name: str | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
    no_imatrix: bool = False,
) -> registry.InstalledModel:
    """Download SPEC (known name or repo id), convert to a QUANT GGUF and install it as NAME.

    K-quants below Q8 (and IQ4_XS) are quantized with an importance matrix computed on the
    shipped calibration set unless `no_imatrix`; the matrix is installed beside the model
    (`<name>.imatrix.gguf`) and the manifest records the calibration set's sha256.
    SAY receives one line per phase (download, convert, hash) for the user.
    """
    say = say or (lambda _line: None)
    quant = quant.lower()
    if quant not in QUANTS:
        raise LibraError(f"--quant: expected one of {', '.join(QUANTS)}, got {quant!r}")
    repo_id, base = resolve_repo(spec)
    name = registry.check_name(name or default_name(base, quant))
    registry.refuse_existing(name)  # before downloading gigabytes
    say(f"downloading {repo_id} ({revision or 'main'}) from {endpoint()} into {hub_cache_dir()}")
    checkpoint = download_checkpoint(repo_id, revision)
    with_imatrix = uses_imatrix(quant, no_imatrix)
    say(f"converting {repo_id}@{checkpoint.commit[:12]} to GGUF {quant.upper()}"
        + (" with an importance matrix from the shipped calibration set (one pass of the unquantized "
           "model; --no-imatrix skips it)" if with_imatrix else ""))
    with registry.staging_dir(name) as scratch:
        stage = scratch / f"{name}.gguf"
        convert(checkpoint, stage, quant, imatrix=with_imatrix)
        if not stage.is_file():
            raise ConversionError(f"the converter wrote no file at {stage}")
        info = read_model_info(stage)
        problems = info.problems()
        if problems:
            raise ModelError(f"{repo_id}@{checkpoint.commit[:12]}: converted model unusable: "
                             + "; ".join(problems))
        say(f"hashing {_size_mb(info.file_size)} GGUF")
        sha = sha256_file(stage, progress)
        manifest = registry.new_manifest(
            name, info, sha, origin="pull", source_repo=repo_id,
            source_revision=checkpoint.revision, source_commit=checkpoint.commit,
        )
        if with_imatrix and manifest.imatrix_calibration_sha256 is None:
            raise ConversionError(f"{stage}: quantized without the importance matrix it was given")
        sidecar = registry.imatrix_path(scratch / f"{name}.gguf")
        return registry.commit(stage, manifest, imatrix=sidecar if sidecar.is_file() else None)
