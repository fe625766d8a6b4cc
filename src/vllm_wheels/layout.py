"""Where things are: the one place that knows the repository layout and the names of the
files the pipeline leaves behind.

- the checkout: its root (`repo_root`), the default stack, the wheels of each stack
  (wheels/<stack>/, and wheels/<stack>/<target>/ per GPU target), the wheel index
  (wheels/index/, and one root <index>/<target>/ per target), the trial reports
  (verify/trials/)
- the package: its helper programs (vllm_wheels/helpers/, run inside other venvs)
- marker and report file names, written by one stage and read by another

Every module asks here instead of joining `root / "wheels" / name` itself, so a stack
named like a reserved directory (`index`) is refused in one place (`check_stack_name`).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
# Programs run with another venv's interpreter (real files: ruff and mypy see them).
HELPERS_DIR = PACKAGE_DIR / "helpers"

# ------------------------------------------------------------------ the checkout

# The stack every command uses unless --stack names another, relative to the repository.
DEFAULT_STACK = "build/stack.toml"
# wheels/<stack>/: the verified wheels of one stack; wheels/index/: the wheel index.
WHEELS_DIR = "wheels"
INDEX_DIR = Path(WHEELS_DIR) / "index"
# Directories under wheels/ that are not a stack's wheels: a stack of that name would
# build into (and its publish step would overwrite) one of them.
RESERVED_STACK_NAMES = frozenset({INDEX_DIR.name})
# The trial's reports (markdown + JSON), kept in the repository.
TRIALS_DIR = Path("verify") / "trials"
# Unit cost records measured on real build hosts and committed with the stacks, so a first
# build on a fresh machine orders its units and sizes its jobs from measured costs
# (build/unit-costs/<package>-<version>-<arch list digest>.json, the cache record's name).
UNIT_COSTS_DIR = Path("build") / "unit-costs"


def repo_root(near: Path | None = None) -> Path:
    """The checkout the command runs in: the nearest directory holding noxfile.py and
    build/, looking from `near` (e.g. the stack file given: its paths are relative to its
    checkout, from whatever directory the command runs in) and its parents first, then
    from the current directory; the current directory when there is none."""
    here = Path.cwd()
    starts = [near.resolve(), here] if near is not None else [here]
    for start in starts:
        for candidate in (start, *start.parents):
            if (candidate / "noxfile.py").exists() and (candidate / "build").is_dir():
                return candidate
    return here


def default_stack(root: Path) -> Path:
    return root / DEFAULT_STACK


def check_stack_name(name: str, where: str = "the stack") -> str:
    """A stack's name names its wheels directory: one that collides with a reserved
    directory under wheels/ is refused (ConfigError, exit 2)."""
    if name in RESERVED_STACK_NAMES:
        raise ConfigError(
            f"{where}: the stack name '{name}' is reserved",
            why=f"a stack's wheels go to {WHEELS_DIR}/<name>/, and {WHEELS_DIR}/{name}/ is "
                "the pipeline's own directory (" + ", ".join(
                    f"{WHEELS_DIR}/{n}/" for n in sorted(RESERVED_STACK_NAMES)) + ")",
            fix=f"rename the stack: name = \"{name}-stack\" or any name but "
                + ", ".join(sorted(RESERVED_STACK_NAMES)))
    return name


def wheels_dir(root: Path, stack_name: str) -> Path:
    """wheels/<stack>/ of the checkout: where build_wheels publishes and the later stages
    read by default."""
    return root / WHEELS_DIR / check_stack_name(stack_name)


def index_dir(root: Path) -> Path:
    """The local wheel index (the directory `publish` writes and `serve-index` serves)."""
    return root / INDEX_DIR


# ------------------------------------------------------------- GPU targets of a stack

# A target's name is a directory (wheels/<stack>/<target>/, <index>/<target>/) and a URL
# path segment (<base>/<target>/simple/): lowercase, no dots, no slashes.
TARGET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# The entries of an index root (index/store.py: IndexDir), which a target's root sits
# beside in the same directory, and `--targets all`.
RESERVED_TARGET_NAMES = frozenset({"files", "generations", "current", "simple", "all"})


def check_target_name(name: str, where: str = "the target") -> str:
    """A target's name, or ConfigError (exit 2) for one that is not a plain lowercase name
    or collides with an index root's own entries."""
    if not TARGET_NAME.match(name):
        raise ConfigError(f"{where}: the target name '{name}' is not a plain lowercase name",
                          why="it names a directory and a URL path segment of the index",
                          fix="use lowercase letters, digits, _ and -, e.g. sm120 or sm90a")
    if name in RESERVED_TARGET_NAMES:
        raise ConfigError(f"{where}: the target name '{name}' is reserved",
                          why="an index root holds " + ", ".join(
                              sorted(RESERVED_TARGET_NAMES - {"all"})) + ", and --targets "
                              "all means every target",
                          fix=f"rename the target, e.g. {name}-gpu or sm120")
    return name


def target_dir(base: Path, target: str) -> Path:
    """A target's directory under a stack's: wheels/<stack>/<target>/ for its wheels (or
    under --output-dir), <index>/<target>/ for its index root."""
    return base / check_target_name(target)


def target_wheels_dir(root: Path, stack_name: str, target: str) -> Path:
    """wheels/<stack>/<target>/: one target's verified wheels."""
    return target_dir(wheels_dir(root, stack_name), target)


def target_index_dir(index: Path, target: str) -> Path:
    """<index>/<target>/: a target's index root, a whole index of its own (pages, files,
    generations, lock), so publishing into it is gated, atomic and immutable as any
    index is; clients read <base>/<target>/simple/."""
    return target_dir(index, target)


def staging_dir(staging: Path, stack_name: str, target: str | None = None) -> Path:
    """Where a build of the stack (or of one of its targets) stages its raw and
    relabelled wheels before they are verified."""
    base = staging / stack_name
    return base if target is None else target_dir(base, target)


def trials_dir(root: Path) -> Path:
    return root / TRIALS_DIR


def helper(name: str) -> Path:
    """A helper program of vllm_wheels/helpers/, e.g. helper("import_smoke.py")."""
    return HELPERS_DIR / name


# ---------------------------------------------------------- files the stages leave

# Beside the wheels (wheels/<stack>/): the build's facts that the wheels leave out, and
# the verify_abi results per sha256 (verify.report).
SUMMARY_FILENAME = "build-summary.json"
TELEMETRY_FILENAME = "build-telemetry.json"
VERIFY_REPORT_FILENAME = "verify-abi.json"
# In a build venv: what it was made from (a venv without it is unfinished).
VENV_MARKER = "vllm-wheels-venv.json"
# In a pip-assembled CUDA_HOME: the toolkit version it was made from.
CUDA_HOME_MARKER = ".vllm-wheels-cuda-home"
# In a prepared (unpacked, patched, pins stripped) source tree.
PREPARED_MARKER = ".vllm-wheels-prepared.json"
# In a cached git checkout of an external source: the commit it holds.
COMMIT_MARKER = ".vllm-wheels-commit"
# In a CMake build dir: the stamps that order recorded units longest first.
ORDER_DIR = ".vllm-wheels-order"
# In a trial's unpacked source: the tree as released, before any patch.
PRISTINE_MARKER = ".vllm-wheels-pristine"
# In a verify_throughput candidate venv: the wheels and torch it holds.
CANDIDATE_MARKER = "vllm-wheels-candidate.json"
