"""Container images (docker/): the versions file that pins them, the build arguments and
`docker build` / `docker run` command lines derived from a stack, the docker/ vs stack
consistency check, and the registry lookup that records digests.

- versions.py: docker/versions.toml (frozen dataclasses, strict keys), base-image choice
  from the stack's CUDA, digest lookup through the registry HTTP API, file rewriting.
- commands.py: build arguments, image tags, exact command lines, the consistency check,
  `build-wheels --in-docker` and the runtime image build.
- cli_*.py: the `runtime-image`, `update-images` and `check-images` commands.
"""
