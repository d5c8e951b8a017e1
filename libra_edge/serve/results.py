"""`--log-results`: every verdict the service gives, committed to the store as one `serve` run."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from libra_edge.batch.identity import record_run
from libra_edge.batch.runner import local_node
from libra_edge.engine import Guard
from libra_edge.store import RunStatus
from libra_edge.store.db import Store, open_store


def model_name(guard: Guard) -> str:
    """The loaded model's name (`general.name`, else the file's stem)."""
    return guard.info.name or Path(guard.info.path).stem


class ResultLog:
    """One run (status `running` while the service is up) that gets a row per judged pair.

    Rows use the batch runs' schema, so `batch --runs`, the TUI and `report` read them;
    `seq` counts verdicts in the order they were committed. The run's options say
    `{"kind": "serve"}`.
    """

    def __init__(self, store: Store, guard: Guard, endpoint: str) -> None:
        self.store = store
        stamp = f"serve:{endpoint}:{os.getpid()}:{time.time_ns()}"
        # Recorded as a batch run is (`record_run`): the model, every setting, the tool's
        # version and the llama.cpp build, which the run's report and export name.
        self.run_id = record_run(
            store, guard, fingerprint=hashlib.sha256(stamp.encode()).hexdigest(), inputs=[f"serve:{endpoint}"],
            options={"kind": "serve", "analysis": "per-request", "endpoint": endpoint}, total=0,
        )
        self.node, host, build = local_node()
        store.record_node(self.run_id, self.node, host=host, build=build, model_sha256=guard.model_sha256)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self.closed = False

    @classmethod
    def open(cls, guard: Guard, endpoint: str) -> ResultLog:
        """A new `serve` run in the user's results database."""
        return cls(open_store(), guard, endpoint)

    def add(self, question: str, response: str, verdict: Mapping[str, Any], fields: Mapping[str, Any]) -> int:
        """Commit one verdict (`Verdict.to_dict()` as answered); returns its row id."""
        with self._lock:
            seq = next(self._seq)
        return self.store.add_result(self.run_id, seq=seq, question=question, response=response,
                                     fields=fields, verdict=verdict, node=self.node)

    def close(self, status: RunStatus = "finished", message: str | None = None) -> None:
        """Close the run (`finished` after a drained shutdown) and the database; once."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            judged = next(self._seq)
        self.store.set_total(self.run_id, judged)
        self.store.finish_run(self.run_id, status, message)
        self.store.close()
