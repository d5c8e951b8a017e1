"""The importance matrix: activation statistics of Libra prompts that steer the quantizer's error.

`compute_imatrix` runs an F32/F16/BF16 GGUF through llama.cpp (the engine's seam, with the
context's evaluation callback `cb_eval`) on the authors' prompt around each calibration
pair, and accumulates, per weight tensor, the sum of the squared inputs of its matrix
multiply, column by column, and the number of rows (tokens) it saw: what llama.cpp's own
`imatrix` tool (tools/imatrix/imatrix.cpp of the llama.cpp inside llama-cpp-python 0.3.36)
collects, with its choices: only MUL_MAT by a `blk.*` weight (not the output matrix), only
inputs of at least 16 rows, every token's logits requested so the last layer runs on all.

`Imatrix.data[name]` is what a quantizer takes (ggml's `ggml_quantize_chunk(..., imatrix)`):
the mean squared input per column, sums / counts, as llama-quantize computes it on load.
`Imatrix.save` writes llama.cpp's GGUF imatrix format (`general.type = imatrix`,
`<name>.in_sum2` and `<name>.counts` tensors, `imatrix.datasets/chunk_count/chunk_size`),
or its legacy `.dat` format when the path ends in `.dat`: either is what `llama-quantize
--imatrix FILE` reads. The calibration set that ships with libra-edge is
`calibration/libra_calibration.jsonl` (73 pairs written for it; no test data).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from libra_edge.errors import ConversionError

CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration" / "libra_calibration.jsonl"
# The GGUF keys of llama.cpp's format (common/imatrix-loader.h), and libra-edge's own extras
# (llama.cpp ignores keys it does not know).
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"
KEY_SHA256 = "libra_edge.imatrix.calibration_sha256"
KEY_TOKENS = "libra_edge.imatrix.n_tokens"
# sha256 of the F32/F16/BF16 GGUF the matrix was computed from (set by convert --imatrix
# auto, which reuses a saved matrix only for the same source).
KEY_SOURCE_SHA256 = "libra_edge.imatrix.source_sha256"
# The assistant text the engine evaluates after the prompt (checker.OPENING_DRAFT): the
# verdict is read at its end, so the calibration covers exactly what a fast check runs.
OPENING = '{\n  "答案": "'
# F32, F16 and BF16 whole-file types (llama_ftype): what the matrix is computed from.
SOURCE_FILE_TYPES = {0: "F32", 1: "F16", 32: "BF16"}
_DAT_DATASET = re.compile(r"^(?P<name>.*) sha256=(?P<sha>[0-9a-f]{64}) tokens=(?P<tokens>\d+)$")

Pair = tuple[str, str]


# ------------------------------------------------------------------ calibration set
def load_calibration(path: Path) -> list[Pair]:
    """(question, response) pairs of a JSONL file, one object a line with those two string fields."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such calibration file") from None
    except UnicodeDecodeError as exc:
        raise ConversionError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConversionError(f"{path}: cannot read it ({exc.strerror})") from None
    pairs: list[Pair] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise ConversionError(f"{path}:{number}: expected a JSON object with \"question\" and \"response\"")
        for key in ("question", "response"):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConversionError(f"{path}:{number}: field {key!r} is missing or not a non-empty string")
        pairs.append((row["question"], row["response"]))
    if not pairs:
        raise ConversionError(f"{path}: no calibration pairs")
    return pairs


def pairs_sha256(pairs: Sequence[Pair]) -> str:
    """sha256 identifying a calibration set given as pairs (of its canonical JSON)."""
    canonical = json.dumps([list(p) for p in pairs], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def default_calibration() -> tuple[list[Pair], str]:
    """The shipped calibration pairs and the sha256 of the file they come from."""
    pairs = load_calibration(CALIBRATION_FILE)
    return pairs, hashlib.sha256(CALIBRATION_FILE.read_bytes()).hexdigest()


# ------------------------------------------------------------------------- the matrix
@dataclass
class Imatrix:
    """Per weight tensor: mean squared input per column (`data`) and the rows it is over (`counts`)."""

    data: dict[str, np.ndarray]  # float32, length ne[0] of the weight (n_per_row); x n_mat for 3-D weights
    counts: dict[str, int]  # rows (tokens) accumulated per weight
    calibration_sha256: str
    n_tokens: int  # tokens evaluated in all
    chunks: int  # prompts evaluated (llama.cpp's "chunks")
    dataset: str = CALIBRATION_FILE.name
    sums: dict[str, np.ndarray] = field(default_factory=dict)  # float32 raw sums (data * counts)
    source_sha256: str = ""  # the model file it was computed from ("" when unknown)

    def __post_init__(self) -> None:
        if not self.sums:
            self.sums = {k: (v.astype(np.float64) * self.counts[k]).astype(np.float32) for k, v in self.data.items()}

    @property
    def chunk_size(self) -> int:
        """Mean tokens per prompt: the `imatrix.chunk_size` llama.cpp's format records."""
        return max(1, round(self.n_tokens / max(1, self.chunks)))

    # --------------------------------------------------------------- saving
    def save(self, path: Path) -> Path:
        """Write llama.cpp's GGUF imatrix format (or its legacy format when `path` ends in `.dat`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        try:
            if path.suffix == ".dat":
                self._save_dat(tmp)
            else:
                self._save_gguf(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _save_gguf(self, path: Path) -> None:
        import gguf

        writer = gguf.GGUFWriter(os.fspath(path), arch="imatrix")
        # llama.cpp's file carries no general.architecture; gguf-py adds one on its own.
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(KEY_DATASETS, [self.dataset])
        writer.add_uint32(KEY_CHUNK_COUNT, self.chunks)
        writer.add_uint32(KEY_CHUNK_SIZE, self.chunk_size)
        writer.add_string(KEY_SHA256, self.calibration_sha256)
        writer.add_uint64(KEY_TOKENS, self.n_tokens)
        if self.source_sha256:
            writer.add_string(KEY_SOURCE_SHA256, self.source_sha256)
        for name in sorted(self.sums):  # llama.cpp's order: sorted names
            sums = np.asarray(self.sums[name], dtype=np.float32)
            n_mat = max(1, sums.size // self.data[name].size) if self.data[name].size else 1
            writer.add_tensor(f"{name}.in_sum2", sums.reshape(n_mat, -1))
            writer.add_tensor(f"{name}.counts", np.full((n_mat, 1), float(self.counts[name]), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    def _save_dat(self, path: Path) -> None:
        # tools/imatrix/imatrix.cpp save_imatrix_legacy: per entry, name, ncall, nval and
        # (sum / count) * ncall; then the chunk count and the dataset's name.
        chunk = self.chunk_size
        out = [struct.pack("<i", len(self.data))]
        for name in sorted(self.data):
            raw = name.encode("utf-8")
            ncall = (self.counts[name] + chunk - 1) // chunk
            values = (np.asarray(self.data[name], dtype=np.float32) * np.float32(ncall)).astype("<f4")
            out += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, values.size), values.tobytes()]
        dataset = f"{self.dataset} sha256={self.calibration_sha256} tokens={self.n_tokens}".encode("utf-8")
        out += [struct.pack("<i", self.chunks), struct.pack("<i", len(dataset)), dataset]
        path.write_bytes(b"".join(out))

    # -------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: Path) -> Imatrix:
        """Read an imatrix in llama.cpp's GGUF format or its legacy `.dat` format; one-line errors."""
        path = Path(path)
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except FileNotFoundError:
            raise ConversionError(f"{path}: no such imatrix file") from None
        except OSError as exc:
            raise ConversionError(f"{path}: cannot read it ({exc.strerror})") from None
        try:
            return cls._load_gguf(path) if magic == b"GGUF" else cls._load_dat(path)
        except ConversionError:
            raise
        except Exception as exc:  # a truncated or foreign file: say so, no traceback
            raise ConversionError(f"{path}: not a readable imatrix file ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _load_gguf(cls, path: Path) -> Imatrix:
        import gguf

        reader = gguf.GGUFReader(os.fspath(path))

        def scalar(key: str) -> Any:
            f = reader.fields.get(key)
            return None if f is None else f.contents()

        if scalar("general.type") != "imatrix":
            raise ConversionError(f"{path}: a GGUF file but not an importance matrix (general.type is not 'imatrix')")
        sums: dict[str, np.ndarray] = {}
        counts_raw: dict[str, np.ndarray] = {}
        for t in reader.tensors:
            if t.tensor_type != gguf.GGMLQuantizationType.F32:
                raise ConversionError(f"{path}: tensor {t.name} is not F32")
            if t.name.endswith(".in_sum2"):
                sums[t.name[: -len(".in_sum2")]] = np.array(t.data, dtype=np.float32).reshape(-1)
            elif t.name.endswith(".counts"):
                counts_raw[t.name[: -len(".counts")]] = np.array(t.data, dtype=np.float32).reshape(-1)
        if not sums:
            raise ConversionError(f"{path}: the importance matrix holds no tensors")
        data: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for name, s in sums.items():
            c = counts_raw.get(name)
            if c is None:
                raise ConversionError(f"{path}: {name} has sums but no counts")
            n_mat = c.size
            rows = s.reshape(n_mat, -1)
            # llama-quantize's load_imatrix: sums / count per matrix, 1 where nothing was seen
            data[name] = np.concatenate([
                rows[j] / np.float32(round(float(c[j]))) if round(float(c[j])) > 0 else np.ones_like(rows[j])
                for j in range(n_mat)
            ]).astype(np.float32)
            counts[name] = int(round(float(c.max())))
        datasets = scalar(KEY_DATASETS) or [CALIBRATION_FILE.name]
        return cls(
            data=data, counts=counts,
            calibration_sha256=str(scalar(KEY_SHA256) or ""),
            n_tokens=int(scalar(KEY_TOKENS) or max(counts.values())),
            chunks=int(scalar(KEY_CHUNK_COUNT) or 0),
            dataset=str(datasets[0]), sums=sums, source_sha256=str(scalar(KEY_SOURCE_SHA256) or ""),
        )

    @classmethod
    def _load_dat(cls, path: Path) -> Imatrix:
        raw = path.read_bytes()
        pos = 0

        def take(fmt: str) -> tuple[Any, ...]:
            nonlocal pos
            size = struct.calcsize(fmt)
            if pos + size > len(raw):
                raise ConversionError(f"{path}: truncated imatrix file (at byte {pos})")
            values = struct.unpack_from(fmt, raw, pos)
            pos += size
            return values

        (n_entries,) = take("<i")
        if n_entries < 1:
            raise ConversionError(f"{path}: not an imatrix file (no entries)")
        data: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for _ in range(n_entries):
            (length,) = take("<i")
            if not 0 < length < 4096:
                raise ConversionError(f"{path}: not an imatrix file (bad name length at byte {pos - 4})")
            name = take(f"<{length}s")[0].decode("utf-8")
            ncall, nval = take("<ii")
            if nval < 1:
                raise ConversionError(f"{path}: entry {name} has no values")
            values = np.array(take(f"<{nval}f"), dtype=np.float32)
            # llama-quantize: values / ncall (legacy files store (sum / count) * ncall)
            data[name] = values / np.float32(ncall) if ncall > 0 else values
            counts[name] = ncall
        chunks, sha, dataset, n_tokens = 0, "", CALIBRATION_FILE.name, 0
        if pos < len(raw):
            (chunks,) = take("<i")
            if pos < len(raw):
                (length,) = take("<i")
                text = take(f"<{length}s")[0].decode("utf-8", errors="replace") if length > 0 else ""
                m = _DAT_DATASET.match(text)
                if m:
                    dataset, sha, n_tokens = m["name"], m["sha"], int(m["tokens"])
                elif text:
                    dataset = text
        if pos != len(raw):
            raise ConversionError(f"{path}: not an imatrix file ({len(raw) - pos} unexpected bytes at the end)")
        return cls(data=data, counts=counts, calibration_sha256=sha, n_tokens=n_tokens, chunks=chunks,
                   dataset=dataset)


# ---------------------------------------------------------------------- computing
def prompt_token_lists(model: Any, pairs: Sequence[Pair]) -> list[list[int]]:
    """Tokens the engine evaluates for a fast check of each pair: `Guard.prompt_tokens` + the verdict opening.

    Built as `PromptTokenizer.prompt` (engine/checker.py) builds them (the model's chat template around the
    authors' user message; template text with control tokens, the message as plain NFC
    text), then the JSON opening the engine drafts before reading the verdict.
    `model` is an `engine.llama.Model`.
    """
    from libra_edge.engine.chat import ChatTemplate
    from libra_edge.engine.prompt import build_user_message

    template = ChatTemplate(model.chat_template(), bos_token=model.special_text(model.bos()),
                            eos_token=model.special_text(model.eos()))

    def tok(text: str, *, special: bool = False, add_bos: bool = False) -> list[int]:
        if not text and not add_bos:
            return []
        return list(model.tokenize(text.encode("utf-8"), add_special=add_bos, parse_special=special))

    lists = []
    for question, response in pairs:
        rendered = template.render(build_user_message(question, response))
        lists.append(
            tok(rendered.before, special=True, add_bos=True)
            + tok(unicodedata.normalize("NFC", rendered.message))
            + tok(rendered.after, special=True)
            + tok(OPENING)
        )
    return lists


def source_file_type(model: Any, path: Path) -> str:
    """F32/F16/BF16 for a loaded model the matrix can be computed from; ConversionError otherwise."""
    raw = model.meta("general.file_type")
    ftype = int(raw) if raw is not None and raw.strip().isdigit() else None
    if ftype not in SOURCE_FILE_TYPES:
        raise ConversionError(
            f"{path}: the importance matrix is computed from an F32/F16/BF16 GGUF "
            f"(this one has general.file_type {ftype}): convert with --outtype f16 first"
        )
    return SOURCE_FILE_TYPES[ftype]


def compute_imatrix(
    model_gguf: Path,
    pairs: Sequence[Pair] | None = None,
    *,
    threads: int | None = None,
    verbose: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Imatrix:
    """The importance matrix of `model_gguf` (F32/F16/BF16) over the calibration pairs.

    `pairs` defaults to the shipped calibration set; `progress(done, total)` is called
    after each prompt. Each prompt is evaluated from an empty context in one batch.
    """
    from libra_edge.engine import llama as llama_seam

    from .tensors import default_threads

    model_gguf = Path(model_gguf)
    if not model_gguf.is_file():
        raise ConversionError(f"{model_gguf}: no such model file")
    if pairs is None:
        pairs, sha = default_calibration()
        dataset = CALIBRATION_FILE.name
    else:
        pairs = list(pairs)
        if not pairs:
            raise ConversionError("compute_imatrix: no calibration pairs")
        sha, dataset = pairs_sha256(pairs), "pairs"
    llama_seam.set_logging(verbose)
    try:
        model = llama_seam.Model(model_gguf, gpu_layers=0, mmap=True)
    except llama_seam.LoadError as exc:
        raise ConversionError(f"{model_gguf}: {exc}") from None
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def sink(name: str, x: np.ndarray, ne2: int, ne3: int) -> None:
        # imatrix.cpp collect_imatrix, dense branch: one accumulator per matrix of a 3-D
        # weight (ne2 x ne3 of them; 1 for 2-D), the rows of src1 spread over them.
        n_mat = ne2 * ne3
        acc = sums.get(name)
        if acc is None:
            acc = sums[name] = np.zeros(x.shape[3] * n_mat, dtype=np.float64)
        sq = np.square(x.astype(np.float64))  # [ne3, ne2, ne1, ne0]
        for i3 in range(x.shape[0]):
            for i2 in range(x.shape[1]):
                mat = (i3 % ne3) * ne2 + (i2 % ne2)
                acc[mat * x.shape[3]:(mat + 1) * x.shape[3]] += sq[i3, i2].sum(axis=0)
        if not np.all(np.isfinite(acc)):
            raise ConversionError(f"{model_gguf}: non-finite activations in {name}")
        counts[name] = counts.get(name, 0) + (x.shape[0] * x.shape[1] * x.shape[2]) // n_mat

    try:
        source_file_type(model, model_gguf)
        token_lists = prompt_token_lists(model, pairs)
        llama_seam.collect_matmul_inputs(model, token_lists, sink, threads=threads or default_threads(),
                                         progress=progress)
    except llama_seam.LoadError as exc:
        raise ConversionError(f"{model_gguf}: {exc}") from None
    finally:
        model.close()
    if not sums:
        raise ConversionError(f"{model_gguf}: no matrix multiply by a blk.* weight saw 16 tokens or more")
    # One count per dense weight (imatrix.cpp). The float32 sums are what the file keeps,
    # and each value is computed from them as llama-quantize computes it when it loads the
    # file (float sum / float count): a saved and reloaded matrix quantizes to the same bytes.
    sums32 = {name: acc.astype(np.float32) for name, acc in sums.items()}
    data = {name: s / np.float32(counts[name]) for name, s in sums32.items()}
    return Imatrix(
        data=data, counts=counts, calibration_sha256=sha,
        n_tokens=sum(len(t) for t in token_lists), chunks=len(token_lists), dataset=dataset, sums=sums32,
    )


def describe(imatrix: Imatrix) -> str:
    """One line: entries, prompts, tokens, calibration set."""
    return (f"importance matrix: {len(imatrix.data)} tensors from {imatrix.chunks} prompts "
            f"({imatrix.n_tokens} tokens) of {imatrix.dataset} (sha256 {imatrix.calibration_sha256[:12]})")

