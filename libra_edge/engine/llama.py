"""The one seam to llama.cpp: the only module of libra-edge that imports `llama_cpp`.

Everything the engine, the converter, `bench` and `doctor` need from llama.cpp is here:
loading a model and creating a context, tokens and pieces, filling a batch and reading
logits (on the process's one compute thread), KV-memory operations, the grammar sampler,
quantization, build information and log silencing. llama-cpp-python's 0.3.x releases
follow llama.cpp's main branch and its ctypes structures change between patch releases, so
the version is pinned exactly (`PINNED_VERSION`) and struct fields are set through
`set_fields`, which refuses a field name the structure does not have (a ctypes Structure
silently accepts unknown attributes, so a renamed field would otherwise stop applying
without a sound).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from libra_edge.errors import ExitCode, LibraError

PINNED_VERSION = "0.3.36"
# Tokens per micro-batch. Part of the canonical evaluation shape: llama.cpp's CPU kernels
# give bit-identical results for the same shapes only, so this never varies.
UBATCH = 512

T = TypeVar("T")

_lib: ModuleType | None = None
_compute: ThreadPoolExecutor | None = None
_compute_ident: int | None = None  # the compute thread's id, once it runs
_compute_lock = threading.Lock()
_log_lock = threading.Lock()
_log_callback: Any = None  # kept referenced: llama.cpp holds a raw pointer to it
_verbose = False


def lib() -> ModuleType:
    """The `llama_cpp` module, imported on first use (loading the library is not free)."""
    global _lib
    if _lib is None:
        # -- threads (issue 28): libgomp reads its wait policy when it loads, which is here.
        from libra_edge.engine.threads import wait_policy_while_loading

        with wait_policy_while_loading():
            import llama_cpp

            _lib = llama_cpp
            set_logging(_verbose)  # before the backends load: they log as they do
            try:
                _load_backends(Path(llama_cpp.__file__).parent / "lib")
            except BaseException:
                _lib = None
                raise
        llama_cpp.llama_backend_init()
    return _lib


# ------------------------------------------------------------------- CPU backends
# A portable build (`install.sh`'s default: GGML_BACKEND_DL with GGML_CPU_ALL_VARIANTS)
# has no CPU kernels linked in: one `libggml-cpu-<level>.so` per x86-64 level sits beside
# llama.cpp, and one must be loaded before a model. llama-cpp-python 0.3.36 does not do it:
# `llama_backend_init` looks beside the Python executable and in the current folder only.
# So the seam picks the variant itself, by each one's own `ggml_backend_score` (which reads
# CPUID and is built without the variant's instruction set), never the AMX one.
CPU_VARIANT_ENV = "LIBRA_EDGE_CPU_VARIANT"
# llama.cpp's AMX kernels segfault on Q4_K models on some Sapphire Rapids machines
# (upstream llama.cpp issue 20824): the variant that enables them is never chosen.
EXCLUDED_CPU_VARIANTS = ("sapphirerapids",)
_CPU_PREFIX = "libggml-cpu-"
_cpu_variant: str | None = None  # the variant loaded, or None when the CPU kernels are built in
_cpu_variants: tuple[str, ...] = ()
_forced_handles: list[ctypes.CDLL] = []  # kept open: llama.cpp runs their code


class BackendError(LibraError):
    """No usable CPU kernels (a portable build whose variants are missing, or a bad override)."""

    exit_code = ExitCode.MODEL


def _load_backends(lib_dir: Path) -> None:
    """Load the best CPU variant (and any GPU backend module) of a portable build."""
    global _cpu_variant, _cpu_variants
    suffix = ".dll" if sys.platform == "win32" else ".so"
    variants = {p.name[len(_CPU_PREFIX):-len(suffix)]: p for p in sorted(lib_dir.glob(f"{_CPU_PREFIX}*{suffix}"))}
    if not variants:
        return  # CPU kernels linked into libggml (an `install.sh --native` or stock build)
    _cpu_variants = tuple(sorted(variants))
    # The libggml that libllama is linked with, by its soname. A wheel holds no symlinks:
    # `libggml.so` (which `llama_cpp._ggml` opens) and `libggml.so.0` are two copies, each
    # with a backend registry of its own, and llama.cpp reads the second.
    soname = lib_dir / f"libggml{suffix}.0"
    ggml = ctypes.CDLL(os.fspath(soname if soname.is_file() else lib_dir / f"libggml{suffix}"))
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    forced = os.environ.get(CPU_VARIANT_ENV, "").strip()
    if forced:
        if forced not in variants:
            raise BackendError(f"{CPU_VARIANT_ENV}={forced}: no such CPU variant in this build "
                               f"(it has {', '.join(_cpu_variants)})")
        chosen = forced
    else:
        chosen = _best_cpu_variant({n: p for n, p in variants.items() if n not in EXCLUDED_CPU_VARIANTS})
    if forced:
        # Registered as given, without llama.cpp's check that this CPU can run it (which
        # refuses such a variant): what a build for another CPU does. An instruction this
        # CPU lacks then stops the process (SIGILL); tests/test_bundle.py relies on it.
        _forced_handles.append(handle := ctypes.CDLL(os.fspath(variants[chosen])))
        handle.ggml_backend_init.restype = ctypes.c_void_p
        ggml.ggml_backend_register.argtypes = [ctypes.c_void_p]
        reg = handle.ggml_backend_init()
        if not reg:
            raise BackendError(f"llama.cpp could not start its CPU kernels ({variants[chosen].name})")
        ggml.ggml_backend_register(reg)
    elif not ggml.ggml_backend_load(os.fsencode(variants[chosen])):
        raise BackendError(f"llama.cpp could not load its CPU kernels ({variants[chosen].name})")
    _cpu_variant = chosen
    for module in sorted(lib_dir.glob(f"libggml-*{suffix}")):
        name = module.name[len("libggml-"):-len(suffix)]
        if name != "base" and not module.name.startswith(_CPU_PREFIX):
            ggml.ggml_backend_load(os.fsencode(module))  # a GPU backend module (CUDA, Vulkan...)


def _best_cpu_variant(variants: dict[str, Path]) -> str:
    """The variant whose `ggml_backend_score` is highest on this CPU (0 = cannot run here)."""
    import _ctypes

    best, best_score = None, 0
    for name, path in variants.items():
        handle = ctypes.CDLL(os.fspath(path))
        try:
            score_fn = handle.ggml_backend_score
            score_fn.restype = ctypes.c_int
            score = int(score_fn())
        except AttributeError:
            score = 0
        finally:
            dlclose = getattr(_ctypes, "dlclose", None)
            if dlclose is not None:
                dlclose(handle._handle)
        if score > best_score:
            best, best_score = name, score
    if best is None:
        raise BackendError("none of this build's CPU variants runs on this CPU "
                           f"({', '.join(sorted(variants))})")
    return best


def cpu_variant() -> str | None:
    """The CPU kernel variant loaded (e.g. "haswell"), or None when they are built in."""
    lib()
    return _cpu_variant


def cpu_variants() -> tuple[str, ...]:
    """Every CPU kernel variant this build carries (empty when the kernels are built in)."""
    lib()
    return _cpu_variants


def foreign_process_env() -> dict[str, str]:
    """Environment for another program on this llama-cpp-python (e.g. `python -m llama_cpp.server`).

    Such a program calls `llama_backend_init` itself, which finds no CPU kernels in a
    portable build; `GGML_BACKEND_PATH` names the variant this process chose, which
    llama.cpp then loads. Empty when the kernels are built in.
    """
    import llama_cpp

    variant = cpu_variant()
    if variant is None:
        return {}
    path = Path(llama_cpp.__file__).parent / "lib" / f"{_CPU_PREFIX}{variant}.so"
    return {"GGML_BACKEND_PATH": os.fspath(path)}


def on_compute_thread(fn: Callable[[], T]) -> T:
    """Run `fn` on the process's one llama.cpp compute thread; its result (or exception).

    Every llama_decode of the process runs on this thread. The CPU build parallelizes a
    decode with OpenMP, and libgomp keeps a thread team per thread that starts parallel
    work: once two threads have decoded, there are more OpenMP threads than cores and
    libgomp stops spinning between a decode's steps and sleeps instead. A one-token decode
    then takes 2-3 times as long, for the rest of the process (measured: SmolLM2, 2
    cores, 18 ms -> 43-55 ms). Whatever thread calls the engine (a scheduler, a TUI
    worker, a server), the arithmetic stays on one thread, and results do not change.
    """
    global _compute
    if threading.get_ident() == _compute_ident:  # already there (a call from within fn)
        return fn()
    with _compute_lock:
        if _compute is None:
            _compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-compute",
                                          initializer=_mark_compute_thread)
        executor = _compute
    future = executor.submit(fn)
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            value = future.result()
            break
        except KeyboardInterrupt as exc:
            # Ctrl-C reaches the waiting thread, not the decode: let the decode finish
            # before the caller unwinds (and perhaps frees the context it is using).
            if future.done():
                raise
            interrupted = exc
    if interrupted is not None:
        raise interrupted
    return value


def _mark_compute_thread() -> None:
    global _compute_ident
    _compute_ident = threading.get_ident()


def _forget_compute_thread() -> None:
    global _compute, _compute_ident
    _compute = _compute_ident = None  # a forked child has no copy of the thread


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_compute_thread)


def version() -> str:
    """The installed llama-cpp-python version."""
    return str(lib().__version__)


def system_info() -> str:
    """llama.cpp's own description of the build (backends and SIMD features)."""
    return str(lib().llama_print_system_info().decode("utf-8", errors="replace").strip())


def build_features() -> str:
    """A compact, comparable name of the arithmetic this build runs: its enabled features.

    Two processes whose builds report the same string compute the same logits for the
    same evaluation schedule; different SIMD paths (AVX2 vs AVX-512) or a GPU do not.
    """
    parts = []
    for section in system_info().split("|"):
        section = section.strip()
        if " = 1" in section or section.startswith(("CPU :", "CUDA", "Metal", "Vulkan")):
            parts.append(section.replace(" = 1", ""))
    gpu = " +gpu" if supports_gpu_offload() else ""
    return f"llama-cpp-python {version()}: " + " ".join(parts) + gpu


def supports_gpu_offload() -> bool:
    """Whether this build can offload layers to a GPU (CUDA, Metal, Vulkan...)."""
    return bool(lib().llama_supports_gpu_offload())


# ----------------------------------------------------------------------------- logs
def set_logging(verbose: bool) -> None:
    """Route llama.cpp's (and ggml's) log callback: to stderr when verbose, else nowhere.

    One mechanism: llama.cpp's log callback. It never touches file descriptors, so a
    terminal UI drawing on fd 2 is not disturbed by a model loading in a worker thread.
    """
    global _log_callback, _verbose
    _verbose = verbose
    if _lib is None:
        return  # applied when the library is first loaded
    with _log_lock:

        def emit(level: int, text: bytes, user_data: Any) -> None:
            if _verbose:
                try:
                    sys.stderr.write(text.decode("utf-8", errors="replace"))
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass

        if _log_callback is None:
            _log_callback = _lib.llama_log_callback(emit)
            _lib.llama_log_set(_log_callback, ctypes.c_void_p(0))


# -------------------------------------------------------------------------- structs
# Field names of each structure type, read from its `_fields_` once (ctypes makes
# `_fields_` final once set): `set_fields` is on hot paths (every decode, every grammar step).
_FIELD_NAMES: dict[type, frozenset[str]] = {}
_S = TypeVar("_S", bound=ctypes.Structure)


def set_fields(struct: ctypes.Structure, **values: Any) -> None:
    """Set fields of a ctypes structure, refusing names the structure does not have.

    Every write of a llama.cpp structure's field goes through here (or `new_struct`): a
    plain `struct.name = value`, like the structure's constructor, takes an unknown name
    without a word."""
    cls = type(struct)
    known = _FIELD_NAMES.get(cls)
    if known is None:
        known = _FIELD_NAMES[cls] = frozenset(name for name, *_ in cls._fields_)
    for name, value in values.items():
        if name not in known:
            raise RuntimeError(
                f"llama-cpp-python {version()}: {cls.__name__} has no field {name!r} "
                f"(libra-edge is built against {PINNED_VERSION})"
            )
        setattr(struct, name, value)


def new_struct(cls: type[_S], **values: Any) -> _S:
    """A zeroed `cls` with these fields set (through `set_fields`, unlike `cls(**values)`)."""
    struct = cls()
    set_fields(struct, **values)
    return struct


def token_data_dtype() -> np.dtype[Any]:
    """The numpy dtype of `llama_token_data`, derived from the structure's own fields."""
    st = lib().llama_token_data
    names, formats = [], []
    for name, ctype, *_ in st._fields_:
        names.append(name)
        formats.append(np.dtype(ctype))
    offsets = [getattr(st, name).offset for name in names]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ctypes.sizeof(st)})


# -------------------------------------------------------------------------- loading
class LoadError(Exception):
    """llama.cpp refused a model or context (the message says which)."""


class Model:
    """A loaded llama.cpp model and its vocabulary."""

    def __init__(self, path: Path, *, gpu_layers: int, mmap: bool) -> None:
        ll = lib()
        params = ll.llama_model_default_params()
        # Read the weights rather than map them unless asked: on CPUs where llama.cpp
        # repacks quantized tensors for its SIMD kernels, the mapped pages stay resident
        # beside the repacked copy (a 3B Q4_K_M then holds 3.4 GiB instead of 2.1 GiB).
        set_fields(params, n_gpu_layers=gpu_layers,
                   load_mode=ll.LLAMA_LOAD_MODE_MMAP if mmap else ll.LLAMA_LOAD_MODE_NONE)
        ptr = ll.llama_model_load_from_file(os.fsencode(path), params)
        if not ptr:
            raise LoadError("llama.cpp could not load the model")
        self.ptr = ptr
        self.vocab = ll.llama_model_get_vocab(ptr)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self._buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}

    def close(self) -> None:
        """Free the model (after every context made from it)."""
        if self.ptr:
            lib().llama_model_free(self.ptr)
            self.ptr = None

    def chat_template(self) -> str | None:
        """The chat template stored in the GGUF, if any."""
        raw = lib().llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8") if raw else None

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text (None when absent)."""
        buf = ctypes.create_string_buffer(4096)
        n = lib().llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    def bos(self) -> int:
        """The BOS token id (-1 when the vocabulary has none)."""
        return int(lib().llama_vocab_bos(self.vocab))

    def eos(self) -> int:
        """The EOS token id (-1 when the vocabulary has none)."""
        return int(lib().llama_vocab_eos(self.vocab))

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, `<|im_end|>`...)."""
        return bool(lib().llama_vocab_is_eog(self.vocab, token))

    def tokenize(self, text: bytes, *, add_special: bool, parse_special: bool) -> list[int]:
        """Token ids of UTF-8 `text`."""
        ll = lib()
        n_max = len(text) + 8
        buf = (ll.llama_token * n_max)()
        n = ll.llama_tokenize(self.vocab, text, len(text), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (ll.llama_token * n_max)()
            n = ll.llama_tokenize(self.vocab, text, len(text), buf, n_max, add_special, parse_special)
        if n < 0:
            raise RuntimeError("llama.cpp could not tokenize the text")
        return list(buf[:n])

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        """The bytes of `tokens` (control tokens left out)."""
        ll = lib()
        arr = (ll.llama_token * max(1, len(tokens)))(*tokens)
        size = 16 * len(tokens) + 16
        out = ctypes.create_string_buffer(size)
        n = ll.llama_detokenize(self.vocab, arr, len(tokens), out, size, False, False)
        if n < 0:
            size = -n
            out = ctypes.create_string_buffer(size)
            n = ll.llama_detokenize(self.vocab, arr, len(tokens), out, size, False, False)
        return out.raw[: max(n, 0)]

    def piece(self, token: int) -> bytes:
        """The bytes one token decodes to (control tokens: empty); cached."""
        cached = self._pieces.get(token)
        if cached is None:
            n = lib().llama_token_to_piece(self.vocab, token, self._buf, 256, 0, False)
            cached = self._buf.raw[: max(n, 0)]
            self._pieces[token] = cached
        return cached

    def special_text(self, token: int) -> str:
        """Text of a control token such as BOS/EOS ("" for -1)."""
        if token < 0:
            return ""
        n = lib().llama_token_to_piece(self.vocab, token, self._buf, 256, 0, True)
        return self._buf.raw[: max(n, 0)].decode("utf-8", errors="ignore")

    def all_pieces(self) -> list[tuple[int, bytes]]:
        """(id, bytes) for the whole vocabulary (about 0.1 s for 150k tokens)."""
        buf, fn, vocab = self._buf, lib().llama_token_to_piece, self.vocab
        out = []
        for tok in range(self.n_vocab):
            n = fn(vocab, tok, buf, 256, 0, False)
            if n > 0:
                out.append((tok, buf.raw[:n]))
        return out


class Context:
    """A llama.cpp context with `n_seq` sequences, one KV stream each, and one batch."""

    def __init__(self, model: Model, *, ctx_per_seq: int, n_seq: int, threads: int) -> None:
        ll = lib()
        params = ll.llama_context_default_params()
        # A block longer than UBATCH tokens is evaluated in calls of UBATCH tokens, cut at
        # the same places every time (decoding.py).
        n_batch = UBATCH
        set_fields(
            params,
            n_ctx=ctx_per_seq * n_seq,
            n_batch=n_batch,
            n_ubatch=UBATCH,
            n_threads=threads,
            n_threads_batch=threads,
            n_seq_max=n_seq,
            # One KV stream per sequence: a sequence's attention never reads another's
            # cells, so its arithmetic does not depend on what the others hold.
            kv_unified=False,
            no_perf=True,
            # Flash attention changes the arithmetic with the batch shape.
            flash_attn_type=ll.LLAMA_FLASH_ATTN_TYPE_DISABLED,
        )
        ptr = ll.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise LoadError("llama.cpp could not create a context (out of memory for the KV cache?)")
        self.ptr = ptr
        self.model = model
        self.n_batch = n_batch
        self.n_seq = n_seq
        self.n_ctx_seq = int(ll.llama_n_ctx_seq(ptr))
        self._memory = ll.llama_get_memory(ptr)
        self._batch = ll.llama_batch_init(n_batch, 0, 1)

    def close(self) -> None:
        """Free the batch and the context."""
        ll = lib()
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self.ptr:
            ll.llama_free(self.ptr)
            self.ptr = None

    def decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> list[np.ndarray]:
        """One llama_decode of [(seq, token, pos, want_logits)]; copies of the wanted logits."""
        if len(entries) > self.n_batch:
            raise RuntimeError(f"batch of {len(entries)} tokens exceeds n_batch {self.n_batch}")
        ll = lib()
        batch = self._batch
        wanted = []
        for i, (seq, tok, pos, want) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = want
            if want:
                wanted.append(i)
        set_fields(batch, n_tokens=len(entries))
        n_vocab = self.model.n_vocab

        def run() -> list[np.ndarray]:
            rc = ll.llama_decode(self.ptr, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc}")
            return [np.ctypeslib.as_array(ll.llama_get_logits_ith(self.ptr, i), shape=(n_vocab,)).copy()
                    for i in wanted]

        return on_compute_thread(run)

    def seq_rm(self, seq: int, start: int) -> None:
        """Forget `seq`'s KV state from position `start` on."""
        lib().llama_memory_seq_rm(self._memory, seq, start, -1)

    def seq_cp(self, src: int, dst: int) -> None:
        """Copy all of `src`'s KV state into `dst` (across streams: whole streams only)."""
        lib().llama_memory_seq_cp(self._memory, src, dst, -1, -1)


class Grammar:
    """A GBNF grammar sampler: which tokens the grammar admits next, and its state."""

    def __init__(self, model: Model, text: str, root: str = "root") -> None:
        ll = lib()
        self.ptr = ll.llama_sampler_init_grammar(model.vocab, text.encode("utf-8"), root.encode())
        if not self.ptr:
            raise RuntimeError("llama.cpp rejected the grammar")
        n = model.n_vocab
        # Structured arrays laid out as llama_token_data (fields indexed by name).
        self._all: Any = np.zeros(n, dtype=token_data_dtype())
        self._all_arr = new_struct(
            ll.llama_token_data_array,
            data=self._all.ctypes.data_as(ll.llama_token_data_p), size=n, selected=-1, sorted=False,
        )
        self._one: Any = np.zeros(1, dtype=self._all.dtype)
        self._one_arr = new_struct(
            ll.llama_token_data_array,
            data=self._one.ctypes.data_as(ll.llama_token_data_p), size=1, selected=-1, sorted=False,
        )
        self._ids = np.arange(n, dtype=self._all.dtype["id"])

    def close(self) -> None:
        """Free the sampler."""
        if self.ptr:
            lib().llama_sampler_free(self.ptr)
            self.ptr = None

    def reset(self) -> None:
        """Back to the grammar's start."""
        lib().llama_sampler_reset(self.ptr)

    def accept(self, token: int) -> None:
        """Advance past `token`."""
        lib().llama_sampler_accept(self.ptr, token)

    def allows(self, token: int, logit: float) -> bool:
        """Whether the grammar, in its current state, admits `token` next."""
        self._one["id"][0] = token
        self._one["logit"][0] = logit
        set_fields(self._one_arr, size=1)
        lib().llama_sampler_apply(self.ptr, ctypes.byref(self._one_arr))
        return bool(np.isfinite(self._one["logit"][0]))

    def allowed_among(self, logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Those of `tokens` the grammar admits next (in the order given)."""
        k = len(tokens)
        self._all["id"][:k] = tokens
        self._all["logit"][:k] = logits[tokens]
        set_fields(self._all_arr, size=k, sorted=False)
        lib().llama_sampler_apply(self.ptr, ctypes.byref(self._all_arr))
        n = self._all_arr.size
        kept = self._all[:n]
        return np.asarray(kept["id"][np.isfinite(kept["logit"])])

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` with every token the grammar forbids set to -inf."""
        self._all["id"] = self._ids
        self._all["logit"] = logits
        set_fields(self._all_arr, size=len(self._all), sorted=False)
        lib().llama_sampler_apply(self.ptr, ctypes.byref(self._all_arr))
        masked = np.full(len(self._all), -np.inf, dtype=np.float32)
        n = self._all_arr.size
        masked[self._all["id"][:n]] = self._all["logit"][:n]
        return masked


def open_model(path: Path, *, gpu_layers: int, mmap: bool, ctx_per_seq: int, n_seq: int,
               threads: int) -> tuple[Model, Context]:
    """Load the weights and create a context; LoadError with a reason when llama.cpp refuses."""
    model = Model(path, gpu_layers=gpu_layers, mmap=mmap)
    try:
        ctx = Context(model, ctx_per_seq=ctx_per_seq, n_seq=n_seq, threads=threads)
    except BaseException:
        model.close()
        raise
    return model, ctx


# ------------------------------------------------ sequence state (the header-state cache)
# engine/header_state.py keeps the header block's KV state between processes: llama.cpp's
# sequence-state API copies one sequence's cells (positions, then each layer's K and V
# rows in the cache's own type) out of the context and back into a fresh one. What the
# bytes depend on besides the model and the build is the KV layout, fixed here (Context
# sets flash attention off and one stream per sequence, and leaves the KV types at
# llama.cpp's default, F16): `kv_layout()` names it for the cache's key.
def kv_layout() -> dict[str, Any]:
    """The KV cache's layout every Context has (keep in step with `Context.__init__`)."""
    ll = lib()
    params = ll.llama_context_default_params()
    return {"type_k": int(params.type_k), "type_v": int(params.type_v), "kv_unified": False,
            "flash_attn": int(ll.LLAMA_FLASH_ATTN_TYPE_DISABLED), "n_ubatch": UBATCH}


def library_identity() -> str:
    """Which llama.cpp libraries this process runs: each file's name, size and mtime (a reinstall differs)."""
    lib_dir = Path(str(lib().__file__)).parent / "lib"
    parts = []
    for p in sorted(lib_dir.glob("lib*")):
        try:
            st = p.stat()
        except OSError:
            continue
        parts.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


def seq_state(ctx: Context, seq: int) -> bytes:
    """The KV state of sequence `seq`, as llama.cpp serializes it (`llama_state_seq_get_data`)."""
    ll = lib()
    size = int(ll.llama_state_seq_get_size(ctx.ptr, seq))
    buf = (ctypes.c_uint8 * max(1, size))()
    n = int(ll.llama_state_seq_get_data(ctx.ptr, buf, size, seq))
    if n <= 0 or n > size:
        raise RuntimeError(f"llama.cpp could not copy sequence {seq}'s state ({n} of {size} bytes)")
    return ctypes.string_at(buf, n)


def set_seq_state(ctx: Context, seq: int, data: bytes) -> bool:
    """Put `data` (from `seq_state`) into sequence `seq`; False, `seq` left empty, if llama.cpp refuses."""
    ll = lib()
    buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
    if int(ll.llama_state_seq_set_data(ctx.ptr, buf, len(data), seq)) == 0:
        ctx.seq_rm(seq, 0)
        return False
    return True


def seq_positions(ctx: Context, seq: int) -> tuple[int, int]:
    """The first and last position sequence `seq` holds ((-1, -1) when it is empty)."""
    ll = lib()
    return (int(ll.llama_memory_seq_pos_min(ctx._memory, seq)),
            int(ll.llama_memory_seq_pos_max(ctx._memory, seq)))


# ----------------------------------------------------------------------- quantizing
def quantize(src: Path, dst: Path, ftype_name: str, *, threads: int,
             imatrix: Mapping[str, np.ndarray] | None = None) -> int:
    """llama.cpp's quantizer (`llama-quantize`) run in process; 0 on success.

    `imatrix` (tensor name -> float32 importance per column) goes in through
    `llama_model_quantize_params.imatrix`, a plain C array of (name, data, size) in this
    llama.cpp: the reference the project's own quantizer (`convert.quantize`) is tested
    against, byte for byte.
    """
    ll = lib()
    params = ll.llama_model_quantize_default_params()
    set_fields(params, ftype=getattr(ll, ftype_name), nthread=threads)
    keep: list[Any] = []
    if imatrix is not None:
        entries = (ll.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            arr = np.ascontiguousarray(values, dtype=np.float32)
            keep.append(arr)
            set_fields(entries[i], name=name.encode("utf-8"),
                       data=arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), size=arr.size)
        set_fields(entries[len(imatrix)], name=None)  # the end of the list
        keep.append(entries)
        set_fields(params, imatrix=ctypes.cast(entries, ctypes.POINTER(ll.llama_model_imatrix_data)))
    return int(ll.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params)))


# ==================================================== per-tensor quantizer (issue 26, Q)
# `convert.quantize` quantizes tensor by tensor through ggml's own C function
# `ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row, imatrix)`, which takes a
# plain float array of column importances, and writes the GGUF itself. ggml's functions
# live in libggml-base. A wheel holds no symlinks, so `libggml-base.so` and
# `libggml-base.so.0` are two copies of it: the one used is the copy libllama was linked
# with and the dynamic linker has already mapped (found in /proc/self/maps), else its soname.
_ggml_base: ctypes.CDLL | None = None


class _GGMLInitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _ggml_base_path(lib_dir: Path) -> Path:
    """The libggml-base file this process already runs (libllama's dependency)."""
    mapped = _loaded_path("libggml-base", lib_dir)
    if mapped.is_file():
        return mapped
    for name in ("libggml-base.so.0", "libggml-base.so", "libggml-base.0.dylib", "libggml-base.dylib",
                 "ggml-base.dll"):
        if (lib_dir / name).is_file():
            return lib_dir / name
    raise BackendError(f"{lib_dir}: no libggml-base library beside libllama")


def ggml_base() -> ctypes.CDLL:
    """ggml's base library (types, quantization), with the signatures the quantizer calls."""
    global _ggml_base
    if _ggml_base is None:
        ll = lib()  # libllama first: it maps the libggml-base it links
        g = ctypes.CDLL(os.fspath(_ggml_base_path(Path(str(ll.__file__)).parent / "lib")))
        g.ggml_quantize_chunk.restype = ctypes.c_size_t
        g.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                          ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        g.ggml_validate_row_data.restype = ctypes.c_bool
        g.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
        g.ggml_row_size.restype = ctypes.c_size_t
        g.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        g.ggml_blck_size.restype = ctypes.c_int64
        g.ggml_blck_size.argtypes = [ctypes.c_int]
        g.ggml_type_name.restype = ctypes.c_char_p
        g.ggml_type_name.argtypes = [ctypes.c_int]
        g.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        g.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        g.ggml_init.restype = ctypes.c_void_p
        g.ggml_init.argtypes = [_GGMLInitParams]
        g.ggml_free.restype = None
        g.ggml_free.argtypes = [ctypes.c_void_p]
        g.ggml_new_tensor.restype = ctypes.c_void_p
        g.ggml_new_tensor.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
        g.ggml_set_name.restype = ctypes.c_void_p
        g.ggml_set_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _ggml_base = g
    return _ggml_base


def ggml_type_name(ggml_type: int) -> str:
    """ggml's name of a tensor type ("q4_K", "f16"...)."""
    return str(ggml_base().ggml_type_name(ggml_type).decode())


def ggml_row_size(ggml_type: int, n_per_row: int) -> int:
    """Bytes of one row of `n_per_row` elements in `ggml_type`."""
    return int(ggml_base().ggml_row_size(ggml_type, n_per_row))


def ggml_block_size(ggml_type: int) -> int:
    """Elements per block of `ggml_type` (a row length must be a multiple of it)."""
    return int(ggml_base().ggml_blck_size(ggml_type))


def quantize_rows(ggml_type: int, rows: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """`rows` (float32, nrows x n_per_row) quantized to `ggml_type`: the bytes, validated.

    Rows are independent: quantizing a tensor in slabs of rows gives the bytes one call
    would. `imatrix` (float32, n_per_row) weighs each column's error; None quantizes as
    llama.cpp does without one. Releases the GIL (threads may call it in parallel).
    """
    g = ggml_base()
    src = np.ascontiguousarray(rows, dtype=np.float32)
    nrows, n_per_row = src.shape
    out = np.empty(nrows * ggml_row_size(ggml_type, n_per_row), dtype=np.uint8)
    imat = None
    if imatrix is not None:
        imat = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imat.shape != (n_per_row,):
            raise ValueError(f"importance matrix of {imat.size} values for rows of {n_per_row}")
    size = int(g.ggml_quantize_chunk(ggml_type, src.ctypes.data, out.ctypes.data, 0, nrows, n_per_row,
                                     None if imat is None else imat.ctypes.data))
    if size != out.size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {size} bytes, expected {out.size}")
    if not g.ggml_validate_row_data(ggml_type, out.ctypes.data, size):
        raise RuntimeError("quantized data validation failed")
    return out


def reference_tensor_types(
    arch: str, *, n_embd: int, n_ff: int, n_layer: int, n_head: int, n_head_kv: int, n_expert: int,
    tensors: Sequence[tuple[str, Sequence[int]]], ftype: int,
) -> list[int]:
    """llama.cpp's own type choice for each of `tensors` (name, GGUF shape; F32) in `ftype`.

    Through llama.cpp's staging API for testing its quantizer (`llama-ext.h`:
    `llama_quant_model_from_metadata`, `llama_quant_init`, `llama_quant_compute_types`),
    which needs no model file: how tests/test_quantize_rules.py checks convert.quant_rules
    on real model shapes. These are C++ functions, called by their mangled names.
    """
    ll = lib()
    g = ggml_base()
    cdll = ctypes.CDLL(os.fspath(_loaded_path("libllama", Path(str(ll.__file__)).parent / "lib")))

    class Desc(ctypes.Structure):
        _fields_ = [("architecture", ctypes.c_char_p), *((f, ctypes.c_uint32) for f in (
            "n_embd", "n_ff", "n_layer", "n_head", "n_head_kv", "n_expert", "n_embd_head_k", "n_embd_head_v"))]

    head = n_embd // max(1, n_head)
    desc = Desc(arch.encode(), n_embd, n_ff, n_layer, n_head, n_head_kv, n_expert, head, head)
    from_metadata = getattr(cdll, "_Z31llama_quant_model_from_metadataPK22llama_quant_model_desc")
    from_metadata.restype, from_metadata.argtypes = ctypes.c_void_p, [ctypes.POINTER(Desc)]
    q_init = getattr(cdll, "_Z16llama_quant_initPK11llama_modelPK27llama_model_quantize_params")
    q_init.restype, q_init.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]
    q_free = getattr(cdll, "_Z16llama_quant_freeP19quantize_state_impl")
    q_free.restype, q_free.argtypes = None, [ctypes.c_void_p]
    compute = getattr(cdll, "_Z25llama_quant_compute_typesP19quantize_state_impl11llama_ftypePP11ggml_tensorP9ggml_typem")
    compute.restype = None
    compute.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                        ctypes.POINTER(ctypes.c_int), ctypes.c_size_t]
    model = from_metadata(ctypes.byref(desc))
    if not model:
        raise RuntimeError(f"llama.cpp made no model for architecture {arch!r}")
    params = ll.llama_model_quantize_default_params()
    set_fields(params, ftype=ftype)
    ctx = g.ggml_init(_GGMLInitParams(1024 * 1024 + 1024 * len(tensors), None, True))
    qs = q_init(model, ctypes.byref(params))
    try:
        ptrs = (ctypes.c_void_p * len(tensors))()
        for i, (name, shape) in enumerate(tensors):
            ne = (ctypes.c_int64 * len(shape))(*shape)
            ptrs[i] = g.ggml_new_tensor(ctx, 0, len(shape), ne)  # F32, no data
            g.ggml_set_name(ptrs[i], name.encode())
        out = (ctypes.c_int * len(tensors))()
        compute(qs, ftype, ptrs, out, len(tensors))
        return list(out)
    finally:
        q_free(qs)
        g.ggml_free(ctx)
        ll.llama_model_free(model)


def _loaded_path(stem: str, lib_dir: Path) -> Path:
    """The file of library `stem` this process has mapped (else `stem.so` beside llama_cpp)."""
    maps = Path("/proc/self/maps")
    try:
        lines = maps.read_text(encoding="utf-8", errors="replace").splitlines() if maps.is_file() else []
    except OSError:
        lines = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and Path(fields[5]).name.startswith(stem + ".") and Path(fields[5]).is_file():
            return Path(fields[5])
    return lib_dir / f"{stem}.so"
# ============================================== end of the per-tensor quantizer section


# ------------------------------------------------------------------------- baseline
def bare_loop(path: Path, tokens: Sequence[int], *, steps: int, threads: int, n_ctx: int = 4096) -> tuple[float, float]:
    """llama-cpp-python's own `Llama` on `tokens`: (prefill tok/s, greedy decode tok/s).

    No libra-edge code runs in the timed part: the baseline `bench` compares the engine
    with. `Llama` keeps its own defaults (batch sizes, flash attention). It runs on the
    compute thread, as the engine does (`on_compute_thread`).
    """
    return on_compute_thread(lambda: _bare_loop(path, tokens, steps=steps, threads=threads, n_ctx=n_ctx))


def _bare_loop(path: Path, tokens: Sequence[int], *, steps: int, threads: int, n_ctx: int) -> tuple[float, float]:
    import time

    ll = lib()
    llm = ll.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        t = time.perf_counter()
        llm.eval(list(tokens))
        prefill = len(tokens) / (time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(steps):
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
            order = np.argsort(logits)
            tok = int(order[-1])
            if ll.llama_vocab_is_eog(ll.llama_model_get_vocab(llm.model), tok):
                tok = int(order[-2])
            llm.eval([tok])
        decode = steps / (time.perf_counter() - t) if steps else 0.0
    finally:
        llm.close()
    return prefill, decode


def last_logits(
    path: Path, token_lists: Sequence[Sequence[int]], texts: Sequence[str], *, n_ctx: int, threads: int | None
) -> tuple[list[np.ndarray], list[list[int]]]:
    """Logits after each token list (a fresh evaluation each), and each text's token ids.

    For checking a converted file against its source: the texts are tokenized with
    control tokens parsed and no BOS added, as a chat template's output is.
    """
    return on_compute_thread(lambda: _last_logits(path, token_lists, texts, n_ctx=n_ctx, threads=threads))


def _last_logits(
    path: Path, token_lists: Sequence[Sequence[int]], texts: Sequence[str], *, n_ctx: int, threads: int | None
) -> tuple[list[np.ndarray], list[list[int]]]:
    ll = lib()
    kwargs: dict[str, Any] = {"n_ctx": n_ctx, "verbose": False, "logits_all": False}
    if threads:
        kwargs["n_threads"] = threads
    llm = ll.Llama(str(path), **kwargs)
    try:
        rows = []
        for ids in token_lists:
            llm.reset()
            llm.eval(list(ids))
            rows.append(np.ctypeslib.as_array(ll.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy())
        tokenized = [list(llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)) for t in texts]
    finally:
        llm.close()
    return rows, tokenized


# ------------------------------------------- importance matrix: cb_eval (convert/imatrix.py)
# llama.cpp's evaluation callback (`cb_eval` in the context parameters) shows the caller
# every node of the graph before (ask=True) and after (ask=False) it is computed. The
# importance matrix reads the input (src1) of each matrix multiply by a weight, as
# llama.cpp's `imatrix` tool does. `struct ggml_tensor` of the ggml inside
# llama-cpp-python 0.3.36 (ggml/include/ggml.h), checked against ggml's own size below.
GGML_MAX_DIMS, GGML_MAX_SRC, GGML_MAX_OP_PARAMS, GGML_MAX_NAME = 4, 10, 64, 64
GGML_TYPE_F32 = 0


class GGMLTensor(ctypes.Structure):
    """`struct ggml_tensor` (read-only use: op, name, src, ne, nb, type, buffer, data)."""


GGMLTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
    ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GGMLTensor) * GGML_MAX_SRC),
    ("view_src", ctypes.POINTER(GGMLTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * GGML_MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]

_cb_eval_base: ctypes.CDLL | None = None  # (not `_ggml_base`: the quantizer's section has that)


def _ggml_base_lib() -> ctypes.CDLL:
    """ggml-base, the copy libllama itself is linked with (by soname: see `_load_backends`)."""
    global _cb_eval_base
    if _cb_eval_base is None:
        import llama_cpp

        lib()
        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        suffix = ".dll" if sys.platform == "win32" else ".so"
        soname = lib_dir / f"libggml-base{suffix}.0"
        base = ctypes.CDLL(os.fspath(soname if soname.is_file() else lib_dir / f"libggml-base{suffix}"))
        base.ggml_op_name.restype = ctypes.c_char_p
        base.ggml_op_name.argtypes = [ctypes.c_int]
        base.ggml_backend_buffer_is_host.restype = ctypes.c_bool
        base.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
        base.ggml_backend_tensor_get.restype = None
        base.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        base.ggml_nbytes.restype = ctypes.c_size_t
        base.ggml_nbytes.argtypes = [ctypes.c_void_p]
        base.ggml_tensor_overhead.restype = ctypes.c_size_t
        base.ggml_tensor_overhead.argtypes = []
        # ggml_tensor_overhead() = sizeof(struct ggml_object) (32 bytes) + sizeof(struct ggml_tensor)
        expected = int(base.ggml_tensor_overhead()) - 32
        if expected != ctypes.sizeof(GGMLTensor):
            raise RuntimeError(
                f"llama-cpp-python {version()}: struct ggml_tensor is {expected} bytes, libra-edge's "
                f"binding {ctypes.sizeof(GGMLTensor)} (built against {PINNED_VERSION})"
            )
        _cb_eval_base = base
    return _cb_eval_base


def _weight_name(raw: bytes) -> str:
    """A weight's name without a backend's decoration (`CUDA0#blk.0.attn_k.weight#0` -> `blk.0.attn_k.weight`)."""
    name = raw.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


# (weight name, src1 as float32 [ne3, ne2, ne1, ne0] (a copy), weight's ne[2], ne[3])
MatmulSink = Callable[[str, np.ndarray, int, int], None]


def collect_matmul_inputs(model: Model, token_lists: Sequence[Sequence[int]], sink: MatmulSink, *,
                          threads: int, min_rows: int = 16,
                          progress: Callable[[int, int], None] | None = None) -> None:
    """Evaluate each token list from an empty context; `sink` gets every `blk.*` matmul's input.

    The selection is llama.cpp's imatrix tool's (tools/imatrix/imatrix.cpp, `collect_imatrix`):
    GGML_OP_MUL_MAT nodes whose weight is named `blk.*` (so not `output.weight` nor a tied
    `token_embd.weight`), whose input is F32 with at least `min_rows` (16) rows. As there,
    every token's logits are requested, so the last layer runs on every token. Each list is
    one micro-batch (the context is sized to the longest), so a matmul sees the whole prompt.
    """
    on_compute_thread(lambda: _collect_matmul_inputs(model, token_lists, sink, threads=threads,
                                                     min_rows=min_rows, progress=progress))


def _collect_matmul_inputs(model: Model, token_lists: Sequence[Sequence[int]], sink: MatmulSink, *,
                           threads: int, min_rows: int, progress: Callable[[int, int], None] | None) -> None:
    ll = lib()
    base = _ggml_base_lib()
    op_names: dict[int, str] = {}
    failure: list[BaseException] = []

    def op_name(op: int) -> str:
        name = op_names.get(op)
        if name is None:
            name = op_names[op] = (base.ggml_op_name(op) or b"").decode()
        return name

    def callback(t_ptr: int, ask: bool, user_data: Any) -> bool:
        try:
            t = GGMLTensor.from_address(t_ptr)
            if op_name(t.op) != "MUL_MAT" or not t.src[0] or not t.src[1]:
                return not ask  # ask: not interested; after: keep computing
            src0, src1 = t.src[0].contents, t.src[1].contents
            if not _weight_name(src0.name).startswith("blk.") or src1.ne[1] < min_rows or src1.type != GGML_TYPE_F32:
                return not ask
            if ask:
                return True
            sink(_weight_name(src0.name), _tensor_f32(base, src1), int(src0.ne[2]), int(src0.ne[3]))
            return True
        except BaseException as exc:  # never unwind through C: stop the graph, re-raise below
            failure.append(exc)
            return False

    cb = ll.ggml_backend_sched_eval_callback(callback)
    longest = max((len(t) for t in token_lists), default=1)
    n_ctx = max(256, -(-longest // 256) * 256)
    params = ll.llama_context_default_params()
    set_fields(params, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads, n_threads_batch=threads,
               n_seq_max=1, no_perf=True, flash_attn_type=ll.LLAMA_FLASH_ATTN_TYPE_DISABLED,
               cb_eval=cb, cb_eval_user_data=None)
    ctx = ll.llama_init_from_model(model.ptr, params)
    if not ctx:
        raise LoadError("llama.cpp could not create a context for the importance matrix (out of memory?)")
    batch = ll.llama_batch_init(n_ctx, 0, 1)
    try:
        memory = ll.llama_get_memory(ctx)
        for done, tokens in enumerate(token_lists):
            ll.llama_memory_clear(memory, True)
            for i, tok in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            set_fields(batch, n_tokens=len(tokens))
            rc = ll.llama_decode(ctx, batch)
            if failure:
                raise failure[0]
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc}")
            if progress is not None:
                progress(done + 1, len(token_lists))
    finally:
        ll.llama_batch_free(batch)
        ll.llama_free(ctx)
        del cb


def _tensor_f32(base: ctypes.CDLL, t: GGMLTensor) -> np.ndarray:
    """A copy of an F32 tensor's elements as [ne3, ne2, ne1, ne0] (host memory or a backend's)."""
    ne = [int(t.ne[i]) for i in range(GGML_MAX_DIMS)]
    nb = [int(t.nb[i]) for i in range(GGML_MAX_DIMS)]
    nbytes = int(base.ggml_nbytes(ctypes.addressof(t)))
    if base.ggml_backend_buffer_is_host(t.buffer):
        raw: Any = (ctypes.c_char * nbytes).from_address(int(t.data))
    else:
        raw = ctypes.create_string_buffer(nbytes)
        base.ggml_backend_tensor_get(ctypes.addressof(t), raw, 0, nbytes)
    view = np.ndarray(shape=tuple(reversed(ne)), dtype=np.float32, buffer=raw, strides=tuple(reversed(nb)))
    out: np.ndarray = view.copy()
    return out
