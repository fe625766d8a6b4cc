"""Parallelism: how many compile jobs and nvcc threads, in one precedence (command line,
then MAX_JOBS/NVCC_THREADS, then the stack; the rule of cores and memory decides what is
left), and the unit cost record a build may take it from instead (--unit-costs,
$VLLM_WHEELS_UNIT_COSTS, then the cache's record of the same version and arch list).
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import layout
from ..cache import Cache
from ..errors import ConfigError
from . import telemetry, toolchain
from .stack import PackageSpec, Stack


def _count(value: int | str, name: str, meaning: str, zero: str) -> int:
    """A job or thread count from the user: a whole number >= 0 (0 = the default)."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        fix = (f"use {name} 0 ({zero}) or a positive count, e.g. {name} 4"
               if name.startswith("--") else
               f"set {name} to 0 ({zero}) or a positive count, e.g. {name}=4, or unset it")
        raise ConfigError(f"{name} must be a whole number >= 0, got {str(value)!r}",
                          why=f"it is {meaning}", fix=fix)
    return number


def parallelism_overrides(max_jobs: int | None, nvcc_threads: int | None
                          ) -> tuple[int | None, int | None]:
    """The user's job and thread counts (command line first, then MAX_JOBS/NVCC_THREADS),
    validated before anything is downloaded; None where the stack decides."""
    jobs_facts = ("the number of concurrent compile jobs", "choose from cores and memory")
    threads_facts = ("the number of threads per nvcc", "one thread")
    env_jobs = os.environ.get("MAX_JOBS")
    env_threads = os.environ.get("NVCC_THREADS")
    jobs = _count(max_jobs, "--max-jobs", *jobs_facts) if max_jobs is not None else \
        _count(env_jobs, "MAX_JOBS", *jobs_facts) if env_jobs else None
    threads = _count(nvcc_threads, "--nvcc-threads", *threads_facts) \
        if nvcc_threads is not None else \
        _count(env_threads, "NVCC_THREADS", *threads_facts) if env_threads else None
    return jobs, threads


def choose_parallelism(stack: Stack, max_jobs: int | None, nvcc_threads: int | None,
                       record: str = "", *, cores: int | None = None,
                       available_gb: float | None = None) -> toolchain.Parallelism:
    """The precedence: the command line, then MAX_JOBS/NVCC_THREADS, then the stack's
    [build] counts, into the rule (toolchain.parallelism_rule); or with a unit cost
    record (`record`, where it came from) full width under a memory budget
    (toolchain.learned_parallelism)."""
    jobs, threads = parallelism_overrides(max_jobs, nvcc_threads)
    jobs = stack.build.max_jobs if jobs is None else jobs
    threads = stack.build.nvcc_threads if threads is None else threads
    rule = toolchain.parallelism_rule(
        cores=toolchain.cpu_count() if cores is None else cores,
        available_gb=toolchain.available_memory_gb() if available_gb is None else available_gb,
        gb_per_job=stack.build.gb_per_job, max_jobs=jobs, nvcc_threads=threads)
    if not record:
        return rule
    return toolchain.learned_parallelism(rule, gb_per_job=stack.build.gb_per_job, record=record)


UNIT_COSTS_ENV = "VLLM_WHEELS_UNIT_COSTS"


def find_unit_costs(stack: Stack, cache: Cache, specs: list[PackageSpec],
                    given: Path | None = None, repo_root: Path | None = None
                    ) -> tuple[str, dict[str, dict[str, dict[str, float]]]]:
    """(where the costs came from, {package: {unit: cost}}), packages without any left out.

    A record the user names (--unit-costs, then $VLLM_WHEELS_UNIT_COSTS: a record or a
    build-telemetry.json, e.g. another machine's) wins; else each package's own record in
    the cache, written by the last build of the same version and arch list on this machine;
    else the record committed with the stacks (layout.UNIT_COSTS_DIR), measured on a build
    host, so a fresh machine's first build starts the longest units first."""
    env = os.environ.get(UNIT_COSTS_ENV)
    named, origin = (given, "--unit-costs") if given is not None else \
        (Path(env), UNIT_COSTS_ENV) if env else (None, "")
    found: dict[str, dict[str, dict[str, float]]] = {}
    if named is not None:
        for spec in specs:
            try:
                costs = telemetry.load_costs(named, spec.name)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{origin} {named}: cannot read unit costs ({exc})",
                                  why="it names the unit cost record parallelism is chosen from",
                                  fix="give a build-telemetry.json or a record from "
                                      "CACHE/unit-costs/, or unset it") from None
            if costs:
                found[spec.name] = costs
        return (f"{named} ({origin})" if found else ""), found
    paths = []
    for spec in specs:
        path = telemetry.record_path(cache.root, spec.name, spec.source.version or "0",
                                     stack.cuda_arch_list)
        candidates = [path]
        if repo_root is not None:
            candidates.append(repo_root / layout.UNIT_COSTS_DIR / path.name)
        for candidate in candidates:
            try:
                costs = telemetry.load_costs(candidate, spec.name) if candidate.exists() else {}
            except (OSError, ValueError, KeyError, TypeError):
                costs = {}  # a damaged record is rewritten by this build; the rule decides
            if costs:
                found[spec.name] = costs
                paths.append(str(candidate))
                break
    return ", ".join(paths), found

