"""Source-build pipeline for custom vLLM and FlashInfer wheels pinned to one PyTorch.

Stages, one module each: stack (what to build) -> plan (what will run) -> sources
(download, verify, unpack) -> patches -> fetchcontent (vLLM's external sources) ->
toolchain (nvcc, build venv, torch facts) -> builders (compile) -> wheelmeta
(post-process) -> pipeline (orchestration). See README.md.
"""

__version__ = "0.1.0"
