from __future__ import annotations

import io

from vllm_wheels.build.toolchain import parallelism_rule
from vllm_wheels.log import NinjaProgress, Reporter


def test_memory_limits_jobs_on_a_big_core_count() -> None:
    p = parallelism_rule(cores=64, available_gb=128, gb_per_job=6)
    assert p.jobs == 21  # (128 - 2) // 6
    assert "memory" in p.reason


def test_cores_limit_jobs_on_a_small_machine() -> None:
    p = parallelism_rule(cores=2, available_gb=24, gb_per_job=6)
    assert p.jobs == 2 and "cores" in p.reason


def test_nvcc_threads_count_against_memory_and_vllm_gets_the_product() -> None:
    p = parallelism_rule(cores=16, available_gb=64, gb_per_job=6, nvcc_threads=2)
    assert p.jobs == 5  # (64 - 2) // 12
    assert p.vllm_max_jobs == 10  # setup.py divides MAX_JOBS by NVCC_THREADS


def test_never_zero_and_user_value_wins() -> None:
    assert parallelism_rule(cores=8, available_gb=3, gb_per_job=6).jobs == 1
    assert parallelism_rule(cores=2, available_gb=3, gb_per_job=6, max_jobs=7).jobs == 7


def test_ninja_progress_rate_and_eta() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = NinjaProgress(Reporter(stream=out), "vllm", min_interval_s=0,
                             clock=lambda: now[0])
    assert not progress.feed("-- Configuring done")
    assert progress.feed("[1/101] Building CUDA object a.cu.o")
    now[0] = 100.0
    assert progress.feed("[51/101] Building CUDA object b.cu.o")
    rate, eta = progress.rate_and_eta()
    assert abs(rate - 0.5) < 1e-9 and eta is not None and abs(eta - 100.0) < 1e-6
    assert "51/101 (50%)" in out.getvalue() and "ETA 1m40s" in out.getvalue()
