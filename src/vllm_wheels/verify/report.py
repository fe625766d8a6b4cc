"""The verify_abi report and the results kept beside the wheels: their JSON shapes (one
place), the reader other stages use (publishing refuses a wheel without a passing result;
trials read the verdict) and the one writer of the results beside the wheels.

A run's report (`verify-abi --json F`), schema_version 1:
    {
      "schema_version": 1,
      "tool": "vllm-wheels verify-abi",
      "created": "2026-11-27T14:00:00Z",
      "passed": true,                      # every check of every wheel passed
      "runtime": {...facts of the runtime environment...},
      "wheels": [
        {"filename": "vllm-0.11.2+cu128...whl", "sha256": "<hex>", "passed": true,
         "status": "pass" | "fail" | "unknown",
         "facts_from": "manifest" | "wheel",
         "checks": [{"name": "torch-version", "status": "pass"|"fail"|"n/a"|"unknown",
                     "summary": "...", "evidence": {...}, "fix": "..."}]}
      ]
    }

The results beside the wheels (DIR/verify-abi.json), schema_version 2: the latest
conclusive result (pass or fail) of every wheel in DIR, keyed by its sha256, each with the
runtime and time of the run that produced it:
    {
      "schema_version": 2,
      "tool": "vllm-wheels verify-abi",
      "updated": "2026-11-27T14:00:00Z",
      "passed": true,                      # every result listed passed
      "results": {
        "<sha256>": {...the wheel entry of schema 1..., "checked": "<created of its run>",
                     "runtime": {...}, "arch_targets": [...]}
      }
    }
A run merges into it (record_results): a wheel's entry changes only when a run reached a
verdict on those exact bytes, so a run over other files, a run that could not check, or a
file that was not rebuilt never loses a pass. The gate reads either shape.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import layout
from ..build.sources import sha256_file
from ..cache import write_atomic
from ..errors import CannotCheckError

REPORT_SCHEMA_VERSION = 1  # one run's report
RESULTS_SCHEMA_VERSION = 2  # the results kept beside the wheels, keyed by sha256
REPORT_FILENAME = layout.VERIFY_REPORT_FILENAME  # the results beside the wheels they cover
CONCLUSIVE = ("pass", "fail")


def read_results(report_path: Path) -> dict[str, dict[str, Any]]:
    """sha256 -> the latest result for those bytes, from a run's report (schema 1) or the
    results beside the wheels (schema 2). Each result has at least filename, sha256,
    passed and status."""
    try:
        data = json.loads(report_path.read_text())
    except FileNotFoundError as exc:
        raise CannotCheckError(
            f"no verify_abi report at {report_path}",
            why="only wheels that passed verify_abi may be used/published",
            fix="run `nox -s verify_abi -- --wheels <dir>` first",
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CannotCheckError(f"verify_abi report {report_path} is unreadable: {exc}",
                               fix="re-run `nox -s verify_abi`") from exc
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version == REPORT_SCHEMA_VERSION:
        return {w["sha256"]: _as_result(w, data) for w in data.get("wheels", [])}
    if version == RESULTS_SCHEMA_VERSION:
        return {sha: _as_result(r, {}) for sha, r in data.get("results", {}).items()}
    raise CannotCheckError(
        f"verify_abi report {report_path} has schema_version {version!r}, expected "
        f"{REPORT_SCHEMA_VERSION} (a run's report) or {RESULTS_SCHEMA_VERSION} (the results "
        "beside the wheels)",
        fix="re-run `nox -s verify_abi` with this version of the pipeline")


def _as_result(wheel: Mapping[str, Any], run: Mapping[str, Any]) -> dict[str, Any]:
    """A wheel entry with its run's facts attached (schema 1 keeps them once per run;
    entries written before `status` existed have only `passed`)."""
    result = dict(wheel)
    result.setdefault("status", "pass" if wheel.get("passed") else "fail")
    result["passed"] = bool(wheel.get("passed"))
    for key, run_key in (("checked", "created"), ("runtime", "runtime"),
                         ("arch_targets", "arch_targets")):
        if key not in result and run_key in run:
            result[key] = run[run_key]
    return result


def passing_wheels(report_path: Path) -> dict[str, str]:
    """filename -> sha256 of every wheel that passed in this report.

    A wheel counts as verified only under the exact sha256 that was checked: a file
    rebuilt under the same name is not covered by an older report.
    """
    return {r["filename"]: sha for sha, r in read_results(report_path).items() if r["passed"]}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialize writers of one folder's results (two verify runs, or a build and a
    verify run): flock on the folder itself, so nothing extra lands beside the wheels;
    the kernel releases it when the holder dies."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def record_results(folder: Path, run: Mapping[str, Any]) -> Path:
    """Merge a run's report (schema 1, as abi.Report.to_dict gives it) into
    folder/verify-abi.json and return its path.

    Only conclusive per-wheel results (pass or fail) are recorded: a wheel the run could
    not check keeps its earlier result. Results of wheels no longer in the folder (by
    sha256) are dropped, so the file says what the folder holds and nothing else."""
    target = folder / REPORT_FILENAME
    with _locked(folder):
        try:
            results = read_results(target)
        except CannotCheckError:
            # Missing, unreadable or of an unknown schema: nothing to keep from it (the
            # gate would not have trusted it either).
            results = {}
        for wheel in run.get("wheels", []):
            entry = _as_result(wheel, run)
            if entry["status"] in CONCLUSIVE:
                results[entry["sha256"]] = entry
        present = {sha256_file(p) for p in folder.glob("*.whl") if not p.name.startswith(".")}
        kept = {sha: r for sha, r in results.items() if sha in present}
        ordered = dict(sorted(kept.items(), key=lambda item: (item[1]["filename"], item[0])))
        data = {"schema_version": RESULTS_SCHEMA_VERSION, "tool": "vllm-wheels verify-abi",
                "updated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "passed": bool(ordered) and all(r["passed"] for r in ordered.values()),
                "results": ordered}
        write_atomic(target, json.dumps(data, indent=2) + "\n")
    return target
