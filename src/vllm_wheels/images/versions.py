"""docker/versions.toml: the pins of the container images (base images by tag and digest,
the exact CPython per stack Python, nox), the choice of base image from a stack's CUDA,
and `update_images`, which asks the registry for digests and records them.

A digest is never made up: `pinned` stays "" until a registry answered for that exact tag,
and a `pinned` whose tag is not the entry's `ref` is refused (someone edited the ref).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ..build.stack import Stack
from ..cache import temp_sibling
from ..config import Table, read_toml
from ..errors import ConfigError, SourceError

SCHEMA_VERSION = 1
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# [mirror/]nvidia/cuda:<X.Y.Z>-<flavour>-<distro>, e.g. nvidia/cuda:12.8.1-devel-ubuntu22.04;
# a registry prefix allows a private mirror of the same images.
_CUDA_TAG = re.compile(r"^(?:[a-z0-9.-]+(?::\d+)?/)?nvidia/cuda:(\d+\.\d+\.\d+)-"
                       r"(base|runtime|devel)-([a-z]+\d+(?:\.\d+)?)$")
_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Manifest types a registry may hold for a tag; the multi-arch index first, so the digest
# pins the same thing `docker pull <tag>` resolves.
MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


@dataclass(frozen=True, kw_only=True)
class ImagePin:
    name: str  # the table name in the versions file, e.g. "cuda-12-8-devel"
    ref: str  # registry/repository:tag
    pinned: str = ""  # ref@sha256:..., written by update_images; "" = unresolved

    @property
    def digest(self) -> str:
        return self.pinned.partition("@")[2]

    @property
    def resolved(self) -> bool:
        return bool(self.pinned)

    @property
    def reference(self) -> str:
        """What FROM uses: tag and digest when resolved, else the tag alone."""
        return self.pinned or self.ref


@dataclass(frozen=True, kw_only=True)
class CudaImage:
    pin: ImagePin
    cuda: Version
    flavour: str  # base | runtime | devel
    distro: str


@dataclass(frozen=True, kw_only=True)
class Versions:
    path: Path
    python: Mapping[str, str]  # stack python ("3.12") -> exact CPython ("3.12.16")
    nox: str
    images: Mapping[str, ImagePin]

    def image(self, name: str) -> ImagePin:
        try:
            return self.images[name]
        except KeyError:
            raise ConfigError(f"{self.path}: no [images.{name}]",
                              fix=f"add [images.{name}] ref = \"...\" pinned = \"\"") from None

    def cuda_images(self) -> list[CudaImage]:
        found = []
        for pin in self.images.values():
            match = _CUDA_TAG.match(pin.ref)
            if match:
                found.append(CudaImage(pin=pin, cuda=Version(match.group(1)),
                                       flavour=match.group(2), distro=match.group(3)))
        return found

    def python_for(self, stack: Stack) -> str:
        exact = self.python.get(stack.python)
        if exact is None:
            raise ConfigError(f"{self.path}: no exact CPython for the stack's python "
                              f"{stack.python}",
                              fix=f'add "{stack.python}" = "{stack.python}.N" to [python] '
                                  "(a release `uv python list --all-versions` shows)")
        return exact


def load_versions(path: Path) -> Versions:
    raw = read_toml(path, missing="versions file not found",
                    fix="[docker] versions in the stack names it, relative to the repo root "
                        "(default docker/versions.toml)")
    top = Table(raw, "", path, what="docker versions file", doc="docs/containers.md")
    schema = top.get("schema_version", int, required=True)
    if schema != SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {schema} is not supported "
                          f"(this tool reads {SCHEMA_VERSION})")
    py_table = top.sub("python", required=True)
    python = {}
    for key in list(py_table.data):
        exact = py_table.get(key, str)
        if not re.match(r"^3\.\d+$", key) or not re.match(rf"^{re.escape(key)}\.\d+$", exact):
            raise ConfigError(f"{path}: [python] \"{key}\" = \"{exact}\" must map a Python "
                              "minor to one of its releases, e.g. \"3.12\" = \"3.12.16\"")
        python[key] = exact
    py_table.finish()
    tools = top.sub("tools", required=True)
    nox = tools.get("nox", str, required=True)
    tools.finish()
    img_table = top.sub("images", required=True)
    images = {}
    for name in list(img_table.data):
        one = img_table.sub(name)
        pin = ImagePin(name=name, ref=one.get("ref", str, required=True),
                       pinned=one.get("pinned", str, required=True))
        one.finish()
        _check_pin(pin, path)
        images[name] = pin
    img_table.finish()
    top.finish()
    return Versions(path=path, python=python, nox=nox, images=images)


def _check_pin(pin: ImagePin, path: Path) -> None:
    if "@" in pin.ref or not _REF.match(pin.ref):
        raise ConfigError(f"{path}: [images.{pin.name}] ref '{pin.ref}' must be "
                          "registry/repository:tag (the digest goes into `pinned`)")
    if pin.pinned:
        tag, _, digest = pin.pinned.partition("@")
        if not _DIGEST.match(digest):
            raise ConfigError(f"{path}: [images.{pin.name}] pinned '{pin.pinned}' must be "
                              f"'{pin.ref}@sha256:<64 hex>'",
                              fix="run `nox -s update_images` (never edit digests by hand)")
        if tag != pin.ref:
            raise ConfigError(f"{path}: [images.{pin.name}] pinned is the digest of '{tag}', "
                              f"not of ref '{pin.ref}'",
                              why="the ref was edited by hand after its digest was recorded",
                              fix="run `nox -s update_images` on a machine that reaches the "
                                  "registry (or set pinned = \"\" to build by tag only)")


# ------------------------------------------------------------------ choosing bases


def build_flavour(stack: Stack) -> str:
    """A system toolkit comes with the image (devel); a pip toolkit needs only base."""
    return "devel" if stack.cuda_toolkit.source == "system" else "base"


def choose_cuda_image(stack: Stack, versions: Versions, flavour: str) -> ImagePin:
    """The nvidia/cuda image for this stack: CUDA major.minor equal to torch's CUDA (the
    runtime torch's wheels bring and the nvcc that compiled the wheels agree), inside the
    stack's toolkit range for devel images, the stack's distro; the newest release wins."""
    wanted = Version(stack.torch.cuda)
    toolkit = SpecifierSet(stack.cuda_toolkit.version)
    candidates = [c for c in versions.cuda_images()
                  if c.flavour == flavour and c.distro == stack.docker.distro
                  and c.cuda.release[:2] == wanted.release[:2]
                  and (flavour != "devel" or toolkit.contains(c.cuda))]
    if not candidates:
        have = ", ".join(sorted(c.pin.ref for c in versions.cuda_images())) or "none"
        raise ConfigError(
            f"{versions.path}: no nvidia/cuda {flavour} image for stack '{stack.name}' "
            f"(CUDA {stack.torch.cuda}.x, toolkit {stack.cuda_toolkit.version}, "
            f"{stack.docker.distro})",
            why=f"the image's CUDA must match torch {stack.torch.local_version}",
            fix=f"add [images.cuda-{wanted.major}-{wanted.minor}-{flavour}] ref = \"nvidia/cuda:"
                f"{stack.torch.cuda}.N-{flavour}-{stack.docker.distro}\" pinned = \"\" to "
                f"{versions.path}, then `nox -s update_images` (known: {have})")
    best = max(c.cuda for c in candidates)
    return next(c.pin for c in candidates if c.cuda == best)


# --------------------------------------------------------------- registry lookup


@dataclass(frozen=True)
class ImageRef:
    registry: str  # host[:port] to talk to
    repository: str
    tag: str

    @property
    def scheme(self) -> str:
        # Like docker itself: plain HTTP only for a registry on this machine.
        host = self.registry.split(":")[0]
        return "http" if host in ("localhost", "127.0.0.1") else "https"

    def manifest_url(self) -> str:
        return f"{self.scheme}://{self.registry}/v2/{self.repository}/manifests/{self.tag}"


def parse_ref(ref: str) -> ImageRef:
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        raise ConfigError(f"image ref '{ref}' has no tag")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = "registry-1.docker.io", name
        if "/" not in repository:
            repository = f"library/{repository}"
    if registry == "docker.io":
        registry = "registry-1.docker.io"
    return ImageRef(registry, repository, tag)


Fetch = Callable[[urllib.request.Request], tuple[int, Mapping[str, str], bytes]]


def _urlopen(request: urllib.request.Request) -> tuple[int, Mapping[str, str], bytes]:
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), b""


def _bearer_token(challenge: str, ref: ImageRef, fetch: Fetch) -> str:
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", "")
    if not challenge.lower().startswith("bearer") or not realm:
        raise SourceError(f"{ref.registry} asks for credentials ({challenge!r})",
                          fix="this lookup is anonymous; pin public images only")
    params.setdefault("scope", f"repository:{ref.repository}:pull")
    status, _headers, body = fetch(urllib.request.Request(
        f"{realm}?{urllib.parse.urlencode(params)}"))
    if status != 200:
        raise SourceError(f"{ref.registry}: token request failed (HTTP {status})")
    data = json.loads(body)
    token = data.get("token") or data.get("access_token")
    if not isinstance(token, str) or not token:
        raise SourceError(f"{ref.registry}: the token answer has no token")
    return token


def resolve_digest(image: str, fetch: Fetch = _urlopen) -> str:
    """The content digest the registry serves for `image` (registry/repository:tag), via
    the OCI distribution API: HEAD the manifest, anonymous bearer token on a 401."""
    ref = parse_ref(image)
    headers = {"Accept": MANIFEST_ACCEPT}
    token_used = False
    for _attempt in range(2):
        request = urllib.request.Request(ref.manifest_url(), method="HEAD", headers=headers)
        try:
            status, answer, _ = fetch(request)
        except (urllib.error.URLError, OSError) as exc:
            raise SourceError(f"cannot reach {ref.registry} for {image}: {exc}",
                              why="digests are looked up, never guessed",
                              fix="run `nox -s update_images` on a machine that reaches the "
                                  "registry; until then the images stay pinned by tag only"
                              ) from None
        if status == 401 and not token_used:
            lower = {k.lower(): v for k, v in answer.items()}
            token = _bearer_token(lower.get("www-authenticate", ""), ref, fetch)
            headers["Authorization"] = f"Bearer {token}"
            token_used = True
            continue
        if status == 404:
            raise SourceError(f"{image}: the registry has no such tag",
                              fix="check the ref in docker/versions.toml")
        if status != 200:
            raise SourceError(f"{image}: registry answered HTTP {status}")
        lower = {k.lower(): v for k, v in answer.items()}
        digest = lower.get("docker-content-digest", "")
        if not _DIGEST.match(digest):
            raise SourceError(f"{image}: the registry sent no usable Docker-Content-Digest "
                              f"({digest!r})")
        return digest
    raise SourceError(f"{image}: the registry refused the anonymous token")


# ---------------------------------------------------------------------- rewriting


def set_pinned(text: str, pins: Mapping[str, str], *, note: str = "") -> str:
    """Replace the `pinned = ...` line of each [images.NAME] table in `text` (comments
    and layout elsewhere stay as they are)."""
    out = []
    table = ""
    seen = set()
    for line in text.splitlines(keepends=True):
        header = re.match(r"^\s*\[([^\]]+)\]\s*(#.*)?$", line)
        if header:
            table = header.group(1).strip()
        name = table[len("images."):] if table.startswith("images.") else ""
        if name and name in pins and re.match(r"^\s*pinned\s*=", line):
            comment = f"  # {note}" if note and pins[name] else ""
            line = f'pinned = "{pins[name]}"{comment}\n'
            seen.add(name)
        out.append(line)
    missing = set(pins) - seen
    if missing:
        raise ConfigError(f"versions file: no `pinned = ...` line in [images.{sorted(missing)[0]}]")
    return "".join(out)


def write_atomically(files: Mapping[Path, str]) -> None:
    """Write every file to a temporary sibling first, then rename them all: a failure
    leaves the old files in place."""
    temps = []
    try:
        for path, text in files.items():
            tmp = temp_sibling(path)
            tmp.write_text(text, encoding="utf-8")
            temps.append((tmp, path))
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _path in temps:
            tmp.unlink(missing_ok=True)


def resolve_all(versions: Versions, names: list[str] | None, fetch: Fetch = _urlopen
                ) -> dict[str, str]:
    """name -> ref@digest for the chosen images (all by default); raises before anything
    is written if one lookup fails."""
    chosen = names or list(versions.images)
    unknown = [n for n in chosen if n not in versions.images]
    if unknown:
        raise ConfigError(f"no image {unknown[0]} in {versions.path}",
                          fix="known: " + ", ".join(versions.images))
    pins = {}
    for name in chosen:
        ref = versions.images[name].ref
        pins[name] = f"{ref}@{resolve_digest(ref, fetch)}"
    return pins


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())
