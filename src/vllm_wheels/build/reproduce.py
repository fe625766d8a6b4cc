"""build_wheels --verify-reproducible: build the same plan a second time from clean source
trees in a second cache directory (as a second builder would: other paths, an empty
compile cache, so every object is really recompiled) and compare the wheels byte for byte.

Shared with the first build: the build venv (the same toolchain; 6 GB not made twice) and
the downloaded sdists and external sources (inputs, verified by sha256 or commit). Nothing
that the build writes is shared. When a wheel differs, each differing member is named with
the most likely reason, read from the two files.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import layout
from ..cache import Cache, remove
from ..errors import NotReproducibleError
from ..log import Reporter
from . import pipeline, remote_cache
from .output import BuiltWheel
from .plan import Plan, make_plan

# Inputs fetched once and verified (sha256, commit): reused by the second build.
SHARED_INPUTS = ("downloads", "externals")


@dataclass(frozen=True)
class MemberDiff:
    name: str
    why: str


def _members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    return {i.filename: i for i in zf.infolist()}


def _json_diff(a: bytes, b: bytes, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON documents."""
    def walk(x: object, y: object, key: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            out: list[str] = []
            for k in sorted(set(x) | set(y), key=str):
                out += walk(x.get(k), y.get(k), f"{key}.{k}" if key else str(k))
            return out
        return [] if x == y else [key or "(document)"]
    try:
        return walk(json.loads(a), json.loads(b), prefix)
    except ValueError:
        return []


def explain(name: str, a: bytes, b: bytes, paths: tuple[Path, ...]) -> str:
    """Why one member differs: a build path inside it, a differing manifest field, or
    (failing those) the compiler's output itself."""
    for path in paths:
        needle = str(path).encode()
        if needle and (needle in a or needle in b):
            return (f"contains the build path {path} (a path prefix the compilers were not "
                    "told to map: -ffile-prefix-map)")
    pattern = re.compile(rb"_(?:GLOBAL__N__|INTERNAL_)([0-9a-f]{8})_")
    if set(pattern.findall(a)) != set(pattern.findall(b)):
        return ("nvcc's names of internal-linkage device entities (_GLOBAL__N__/_INTERNAL_ "
                "hash) differ: nvcc hashes the source file's absolute path, which "
                "helpers/nvcc_source_path.py maps; a compile that bypassed it")
    if name.endswith(".json"):
        keys = _json_diff(a, b)
        if keys:
            return "JSON fields differ: " + ", ".join(keys[:10])
    if name.endswith("/RECORD"):
        return "lists the hashes of the differing members"
    return (f"contents differ ({len(a)} vs {len(b)} bytes, sha256 "
            f"{hashlib.sha256(a).hexdigest()[:12]} vs {hashlib.sha256(b).hexdigest()[:12]}): "
            "something time- or host-dependent in the compiled output; compare with "
            "`diffoscope` for details")


def compare_wheels(first: Path, second: Path, build_paths: tuple[Path, ...] = ()
                   ) -> list[MemberDiff]:
    """Every difference between two wheels: members only in one, members whose bytes
    differ (with why), and zip-level differences (order, timestamps, modes)."""
    diffs: list[MemberDiff] = []
    with zipfile.ZipFile(first) as za, zipfile.ZipFile(second) as zb:
        ma, mb = _members(za), _members(zb)
        for name in sorted(set(ma) - set(mb)):
            diffs.append(MemberDiff(name, "only in the first build"))
        for name in sorted(set(mb) - set(ma)):
            diffs.append(MemberDiff(name, "only in the second build"))
        for name in sorted(set(ma) & set(mb)):
            ia, ib = ma[name], mb[name]
            if ia.CRC != ib.CRC or ia.file_size != ib.file_size or \
                    za.read(name) != zb.read(name):
                diffs.append(MemberDiff(name, explain(name, za.read(name), zb.read(name),
                                                      build_paths)))
            elif ia.date_time != ib.date_time:
                diffs.append(MemberDiff(name, f"zip timestamp {ia.date_time} vs {ib.date_time}"))
            elif ia.external_attr != ib.external_attr:
                diffs.append(MemberDiff(name, f"file mode {ia.external_attr >> 16:o} vs "
                                              f"{ib.external_attr >> 16:o}"))
        common = [n for n in ma if n in mb]
        if not diffs and common != [n for n in mb if n in ma]:
            diffs.append(MemberDiff("(zip)", "the members are stored in another order"))
    if not diffs and first.read_bytes() != second.read_bytes():
        diffs.append(MemberDiff("(zip)", "same members, other zip encoding (compression "
                                         "level or zlib version)"))
    return diffs


def second_cache(cache: Cache) -> Cache:
    """A clean second cache directory whose build inputs are the first one's."""
    root = cache.root / "reproduce"
    remove(root)
    root.mkdir(parents=True)
    for name in SHARED_INPUTS:
        target = cache.root / name
        target.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(target)
    return Cache(root)


def compare_outputs(first: dict[str, Path], second: dict[str, Path],
                    build_paths: tuple[Path, ...], reporter: Reporter) -> None:
    """Raise NotReproducibleError naming every wheel and member that differs."""
    problems: list[str] = []
    for name in sorted(set(first) | set(second)):
        a, b = first.get(name), second.get(name)
        if a is None or b is None:
            problems.append(f"{name}: only built by the {'second' if a is None else 'first'} "
                            "build")
            continue
        diffs = compare_wheels(a, b, build_paths)
        if diffs:
            problems.append(f"{name}: {len(diffs)} member(s) differ")
            problems += [f"    {d.name}: {d.why}" for d in diffs[:40]]
            if len(diffs) > 40:
                problems.append(f"    ... and {len(diffs) - 40} more")
        else:
            reporter.say(f"    reproducible: {name} (byte-identical)")
    if problems:
        tool = shutil.which("diffoscope")
        raise NotReproducibleError(
            "the rebuild from clean trees gave different wheels:\n"
            + "\n".join("    " + p for p in problems),
            why="the same stack, sources and toolchain must give the same bytes, or two "
                "builders cannot confirm each other's wheels and a re-publish is refused",
            fix=("compare the two wheels member by member: "
                 + (f"`{tool} FIRST SECOND`" if tool else "`pip install diffoscope`, then "
                    "`diffoscope FIRST SECOND`")
                 + "; a build path inside an object needs a -ffile-prefix-map (builders/base.py "
                   "prefix_map), a timestamp needs SOURCE_DATE_EPOCH"))


def verify(plan: Plan, first: list[BuiltWheel], reporter: Reporter, *,
           fetch_externals: bool = True) -> list[BuiltWheel]:
    """Build `plan` again in a clean second cache directory and compare with `first`
    (the wheels the first build published). Raises NotReproducibleError."""
    cache = second_cache(plan.cache)
    reporter.say(f"==> verify reproducible: the same plan again from clean source trees in "
                 f"{cache.root} (build venv {plan.venv_path} and downloads shared, empty "
                 "compile cache)")
    again = make_plan(
        plan.stack, repo_root=plan.repo_root, cache=cache, output_dir=cache.root / "wheels",
        log_path=plan.log_path, reporter=reporter, fetch_externals=False,
        # Full width from a unit cost record is safe only under its memory budget: the
        # second cache has no record, so the rule chooses there.
        max_jobs=None if plan.parallelism.source == "record" else plan.parallelism.jobs,
        nvcc_threads=plan.parallelism.nvcc_threads,
        build_venv=plan.venv_path, only=[p.spec.name for p in plan.packages],
        # No remote: an empty compile cache, and clean trees in the second cache (with a
        # remote, trees live in the machine-wide build root: the first build's own).
        compile_cache_remote=remote_cache.OFF)
    # The second build's steps are numbered as the first build's were.
    reporter.plan_steps(pipeline.total_steps(len(again.packages)), done=pipeline.PLANNING_STEPS)
    second = pipeline.build(again, reporter, build_venv=plan.venv_path,
                            fetch_externals=fetch_externals)
    compare_outputs({w.path.name: w.path for w in first}, {w.path.name: w.path for w in second},
                    (plan.cache.root, cache.root, plan.venv_path, plan.repo_root), reporter)
    reporter.say(f"    reproducible: {len(first)} wheel(s) byte-identical across two builds "
                 f"(second build's summary: {cache.root / 'wheels' / layout.SUMMARY_FILENAME})")
    return second
