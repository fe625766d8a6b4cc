"""The verify_abi report: its JSON shape (one place) and the reader other stages use
(publishing refuses a wheel without a passing result; trials read the verdict).

Shape, schema_version 1:
    {
      "schema_version": 1,
      "tool": "vllm-wheels verify-abi",
      "created": "2026-11-27T14:00:00Z",
      "passed": true,                      # every check of every wheel passed
      "runtime": {...facts of the runtime environment...},
      "wheels": [
        {"filename": "vllm-0.11.2+cu128...whl", "sha256": "<hex>", "passed": true,
         "facts_from": "manifest" | "wheel",
         "checks": [{"name": "torch-version", "status": "pass"|"fail"|"n/a",
                     "summary": "...", "evidence": {...}, "fix": "..."}]}
      ]
    }
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CannotCheckError

REPORT_SCHEMA_VERSION = 1
REPORT_FILENAME = "verify-abi.json"  # written beside the wheels it covers


def passing_wheels(report_path: Path) -> dict[str, str]:
    """filename -> sha256 of every wheel that passed in this report.

    A wheel counts as verified only under the exact sha256 that was checked: a file
    rebuilt under the same name is not covered by an older report.
    """
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
    if data.get("schema_version") != REPORT_SCHEMA_VERSION:
        raise CannotCheckError(
            f"verify_abi report {report_path} has schema_version "
            f"{data.get('schema_version')!r}, expected {REPORT_SCHEMA_VERSION}",
            fix="re-run `nox -s verify_abi` with this version of the pipeline")
    return {w["filename"]: w["sha256"] for w in data.get("wheels", []) if w.get("passed")}
