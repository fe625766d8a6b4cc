"""The two servers of an A/B ("arms"), given as SPEC strings:

    venv:PATH               a Python environment with vLLM: the harness starts
                            `PATH/bin/vllm serve` with the workload's engine settings
    image:REF               a container image (vllm/vllm-openai:nightly, or our runtime
                            image) run with `docker run --gpus ...`, pinned by digest:
                            the digest actually run is recorded, never invented
    url:http://HOST:PORT    an OpenAI-compatible server someone else runs (the harness
                            neither starts nor configures it; it records what it reports)

Every arm records its facts: vLLM, torch (with its git commit, read from
torch/version.py as text, so nothing is imported), FlashInfer, the image digest, the
GPU name and driver. Servers the harness starts get exactly the same model directory,
engine arguments, attention backend, seed and prefix-caching setting.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...config import read_toml
from ...errors import ConfigError, CouldNotRunError
from ...log import Reporter
from ...runner import query
from ...runner import start as start_process
from . import parity
from .workload import Workload

ArmKind = Literal["venv", "image", "url"]
CONTAINER_MODEL_DIR = "/model"
CONTAINER_PORT = 8000

# Run with the arm's own Python (venv, or inside the image): package versions from their
# metadata, torch's from torch/version.py read as text, so torch is never imported.
VERSIONS_HELPER = Path(__file__).resolve().parents[2] / "helpers" / "arm_versions.py"


@dataclass(frozen=True)
class ArmSpec:
    kind: ArmKind
    target: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}"


def parse_arm_spec(text: str) -> ArmSpec:
    kind, sep, target = text.partition(":")
    if not sep or kind not in ("venv", "image", "url") or not target:
        raise ConfigError(f"not an arm SPEC: {text!r}",
                          fix="use venv:PATH, image:REF or url:http://HOST:PORT")
    if kind == "url" and not target.startswith(("http://", "https://")):
        raise ConfigError(f"url arm needs http(s)://HOST:PORT, got {target!r}")
    return ArmSpec(kind, target)  # type: ignore[arg-type]


def load_baseline_image(path: Path) -> str:
    """verify/baseline.toml -> the image reference to run: by digest when one was
    resolved on a machine that reaches the registry, else by tag."""
    data = read_toml(path, missing="baseline file not found",
                     fix="verify/baseline.toml names the nightly image (image = \"...\")")
    unknown = set(data) - {"image", "digest", "resolved"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}",
                          fix="known keys: image, digest, resolved")
    image = data.get("image")
    digest = data.get("digest", "")
    if not isinstance(image, str) or not image:
        raise ConfigError(f"{path}: image = \"...\" is required")
    if digest:
        if not (isinstance(digest, str) and digest.startswith("sha256:") and len(digest) == 71):
            raise ConfigError(f"{path}: digest must be sha256:<64 hex>, got {digest!r}")
        return f"{strip_tag(image)}@{digest}"
    return image


def strip_tag(ref: str) -> str:
    """vllm/vllm-openai:nightly -> vllm/vllm-openai (a registry's :port is kept)."""
    ref = ref.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return ref[:ref.rfind(":")] if ":" in last else ref


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http only
        return json.loads(response.read().decode())


def gpu_facts() -> list[dict[str, str]] | None:
    """GPU name, driver and compute capability per device, or None where nvidia-smi is
    absent."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = query(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap",
                  "--format=csv,noheader"], timeout=30)
    if not done.ok:
        return [{"error": done.describe(300)}]
    return [dict(zip(("name", "driver", "compute_cap"), (p.strip() for p in line.split(",")),
                     strict=False))
            for line in done.stdout.splitlines() if line.strip()]


def venv_facts(venv: Path) -> dict[str, Any]:
    """Versions (the arm's own Python runs the helper) and the archs compiled into its
    vllm/_C.abi3.so."""
    facts: dict[str, Any] = {}
    done = query([venv / "bin" / "python", VERSIONS_HELPER], timeout=120)
    try:
        facts["versions"] = (json.loads(done.stdout) if done.ok
                             else {"error": done.describe(300)})
    except ValueError as exc:
        facts["versions"] = {"error": f"unreadable version report: {exc}"}
    so = parity.vllm_extension(venv)
    if so is not None:
        try:
            facts["archs"] = parity.compiled_archs(so)
        except (OSError, ValueError) as exc:  # not an ELF file, unreadable
            facts["archs_error"] = f"{so}: {exc}"
    return facts


class Arm:
    """One side of the A/B. `start()` returns the base URL; `stop()` ends what it started."""

    kind: ArmKind

    def __init__(self, label: str, spec: ArmSpec, workload: Workload) -> None:
        self.label = label
        self.spec = spec
        self.workload = workload
        self.served_model = workload.model_name
        self.base_url = ""
        self._facts: dict[str, Any] = {}

    def given_settings(self) -> dict[str, Any] | None:
        """The settings this arm's server was given (None: not controlled by us)."""
        return self.workload.settings()

    def check(self) -> None:
        """Fail early (CouldNotRunError) when the arm cannot run at all."""

    def collect_facts(self) -> None:
        """Versions, digest, GPU: recorded in the report."""

    def start(self, reporter: Reporter, log_path: Path) -> str:
        raise NotImplementedError

    def stop(self, reporter: Reporter) -> None:
        """Nothing to stop by default (url arms)."""

    def facts(self) -> dict[str, Any]:
        return {"label": self.label, "spec": str(self.spec), "kind": self.spec.kind,
                "served_model": self.served_model, **self._facts}

    def _check_serves_model(self) -> None:
        try:
            ids = [m.get("id") for m in http_json(self.base_url + "/v1/models").get("data", [])]
        except (OSError, ValueError, AttributeError) as exc:
            raise CouldNotRunError(f"{self.label}: GET {self.base_url}/v1/models failed: {exc}",
                                   fix="check that the server speaks the OpenAI API") from exc
        self._facts["models"] = ids
        if self.served_model not in ids:
            raise CouldNotRunError(
                f"{self.label}: the server does not serve '{self.served_model}' (it has {ids})",
                why="both arms must serve the workload's model under its name",
                fix="check the model directory and served_model_name in the workload")


class _ServerArm(Arm):
    """An arm whose server process the harness starts and stops (venv, image)."""

    startup_timeout_s = 1800.0  # first start of a big model compiles kernels and graphs

    def __init__(self, label: str, spec: ArmSpec, workload: Workload) -> None:
        super().__init__(label, spec, workload)
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def engine_flags(self, model_path: str, host: str, port: int) -> list[str]:
        """`vllm serve` arguments; the same for every arm the harness starts."""
        e = self.workload.engine
        return ["serve", model_path, "--served-model-name", self.workload.model_name,
                "--host", host, "--port", str(port), "--load-format", e.load_format,
                "--seed", str(e.seed),
                "--enable-prefix-caching" if e.prefix_caching else "--no-enable-prefix-caching",
                *e.args]

    def engine_env(self) -> dict[str, str]:
        env = {"HF_HUB_OFFLINE": "1", **dict(self.workload.engine.env)}
        if self.workload.engine.attention_backend:
            env["VLLM_ATTENTION_BACKEND"] = self.workload.engine.attention_backend
        return env

    def command(self, port: int) -> tuple[list[str], dict[str, str | None]]:
        raise NotImplementedError

    def start(self, reporter: Reporter, log_path: Path) -> str:
        self.port = free_port()
        argv, env_changes = self.command(self.port)
        try:
            self._proc = start_process(argv, reporter=reporter, log_file=log_path,
                                       env_changes=env_changes)
        except OSError as exc:
            raise CouldNotRunError(f"{self.label}: cannot start {argv[0]}: {exc}") from exc
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._wait_ready(log_path)
        self._check_serves_model()
        # What the server chose (attention, MoE and GEMM backends, compile, graphs) is
        # only in its log: the parity report compares the arms on it.
        self._facts["server_log"] = parity.parse_server_log(
            log_path.read_text(errors="replace"))
        return self.base_url

    def _wait_ready(self, log_path: Path) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                text = log_path.read_text(errors="replace")
                tail = text.splitlines()[-25:]
                raise CouldNotRunError(
                    f"{self.label}: the server exited with code {self._proc.returncode} "
                    "before it was ready:\n" + "\n".join("      " + t for t in tail),
                    why=parity.start_failure(text) or "",
                    fix=f"read the server log {log_path}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=5) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(1.0)
        self.stop(Reporter(None))
        raise CouldNotRunError(f"{self.label}: /health not ready after "
                               f"{self.startup_timeout_s:.0f}s", fix=f"read {log_path}")

    def stop(self, reporter: Reporter) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            except ProcessLookupError:
                pass


class VenvArm(_ServerArm):
    kind: ArmKind = "venv"

    def __init__(self, label: str, spec: ArmSpec, workload: Workload) -> None:
        super().__init__(label, spec, workload)
        self.venv = Path(spec.target).expanduser().resolve()

    def command(self, port: int) -> tuple[list[str], dict[str, str | None]]:
        argv = [str(self.venv / "bin" / "vllm"),
                *self.engine_flags(str(self.workload.model), "127.0.0.1", port)]
        # The server runs what the venv holds: this tool's own PYTHONPATH (a source checkout,
        # its helper packages) must not shadow the venv's packages.
        return argv, {"PYTHONPATH": None, **self.engine_env()}

    def check(self) -> None:
        if not (self.venv / "bin" / "python").exists():
            raise CouldNotRunError(f"{self.label}: {self.venv} is not a Python environment",
                                   fix="create it (python -m venv) and install the wheels")
        if not (self.venv / "bin" / "vllm").exists():
            raise CouldNotRunError(f"{self.label}: {self.venv}/bin/vllm does not exist",
                                   fix=f"install vLLM into it: {self.venv}/bin/pip install "
                                       "wheels/<stack>/vllm-*.whl")

    def collect_facts(self) -> None:
        self._facts.update(venv_facts(self.venv))
        self._facts["gpu"] = gpu_facts()
        self._facts["command"] = shlex.join(self.command(0)[0])


class ImageArm(_ServerArm):
    kind: ArmKind = "image"

    def __init__(self, label: str, spec: ArmSpec, workload: Workload, *,
                 gpus: str = "all") -> None:
        super().__init__(label, spec, workload)
        self.ref = spec.target
        self.gpus = gpus
        self.digest: str | None = self.ref.split("@", 1)[1] if "@" in self.ref else None
        self.container = f"vllm-wheels-ab-{label}-{os.getpid()}"

    @property
    def run_ref(self) -> str:
        """What `docker run` gets: repo@digest once known, so the digest recorded is the
        image that ran even if the tag moves meanwhile."""
        if self.digest and "@" not in self.ref:
            return f"{strip_tag(self.ref)}@{self.digest}"
        return self.ref

    def command(self, port: int) -> tuple[list[str], dict[str, str | None]]:
        argv = ["docker", "run", "--rm", "--name", self.container, "--gpus", self.gpus,
                "--ipc=host", "-p", f"127.0.0.1:{port}:{CONTAINER_PORT}",
                "-v", f"{self.workload.model}:{CONTAINER_MODEL_DIR}:ro"]
        for key, value in sorted(self.engine_env().items()):
            argv += ["-e", f"{key}={value}"]
        # --entrypoint vllm: images differ in their ENTRYPOINT (`vllm serve`, or the older
        # `python3 -m vllm.entrypoints.openai.api_server`); this runs the same CLI in all.
        argv += ["--entrypoint", "vllm", self.run_ref,
                 *self.engine_flags(CONTAINER_MODEL_DIR, "0.0.0.0", CONTAINER_PORT)]
        return argv, {}

    def given_settings(self) -> dict[str, Any] | None:
        # The container sees the model at /model; what was mounted there is the host dir,
        # so the settings are the workload's (same model directory as a venv arm).
        return self.workload.settings()

    def check(self) -> None:
        if shutil.which("docker") is None:
            raise CouldNotRunError(f"{self.label}: docker is not installed",
                                   fix="install Docker with the NVIDIA container toolkit")
        info = query(["docker", "info", "--format", "{{json .Runtimes}}"], timeout=60)
        if not info.ok:
            raise CouldNotRunError(f"{self.label}: no Docker engine answers "
                                   f"({info.describe(300)})",
                                   fix="start the Docker daemon (and check `docker run --gpus "
                                       "all nvidia/cuda:12.8.1-base-ubuntu22.04 nvidia-smi`)")

    def resolve_digest(self, reporter: Reporter) -> None:
        """Pull, then read the digest the registry gave; never make one up. Called before
        the first round (harness.prepare_arms), so every round runs repo@digest."""
        if self.digest:
            return
        from ...runner import run

        fix = (f"check that the registry is reachable (`docker pull {self.ref}`), or pin "
               "the digest in verify/baseline.toml / pass image:REPO@sha256:...")
        run(["docker", "pull", self.ref], reporter=reporter, error_cls=CouldNotRunError,
            what=f"{self.label}: docker pull {self.ref}", fix=fix)
        argv = ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", self.ref]
        reporter.log(f"+ {shlex.join(argv)}")
        out = query(argv, timeout=60)
        if out.not_run is not None:
            raise CouldNotRunError(f"{self.label}: {out.not_run}", fix=fix)
        try:
            digests = json.loads(out.stdout) if out.ok else None
        except json.JSONDecodeError:
            digests = None
        repo = strip_tag(self.ref)
        for entry in digests if isinstance(digests, list) else []:
            name, _, digest = str(entry).partition("@")
            # Docker Hub names drop the docker.io/ (and library/) prefix in RepoDigests.
            same_repo = name == repo or repo.endswith("/" + name) or name.endswith("/" + repo)
            if same_repo and re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                self.digest = digest
                reporter.say(f"{self.label}: {self.ref} is {self.run_ref}")
                return
        detail = (out.stderr or out.stdout).strip()[:300]
        raise CouldNotRunError(
            f"{self.label}: no registry digest for {self.ref} after docker pull "
            f"(docker image inspect exit {out.returncode}: {detail or 'no RepoDigests'})",
            why="the A/B runs and records the image by digest, so the tag cannot move "
                "between rounds; a digest is never made up",
            fix=fix)

    def collect_facts(self) -> None:
        self._facts.update({"image": self.ref, "digest": self.digest, "run_ref": self.run_ref,
                            "command": shlex.join(self.command(0)[0]), "gpu": gpu_facts()})
        if shutil.which("docker") is None:
            return
        # The helper's text, as the image cannot see this machine's files.
        done = query(["docker", "run", "--rm", "--entrypoint", "python3", self.run_ref, "-c",
                      VERSIONS_HELPER.read_text(encoding="utf-8")], timeout=600)
        try:
            self._facts["versions"] = (json.loads(done.stdout.strip().splitlines()[-1])
                                       if done.ok else {"error": done.describe(300)})
        except (ValueError, IndexError) as exc:
            self._facts["versions"] = {"error": f"unreadable version report: {exc}"}

    def stop(self, reporter: Reporter) -> None:
        if self._proc is not None and shutil.which("docker"):
            query(["docker", "stop", "-t", "30", self.container], timeout=120)
        super().stop(reporter)


class UrlArm(Arm):
    """Someone else's server. `server_log` (its log file) and `venv` (the environment it
    runs from), when given, let the report compare its backends and archs like a
    venv arm's."""

    kind: ArmKind = "url"

    def __init__(self, label: str, spec: ArmSpec, workload: Workload, *,
                 server_log: Path | None = None, venv: Path | None = None) -> None:
        super().__init__(label, spec, workload)
        self.base_url = spec.target.rstrip("/")
        self.server_log = server_log
        self.venv = venv

    def given_settings(self) -> dict[str, Any] | None:
        return None  # someone else's server: its engine settings are not ours to know

    def check(self) -> None:
        try:
            data = http_json(self.base_url + "/v1/models")
        except (OSError, ValueError) as exc:
            raise CouldNotRunError(f"{self.label}: no OpenAI-compatible server at "
                                   f"{self.base_url} ({exc})",
                                   fix="start the server first, or check HOST:PORT") from exc
        ids = [m.get("id") for m in data.get("data", [])] if isinstance(data, dict) else []
        self._facts["models"] = ids
        # Someone else's server names its model as it likes: use its one model when the
        # workload's name is not among them (the report records what was served).
        if self.served_model not in ids and len(ids) == 1:
            self.served_model = ids[0]

    def start(self, reporter: Reporter, log_path: Path) -> str:
        self._check_serves_model()
        self._read_log()
        return self.base_url

    def _read_log(self) -> None:
        if self.server_log is None:
            return
        try:
            text = self.server_log.read_text(errors="replace")
        except OSError as exc:
            self._facts["server_log_error"] = f"{self.server_log}: {exc}"
            return
        self._facts["server_log"] = parity.parse_server_log(text)

    def collect_facts(self) -> None:
        try:
            self._facts["version"] = http_json(self.base_url + "/version")
        except (OSError, ValueError):
            self._facts["version"] = None  # not a vLLM server, or an older one
        self._facts["url"] = self.base_url
        if self.venv is not None:
            self._facts.update(venv_facts(self.venv))
        # A server on loopback runs on this machine's GPU; elsewhere it is not ours to query.
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        self._facts["gpu"] = gpu_facts() if host in ("127.0.0.1", "localhost", "::1") else None
        self._read_log()


def make_arm(label: str, spec: ArmSpec, workload: Workload, *,
             server_log: Path | None = None, venv: Path | None = None) -> Arm:
    if (server_log is not None or venv is not None) and spec.kind != "url":
        raise ConfigError(f"--{label}-log / --{label}-venv are for url: arms",
                          why=f"the harness starts a {spec.kind}: arm's server and reads its "
                              "log and environment itself")
    if spec.kind == "venv":
        return VenvArm(label, spec, workload)
    if spec.kind == "image":
        return ImageArm(label, spec, workload)
    return UrlArm(label, spec, workload, server_log=server_log, venv=venv)
