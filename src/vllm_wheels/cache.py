"""The content-addressed cache: downloads by sha256, prepared source trees by a key of
everything that shapes them, external sources by name and ref, build venvs by their pins.

Every entry is written to a temporary sibling and renamed into place, so an interrupted
run never leaves a half-written entry that a later run would trust.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import DiskFullError

# The machine-wide build root (see build_root).
BUILD_ROOT_ENV = "VLLM_WHEELS_BUILD_ROOT"


def build_root() -> Path:
    """Where builds with a shared (remote) compile cache put their source trees, and where
    compiles find their prefix-map spec files (builders.prefix_specs_path): one fixed place
    per machine, $VLLM_WHEELS_BUILD_ROOT or /var/tmp/vllm-wheels-<uid>, not under the
    cache dir. nvcc writes the real path of every .cu it compiles on its front ends'
    command lines (cicc, cudafe++), which a compile cache hashes verbatim, so only builders
    whose trees are at the same path share those objects; a team sets the same root (and
    runs as the same user, or sets the variable) on every builder."""
    env = os.environ.get(BUILD_ROOT_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return Path(f"/var/tmp/vllm-wheels-{os.getuid()}")


@contextlib.contextmanager
def lock_file(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` (created) for the block: yields True when held. With
    wait=False it yields False at once when another process holds it (the block runs
    without the lock and must act accordingly). The kernel releases it if we die."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_cache_root() -> Path:
    env = os.environ.get("VLLM_WHEELS_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base) / "vllm-wheels").resolve()


@dataclass(frozen=True)
class Cache:
    root: Path

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def sources(self) -> Path:
        return self.root / "src"

    def tree_parent(self, shared: bool) -> Path:
        """Where prepared source trees (and their in-tree build dirs) live: under the cache
        dir, or, for builds with a shared compile cache, under the machine-wide build root
        (build_root()), so that every builder compiles at the same paths."""
        return build_root() / "src" if shared else self.sources

    @contextlib.contextmanager
    def tree_lock(self, tree: Path) -> Iterator[None]:
        """The lock of one prepared tree: beside it (in the cache's or the build root's
        locks/), so that builds with other cache dirs also take turns on a shared tree."""
        with lock_file(tree.parent.parent / "locks" / f"src-{tree.name}.lock"):
            yield

    @property
    def externals(self) -> Path:
        return self.root / "externals"

    @property
    def venvs(self) -> Path:
        return self.root / "venvs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def download_path(self, sha256: str, filename: str) -> Path:
        return self.downloads / "sha256" / sha256[:2] / sha256 / filename

    def compile_cache_dir(self, tool: str) -> Path:
        return self.root / tool

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive lock so two builds do not fill the same entry at once."""
        with lock_file(self.root / "locks" / f"{name}.lock"):
            yield


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether a process exists (for temporary names carrying their writer's pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def raise_if_disk_full(exc: BaseException, dest: Path, *,
                       why: str = "the partial file was removed", fix: str = "") -> None:
    """Turn ENOSPC into DiskFullError (exit 7); any other exception is left to the caller."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        raise DiskFullError(f"disk full while writing {dest}", why=why,
                            fix=fix or f"free space on the filesystem of {dest.parent}, "
                                       "then run the command again") from None


def write_atomic(dest: Path, data: bytes | str, *,
                 disk_full_why: str = "the partial file was removed; the old one is intact",
                 disk_full_fix: str = "") -> None:
    """Write to a temporary sibling, then rename over `dest`: readers see the old file or
    the new one, never a part. The temporary file is removed on any failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(dest)
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, dest)
    except BaseException as exc:
        remove(tmp)
        raise_if_disk_full(exc, dest, why=disk_full_why, fix=disk_full_fix)
        raise


def remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def publish_dir(tmp: Path, final: Path) -> None:
    """Atomically move a finished directory into place (replacing an older one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        remove(old)
    else:
        tmp.rename(final)
