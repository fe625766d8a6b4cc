"""Build stage (`nox -s build_wheels`, `vllm-wheels build-wheels`; `nox -s bench_build`):
a stack file in, verified wheels in wheels/<stack>/ out.

  stack -> prepare (sources, patches, pins) -> externals -> plan (toolchain, parallelism)
        -> pipeline (each package's builder) -> output (post-process, verify, publish)

The stack and the plan
  stack.py         the stack file's schema: frozen dataclasses whose fields drive the
                   reader, the writer and docs/stack-reference.md
  plan.py          Plan (frozen) and make_plan: everything decided before a compile;
                   ensure_toolchain returns the plan with the build venv's facts
  render.py        the plan as text (`--dry-run`)
  parallelism.py   jobs and nvcc threads: command line, MAX_JOBS, stack, rule, record
Sources
  sources.py       download (PyPI, git, path), verify sha256, unpack
  patches.py       the patch series of a package: check and apply
  pins.py          torch pins stripped from a source (torch comes from the stack)
  prepare.py       a package's prepared tree (one per package, version and patch
                   series; its content key in the marker) and its requirements
  externals.py     the external sources a build downloads, resolved before it runs
  fetchcontent.py  vLLM's FetchContent declarations, read from its CMake files
  cmake_eval.py    the small CMake evaluator and text reader (also the trial's)
  bundle.py        every source of a build with a sha256 lock (--export-bundle/--bundle)
Building
  toolchain.py     nvcc, Python, the build venv, torch facts, compile cache, parallelism rule
  builders/        one module per builder behind the Builder protocol (see its __init__)
  pipeline.py      `build`: the build's steps (numbered here), each package's builder
  telemetry.py     per-unit compile costs, the record the next build's parallelism uses
  remote_cache.py  the shared sccache backend (redis, s3, gs) and its guard
Output
  wheelmeta.py     wheel rewriting: local label, runtime pins, manifest, RECORD
  output.py        post-process, verify_abi against the build venv, publish, summary
  reproduce.py     --verify-reproducible: the same plan again, compared byte for byte
  bench.py         the build benchmark (cold, warm local, warm remote, one-file patch)
  cli_build_wheels.py  the `build-wheels` command
"""
