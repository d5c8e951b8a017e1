"""What a `batch` command line asks for, decided before anything loads: a new run or the
continuation of a stored one (its inputs, model, settings and options), and the cluster."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from libra_edge.cli.common import FLAGS, engine_settings
from libra_edge.engine.settings import EngineSettings, SettingError
from libra_edge.errors import LibraError

if TYPE_CHECKING:
    from libra_edge.batch import AnalysisMode, BatchOptions
    from libra_edge.batch.cluster import ClusterOptions
    from libra_edge.store import Store


@dataclass(frozen=True)
class RunPlan:
    """The run a command line names: what to read, with which model, settings and options."""

    inputs: list[str]
    model: str | None
    settings: EngineSettings
    options: BatchOptions
    resume: int | None


def new_run_settings(args: argparse.Namespace) -> EngineSettings:
    """A new run's settings from `batch`'s options (`--parallel`: 1 unless given)."""
    return engine_settings(args, parallel=1 if args.parallel is None else args.parallel)


def plan_run(args: argparse.Namespace, store: Store) -> RunPlan:
    """The resume decision. `--resume RUN` takes the run's inputs (unless given), model (unless
    given), verdict settings and options, and this command's speed settings (`--parallel`,
    `--threads`); otherwise the command line makes a new run's (which `BatchJob.open` still
    matches with a stored run of the same fingerprint)."""
    from libra_edge.batch import BatchOptions, FieldMap, resume_settings

    analysis = "none" if args.fast else args.analysis
    inputs: list[str] = list(args.inputs)
    if args.resume is None:
        if not inputs:
            raise LibraError("give INPUT files or folders to check (or --resume RUN; `libra-edge runs list` "
                             "lists the runs)")
        fields = FieldMap(question=args.question_field, response=args.response_field, id=args.id_field)
        options = BatchOptions(analysis=cast("AnalysisMode", analysis or "all"), fields=fields, strict=args.strict,
                               format=args.format, turns=args.turns)
        return RunPlan(inputs, args.model, new_run_settings(args), options, None)
    past = store.run(args.resume)
    # Verdict-relevant settings come from the run; speed settings from this command.
    try:
        settings = resume_settings(past, parallel=args.parallel, threads=args.threads, verbose=args.verbose)
    except SettingError as exc:
        raise LibraError(f"{FLAGS.get(exc.setting, exc.setting)}: {exc.problem}") from None
    options = BatchOptions.from_json(past.options)
    if analysis is not None and analysis != options.analysis:
        raise LibraError(f"--resume {past.id}: the run uses --analysis {options.analysis}; "
                         "drop the option or start a new run")
    if not inputs and "-" in past.inputs:
        raise LibraError(f"--resume {past.id}: the run read its input from stdin",
                         hint=f"pipe the same input again: ... | libra-edge batch - --resume {past.id}")
    return RunPlan(inputs or past.inputs, args.model or past.model_path, settings, options, past.id)


def cluster_options(args: argparse.Namespace) -> ClusterOptions | None:
    """`--cluster` and its pool options (None without --cluster); the threads are the actor's CPUs."""
    if args.cluster is None:
        for flag, value in (("--actors", args.actors), ("--cpus-per-actor", args.cpus_per_actor),
                            ("--gpus-per-actor", args.gpus_per_actor or None)):
            if value is not None:
                raise LibraError(f"{flag} goes with --cluster ray[=ADDRESS]")
        return None
    from libra_edge.batch.cluster import ClusterOptions, import_ray, parse_cluster, probe_address

    address = parse_cluster(args.cluster)
    import_ray(quiet=not args.verbose)  # say what to install before reading anything
    if address:
        probe_address(address)
    if args.threads and args.cpus_per_actor and args.threads != args.cpus_per_actor:
        raise LibraError(f"--threads {args.threads} and --cpus-per-actor {args.cpus_per_actor} disagree: "
                         "an actor runs one llama.cpp thread per CPU Ray gives it; give one of them")
    return ClusterOptions(address=address, actors=args.actors,
                          cpus_per_actor=args.cpus_per_actor or args.threads or 2,
                          gpus_per_actor=args.gpus_per_actor)
