"""Judge a batch run's items on a Ray cluster: Ray Data streams them through a pool of actors.

    from libra_edge.batch import BatchJob, read_inputs
    from libra_edge.batch.cluster import ClusterOptions, RayExecutor, cluster_settings, model_stand_in

    settings = cluster_settings(EngineSettings(), ClusterOptions(cpus_per_actor=4))
    stand_in = model_stand_in("guard.gguf", settings)            # the driver does not load it
    job = BatchJob.open(store, stand_in, read_inputs(["logs.jsonl"]), BatchOptions(analysis="none"))
    job.execute(executor=RayExecutor("guard.gguf", ClusterOptions(cpus_per_actor=4)))

The driver (this process) reads the inputs, skips what the store holds, and commits each
verdict as it streams back: the store, resume and output are a local batch's. Each actor
loads one Guard, once, from the same model file (checked by sha256 on its node) and
judges items with `judge_pairs`, the local runner's own code. Ray does the scheduling,
the backpressure and the retries (an actor or node that dies has its items judged by
another). This is the only module that imports Ray, and only when a run uses it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libra_edge.batch.readers import Item
from libra_edge.batch.policy import Outcome, VerdictLike, judge_pairs
from libra_edge.batch.runner import BatchJob, RunInterrupted, verdict_record
from libra_edge.engine.settings import EngineSettings
from libra_edge.errors import LibraError, ModelError
from libra_edge.models.ggufinfo import GGUFInfo

if TYPE_CHECKING:
    from libra_edge.engine import Guard

INSTALL_HINT = "pip install 'libra-edge[cluster]' on the driver and on every node"


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide: the Ray address and the actor pool's shape."""

    address: str | None = None
    """As `ray.init` takes it (`HOST:PORT`, `ray://HOST:PORT`); None or `auto`: the cluster this
    machine belongs to, else a new local one."""
    actors: int | None = None
    """Most actors (one Guard each); None: as many as the cluster's nodes fit."""
    cpus_per_actor: int = 2
    """CPUs Ray reserves per actor; llama.cpp runs this many threads."""
    gpus_per_actor: float = 0.0
    items_per_task: int = 4
    """Items an actor judges per Ray Data batch (each verdict is committed when its batch returns)."""

    def __post_init__(self) -> None:
        if self.cpus_per_actor < 1:
            raise LibraError(f"--cpus-per-actor: must be at least 1, got {self.cpus_per_actor}")
        if self.gpus_per_actor < 0:
            raise LibraError(f"--gpus-per-actor: must be 0 or more, got {self.gpus_per_actor}")
        if self.actors is not None and self.actors < 1:
            raise LibraError(f"--actors: must be at least 1, got {self.actors}")
        if self.items_per_task < 1:
            raise LibraError(f"items per task: must be at least 1, got {self.items_per_task}")


def parse_cluster(value: str) -> str | None:
    """`--cluster ray[=ADDRESS]` -> the address (None: auto)."""
    kind, _, address = value.partition("=")
    if kind != "ray":
        raise LibraError(f"--cluster {value}: expected ray or ray=ADDRESS (Ray is the only cluster supported)")
    address = address.strip()
    return None if not address or address == "auto" else address


def cluster_settings(settings: EngineSettings, options: ClusterOptions) -> EngineSettings:
    """The settings every actor loads its Guard with, as the run records them.

    llama.cpp runs one thread per reserved CPU; GPU layers are what the actors offload
    (a node whose build cannot is refused), not what the driver's build could.
    """
    layers = settings.gpu_layers
    if options.gpus_per_actor <= 0:
        layers = 0
    elif layers in ("auto", "all"):
        layers = -1
    return settings.replace(threads=options.cpus_per_actor, gpu_layers=layers)


@dataclass(frozen=True)
class ModelStandIn:
    """What `BatchJob.open` needs of a guard, for a run whose guards live on the cluster."""

    info: GGUFInfo
    settings: EngineSettings
    parallel: int = 1

    def check(self, question: str, response: str, *, analysis: bool = True,
              cancel: threading.Event | None = None,
              on_window: Callable[[int, int], None] | None = None) -> VerdictLike:
        raise RuntimeError("a cluster run's items are judged by its actors")

    def check_many(self, pairs: Sequence[tuple[str, str]], *, analysis: bool = True,
                   on_verdict: Callable[[int, Any], None] | None = None,
                   cancel: threading.Event | None = None,
                   on_window: Callable[[int, int, int], None] | None = None) -> Sequence[VerdictLike]:
        raise RuntimeError("a cluster run's items are judged by its actors")


def model_stand_in(model: str | os.PathLike[str], settings: EngineSettings) -> ModelStandIn:
    """The model's header read on the driver (validated, not loaded) with the actors' settings."""
    from libra_edge.models.ggufinfo import read_model_info

    return ModelStandIn(info=read_model_info(Path(model)), settings=settings, parallel=settings.parallel)


class RemoteOutcome:
    """A verdict (or failure) as an actor sent it: what `BatchJob` stores, and where it was made."""

    def __init__(self, record: dict[str, Any], node: str) -> None:
        self.record = record
        self.node = node
        self.unsafe = bool(record.get("unsafe"))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)


class RemoteFailure(Exception):
    """An item whose check raised on an actor (stored as a failure; a rerun retries it)."""

    def __init__(self, message: str, node: str) -> None:
        super().__init__(message)
        self.node = node


class GuardActor:
    """One Ray Data actor: a Guard loaded once from the run's model file, if this node has it.

    The model is `model` as the driver was given it: a path (the same on every node, e.g. a
    shared filesystem) or an installed model name resolved on this node. A file whose
    sha256 is not the run's, or settings that load differently here (a build that cannot
    offload to the GPU), make every batch come back refused, naming the node.
    """

    def __init__(self, model: str, model_sha256: str, settings: dict[str, Any], analysis: str) -> None:
        import ray

        from libra_edge.engine import Guard, llama
        from libra_edge.models import resolve_model
        from libra_edge.models.digest import model_sha256 as sha256_of

        self.node = ray.get_runtime_context().get_node_id()
        self.host = socket.gethostname()
        self.build = llama.build_features()
        self.analysis = analysis
        self.guard: Guard | None = None
        self.sha256 = ""
        self.refusal: str | None = None
        where = f"node {self.node[:12]} ({self.host})"
        try:
            path = resolve_model(model)
            self.sha256 = sha256_of(path)
            if self.sha256 != model_sha256:
                self.refusal = (f"{where} holds another model file at {path}: sha256 {self.sha256[:16]}…, "
                                f"the run's is {model_sha256[:16]}…")
                return
            wanted = EngineSettings.from_stored(settings)
            self.guard = Guard.load(path, wanted)
            if self.guard.settings.verdict_key() != wanted.verdict_key():
                self.refusal = (f"{where} would judge with other settings than the run's "
                                f"({self.guard.settings.verdict_key()} vs {wanted.verdict_key()}); "
                                f"its build: {self.build}")
        except LibraError as exc:
            self.refusal = f"{where}: {exc}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        seqs = [int(s) for s in batch["seq"]]
        results: list[str] = [""] * len(seqs)
        if self.refusal is not None or self.guard is None:
            results = [json.dumps({"refused": self.refusal or "no guard loaded"})] * len(seqs)
        else:
            pairs = [(str(q), str(r)) for q, r in zip(batch["question"], batch["response"])]

            def record(i: int, outcome: Outcome) -> None:
                if isinstance(outcome, Exception):
                    text = str(outcome) or type(outcome).__name__
                    results[i] = json.dumps({"error": text}, ensure_ascii=False)
                else:
                    results[i] = json.dumps({"verdict": verdict_record(outcome)}, ensure_ascii=False)

            judge_pairs(self.guard, pairs, self.analysis, record)
        n = len(seqs)
        return {
            "seq": np.array(seqs, dtype=np.int64),
            "result": np.array(results, dtype=object),
            "node": np.array([self.node] * n, dtype=object),
            "host": np.array([self.host] * n, dtype=object),
            "build": np.array([self.build] * n, dtype=object),
            "sha256": np.array([self.sha256] * n, dtype=object),
        }


def actor_class(**config: Any) -> type[GuardActor]:
    """`GuardActor` with the run's configuration built in.

    Shipped with the class itself rather than as constructor arguments, which Ray Data would
    keep in the object store (where an actor restarted after a node loss may not find them).
    """

    class RunGuardActor(GuardActor):
        def __init__(self) -> None:
            super().__init__(**config)

    return RunGuardActor


def import_ray(*, quiet: bool = True) -> Any:
    """Ray, or a LibraError saying what to install.

    `quiet` keeps Ray's C++ logs (read when Ray is first imported) to fatal errors; the
    CLI's --verbose shows them, as it shows llama.cpp's.
    """
    if quiet:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise LibraError("--cluster needs Ray Data, which is not installed", hint=INSTALL_HINT) from None
    return ray


class RayExecutor:
    """Judges a job's items on a Ray cluster (see the module's docstring)."""

    def __init__(self, model: str | os.PathLike[str], options: ClusterOptions, *,
                 on_status: Callable[[str], None] | None = None, verbose: bool = False) -> None:
        self.model = os.fspath(model)
        self.options = options
        self.say = on_status or (lambda _msg: None)
        self.verbose = verbose

    # -- the cluster -------------------------------------------------------------------
    def _connect(self, ray: Any) -> None:
        if self.options.address:
            probe_address(self.options.address)
        kwargs: dict[str, Any] = {"logging_level": logging.INFO if self.verbose else logging.ERROR,
                                  "log_to_driver": self.verbose}
        if self.options.address:
            kwargs["address"] = self.options.address
        else:
            kwargs["include_dashboard"] = False  # only when a new local cluster is started
        try:
            ray.init(**kwargs)
        except (TypeError, ValueError):  # include_dashboard is refused when joining a running cluster
            kwargs.pop("include_dashboard", None)
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise LibraError(f"--cluster: cannot reach the Ray cluster at {self.options.address}: {exc}",
                             hint="check the address (`ray status` on the head node prints it)") from None

    def _pool_size(self, ray: Any) -> int:
        """Actors that fit on the cluster's live nodes (at most --actors)."""
        fit = 0
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            n = math.floor(res.get("CPU", 0) / self.options.cpus_per_actor)
            if self.options.gpus_per_actor > 0:
                n = min(n, math.floor(res.get("GPU", 0) / self.options.gpus_per_actor))
            fit += n
        if fit < 1:
            need = f"{self.options.cpus_per_actor} CPUs" + (
                f" and {self.options.gpus_per_actor:g} GPUs" if self.options.gpus_per_actor else "")
            raise LibraError(f"--cluster: no node of the Ray cluster has {need} for one actor",
                             hint="lower --cpus-per-actor (llama.cpp threads) or add nodes")
        return min(fit, self.options.actors) if self.options.actors else fit

    # -- Executor ----------------------------------------------------------------------
    def run(self, job: BatchJob, items: Sequence[Item], record: Callable[[Item, Outcome], None],
            cancel: threading.Event) -> bool:
        ray = import_ray()
        self._connect(ray)
        try:
            return self._stream(ray, job, items, record, cancel)
        finally:
            ray.shutdown()  # the actors are this driver's: they end with it

    def _stream(self, ray: Any, job: BatchJob, items: Sequence[Item], record: Callable[[Item, Outcome], None],
                cancel: threading.Event) -> bool:
        from ray.data import ActorPoolStrategy, DataContext

        actors = self._pool_size(ray)
        run = job.store.run(job.run_id)
        self.say(f"cluster: {len([n for n in ray.nodes() if n.get('Alive')])} nodes, up to {actors} actors of "
                 f"{self.options.cpus_per_actor} CPUs")
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver draws its own
        ctx.print_on_execution_start = False
        if not self.verbose:  # Ray's and Ray Data's Python logs: with --verbose only
            for name in ("ray", "ray.data"):
                logging.getLogger(name).setLevel(logging.ERROR)
        by_seq = {item.seq: item for item in items}
        # An actor with parallel sequences gets enough items to keep them busy (as locally).
        per_task = max(self.options.items_per_task, 4 * job.guard.settings.parallel)
        ds = ray.data.from_items(
            [{"seq": i.seq, "question": i.question, "response": i.response} for i in items],
            override_num_blocks=max(1, math.ceil(len(items) / per_task)),
        ).map_batches(
            actor_class(model=self.model, model_sha256=run.model_sha256,
                        settings=job.guard.settings.to_dict(), analysis=job.options.analysis),
            batch_size=per_task,
            compute=ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
            num_cpus=self.options.cpus_per_actor,
            batch_format="numpy",
            **({"num_gpus": self.options.gpus_per_actor} if self.options.gpus_per_actor else {}),
        )
        joined: set[str] = set()
        try:
            for batch in _batches(ds):
                for seq, raw, node, host, build, sha in zip(batch["seq"], batch["result"], batch["node"],
                                                           batch["host"], batch["build"], batch["sha256"]):
                    payload = json.loads(str(raw))
                    if "refused" in payload:
                        raise ModelError(str(payload["refused"]))
                    node = str(node)
                    if node not in joined:
                        job.join(node, host=str(host), build=str(build), model_sha256=str(sha))
                        joined.add(node)
                    item = by_seq.get(int(seq))
                    if item is None:
                        continue
                    if "error" in payload:
                        record(item, RemoteFailure(str(payload["error"]), node))
                    else:
                        record(item, RemoteOutcome(payload["verdict"], node))
                if cancel.is_set():
                    return False
        except ray.exceptions.UserCodeException as exc:  # an actor's own code failed
            raise LibraError(f"an actor failed: {_first_line(exc)}",
                             hint="run again with --verbose for Ray's logs") from None
        except (ray.exceptions.RayError, ConnectionError, OSError, TimeoutError) as exc:
            # The cluster went away under us (every node lost, the head down).
            raise RunInterrupted(f"the Ray cluster stopped answering: {_first_line(exc)}") from None
        return True


def probe_address(address: str) -> None:
    """Raise LibraError at once when nothing answers at a Ray address (Ray retries for minutes)."""
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=10).close()
    except OSError as exc:
        raise LibraError(f"--cluster: cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
                         hint="check the address: `ray status` on the head node prints it") from None


def _host_port(address: str) -> tuple[str, int]:
    """(host, port) of a Ray address: `HOST:PORT`, `ray://HOST:PORT` (Ray's default port 6379)."""
    bare = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = bare.rpartition(":")
    if not sep:
        return bare, 6379
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise LibraError(f"--cluster ray={address}: expected HOST:PORT") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _batches(ds: Any) -> Iterator[dict[str, Any]]:
    """The pipeline's output as it is made (each block as its actor returns it)."""
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
