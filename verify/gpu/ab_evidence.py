#!/usr/bin/env python3
"""An ab_official.sh lease's evidence (the unpacked ab-official.tar.gz) as committed under
verify/results/<date>-ab-official/<lease>/: the same files, with no machine paths and no
time stamps in the reports.

    python3 verify/gpu/ab_evidence.py EVIDENCE_DIR DEST_DIR [W]   (W default /tmp/abo)

- results/<step>/<stamp>/{report.md,result.json} -> results/<step>/ (one run per step);
  result.json loses "started" and "elapsed_s", report.md its "took ..., started ..." line;
- results/<step>.txt (the harness's console), <step>.host-*.json, steps.log, machine.txt,
  venvs.txt, gpu-clocks.csv, servers/*.cmd, prepare/*: copied as they are; servers/*.log
  without uvicorn's access line per request (a count line instead);
- every text file: W (the lease's state directory) becomes "$W", and a quoted path into the
  lease's checkout (".../verify/...") becomes repository-relative.
Idempotent: DEST_DIR's files are rewritten, none outside it is touched."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

TOOK = re.compile(r"^- took [0-9.]+ min, started \S+\n", re.M)


# The checkout the lease ran from (a workload's path names it): repository-relative instead.
REPO_PATH = re.compile(r'(?<=")/[^"]*?/(?=(verify|build|src)/)')


def scrub(text: str, w: str) -> str:
    return REPO_PATH.sub("", text.replace(w, "$W"))


ACCESS = re.compile(r'^\(APIServer pid=\d+\) INFO: +127\.0\.0\.1:\d+ - "(GET|POST) ')


def trim_access_log(text: str) -> str:
    """A server log without uvicorn's line per request (thousands in a lease; the harness
    counts requests itself): the first two are kept, the rest become one count line."""
    out, dropped = [], 0
    for line in text.splitlines(keepends=True):
        if ACCESS.match(line):
            dropped += 1
            if dropped > 2:
                continue
        out.append(line)
    if dropped > 2:
        out.append(f"[ab_evidence.py: {dropped - 2} more request lines of uvicorn's access "
                   "log left out]\n")
    return "".join(out)


def copy_text(src: Path, dest: Path, w: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(scrub(src.read_text(errors="replace"), w))


def main(evidence: Path, dest: Path, w: str) -> int:
    if not (evidence / "steps.log").exists() and not (evidence / "prepare").exists():
        print(f"ab_evidence: {evidence} holds no steps.log or prepare/: not an unpacked "
              "ab-official.tar.gz (its evidence/ directory)", file=sys.stderr)
        return 2
    for path in sorted(evidence.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(evidence)
        parts = rel.parts
        if parts[0] == "results" and len(parts) == 4:           # results/step/stamp/file
            if path.name == "result.json":
                data = json.loads(path.read_text())
                data.pop("started", None)
                data.pop("elapsed_s", None)
                out = dest / "results" / parts[1] / "result.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(scrub(json.dumps(data, indent=1, sort_keys=True), w) + "\n")
            elif path.name == "report.md":
                copy_text(path, dest / "results" / parts[1] / "report.md", w)
                out = dest / "results" / parts[1] / "report.md"
                out.write_text(TOOK.sub("", out.read_text()))
            continue                                              # plots, harness logs
        if parts[0] == "servers" and path.suffix == ".log":
            copy_text(path, dest / rel, w)
            out = dest / rel
            out.write_text(trim_access_log(out.read_text()))
        elif path.suffix in (".log", ".txt", ".json", ".csv", ".cmd"):
            copy_text(path, dest / rel, w)
        else:
            shutil.copy2(path, dest / rel)
    print(f"ab_evidence: {dest}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]),
                  sys.argv[3] if len(sys.argv) == 4 else "/tmp/abo"))
