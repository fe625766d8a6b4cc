"""The trial report: one JSON document (schema_version 2) and its markdown rendering,
written side by side into verify/trials/. The markdown is built from the JSON only, so
the two never disagree and a saved trial renders the same after a resume.

Both are committed, so they hold only what the trial found: a trial of the same inputs
gives the same bytes. What changes from run to run (when it ran, how long each stage
took, its log, whether the plan was reused, paths on this machine) goes into the run
file next to them (NAME.run.json, git-ignored) and the log; paths under the repository,
the cache or the home directory that reach the report through messages are written
relative, as <cache>/... or as ~/...
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cache import write_atomic
from .stages import NO_GPU, STAGES, StageResult, StageStatus

# 2: times, durations, logs and machine paths moved to the run file.
REPORT_SCHEMA_VERSION = 2
RUN_SCHEMA_VERSION = 1
PATCH_STATUS = {"applies": "applies cleanly",
                "already-applied": "already upstream (reverse-applies)",
                "conflicts": "CONFLICTS"}
EARLIER_RUN = "(from an earlier run of this trial)"
# A stage's facts that belong to one run, not to the trial (the run file keeps them).
RUN_STAGE_KEYS = ("seconds", "finished", "reused", "log", "command", "outputs")


def run_path(json_path: Path) -> Path:
    """The run file beside the JSON report: trial-vllm-0.12.0.json -> .run.json."""
    return json_path.with_name(json_path.stem + ".run.json")


def _scrubbed(value: Any, prefixes: Sequence[tuple[str, str]]) -> Any:
    """`value` with machine paths in its strings rewritten (longest prefix first)."""
    if isinstance(value, str):
        for prefix, shown in prefixes:
            value = value.replace(prefix, shown)
        return value
    if isinstance(value, Mapping):
        return {k: _scrubbed(v, prefixes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v, prefixes) for v in value]
    return value


def build_report(plan: Mapping[str, Any], results: Mapping[str, StageResult], *,
                 requested: Sequence[str], gpu: bool, repo_root: Path, cache_root: Path,
                 state_file: Path, state_note: str, report_md: Path, report_json: Path
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the report, the run file): the first the same for the same inputs, the second
    this run's times, durations, logs and paths."""
    stages, run_stages = [], []
    for name in STAGES:
        result = results.get(name)
        if result is not None:
            entry = result.to_dict()
            if name not in requested and not result.reused:
                entry["detail"] = (entry["detail"] + " " if entry["detail"] else "") + \
                    EARLIER_RUN
        elif name == "throughput" and not gpu:
            entry = StageResult(name, StageStatus.NOT_RUN, detail=NO_GPU).to_dict()
        else:
            entry = StageResult(name, StageStatus.NOT_REQUESTED,
                                detail=f"not requested (--stages {','.join(requested)})").to_dict()
        stages.append({k: v for k, v in entry.items() if k not in RUN_STAGE_KEYS})
        run_stages.append({"name": name, **{k: entry[k] for k in RUN_STAGE_KEYS}})
    body = {k: v for k, v in plan.items() if k != "seconds"}
    releases = body.get("releases")
    if isinstance(releases, Mapping):  # a pristine tree's path in the cache (older plans)
        body["releases"] = {side: {pkg: {k: v for k, v in facts.items() if k != "tree"}
                                   for pkg, facts in by_pkg.items()}
                            for side, by_pkg in releases.items()}
    # Directories as prefixes ("DIR/"), longest first: a cache under the home directory
    # is <cache>/..., not ~/.cache/...
    prefixes = [(f"{Path(repo_root).resolve()}/", ""), (f"{Path(cache_root).resolve()}/",
                                                         "<cache>/")]
    if str(Path.home()) not in ("", "/"):
        prefixes.append((f"{Path.home()}/", "~/"))
    prefixes.sort(key=lambda item: -len(item[0]))
    report = _scrubbed({
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "vllm-wheels trial",
        "trial": {"name": f"trial-vllm-{plan['request']['vllm']}",
                  "stages_requested": list(requested), "gpu": gpu,
                  "run_file": run_path(report_json).name},
        **body,
        "stages": stages,
    }, prefixes)
    run = {
        "schema_version": RUN_SCHEMA_VERSION,
        "kind": "vllm-wheels trial run",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "state_file": str(state_file), "state": state_note,
        "report_markdown": str(report_md), "report_json": str(report_json),
        "plan_seconds": plan.get("seconds"),
        "stages": run_stages,
    }
    return report, run


def _cell(text: Any) -> str:
    return str(text if text not in (None, "") else "-").replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    req = report["request"]
    cur, cand = report["current_stack"], report["candidate_stack"]
    vllm_row = next(r for r in report["pins"] if r["item"] == "vllm")
    torch = report["torch"]
    out = [f"# Upgrade trial: vLLM {vllm_row['current']} -> {req['vllm']}", "",
           f"- Current stack: `{cur['file']}` ({cur['name']}: {cur['description']})",
           f"- Candidate stack: `{cand['file']}` ({cand['description']})"
           + (f"; LEAVES OUT {', '.join(cand['left_out'])} (could not be read: set them before "
              "building)" if cand.get("left_out") else ""),
           "- Request: " + " ".join(f"`{k}=={v}`" for k, v in req.items() if v),
           f"- Stages requested: {', '.join(report['trial']['stages_requested'])} (when it "
           f"ran, durations and logs: `{report['trial']['run_file']}`, not committed)", "",
           "## Verdict", "",
           f"- **torch {torch['verdict']}**: {torch['message']}"]
    if torch["risk"]:
        out.append(f"- **Risk**: {torch['risk']}")
    ready = report["promotion"]["ready"]
    out.append(f"- **Ready to promote**: {'yes' if ready else 'no'}"
               + ("" if ready else f" ({len(report['blockers'])} blocker(s) below)"))
    for blocker in report["blockers"]:
        out.append(f"  - BLOCKER: {blocker}")
    for warning in report["warnings"]:
        out.append(f"  - warning: {warning}")
    for stage in report["stages"]:
        if stage["status"] in (StageStatus.FAILED, StageStatus.INTERRUPTED):
            out.append(f"  - stage {stage['name']} {stage['status']}: {stage['detail']}")

    out += ["", "## Pins", ""]
    out += _table(["", "current", "candidate", "change", "note"],
                  [[r["item"], r["current"], r["candidate"], r["change"], r["note"]]
                   for r in report["pins"]])
    if torch["expected_where"]:
        out += ["", f"The candidate pins torch {torch['expected']} in: "
                + "; ".join(f"`{w}`" for w in torch["expected_where"]) + "."]

    out += ["", "## External sources (vLLM's CMake FetchContent)", ""]
    rows = []
    for e in report["externals"]:
        a, b = e["current"], e["candidate"]
        rows.append([e["name"], a["short"] if a else None, b["short"] if b else None,
                     e["change"], b["override_env"] if b else None,
                     (b["declared_in"] if b else a["declared_in"] if a else ""),
                     e["note"] + (" (the stack overrides it)" if e["stack_override"] else "")])
    out += _table(["external", "current", "candidate", "change", "override variable",
                   "declared in", "note"], rows)

    archs = report["archs"]
    out += ["", "## CUDA architectures", "",
            f"The stack builds `{' '.join(archs['stack_archs'])}` with nvcc "
            f"{archs['nvcc_floor'] or '?'} or newer"
            + (f" (the candidate stack with nvcc {archs['candidate_nvcc_floor']} or newer, its "
               "toolkit having moved with torch's CUDA)"
               if archs.get("candidate_nvcc_floor") not in (None, archs["nvcc_floor"]) else "")
            + "; each release's CMake intersects that with `CUDA_SUPPORTED_ARCHS` of the "
            "branch it takes for that nvcc.", ""]
    branch_rows = []
    for key in ("current", "candidate"):
        for b in archs[key]["branches"]:
            taken = archs[key]["branch"] and archs[key]["branch"]["where"] == b["where"]
            branch_rows.append([key, b["condition"], " ".join(b["archs"]), b["where"],
                                "taken" if taken else ""])
    out += _table(["release", "branch", "CUDA_SUPPORTED_ARCHS", "where", "with the stack's nvcc"],
                  branch_rows)
    if archs["candidate"].get("unknown"):
        out += ["", f"The candidate's nvcc is unknown ({archs['candidate']['unknown']}): no "
                "branch of the candidate is checked."]
    missing = archs["candidate"].get("missing") or []
    out += ["", "Stack archs the candidate drops: " + (", ".join(missing) if missing else "none")]

    out += ["", "## Patches", "",
            "Each patch of the series is re-applied, in order, to the candidate's pristine "
            "source (dry run on scratch copies), exactly as a build applies it: no fuzz; a "
            "hunk found a few lines away is listed with its offset."]
    for p in report["patches"]:
        out += ["", f"### {p['package']}: `{p['series_dir']}`", "", p["note"], ""]
        if not p["patches"]:
            out.append("No patches in the series.")
            continue
        out += _table(["patch", "status", "failing hunks"],
                      [[x["name"], PATCH_STATUS.get(x["status"], x["status"])
                        + "".join(f", {o}" for o in x.get("offsets", ())),
                        "; ".join(h["where"] for h in x["failed_hunks"])] for x in p["patches"]])
        for x in p["patches"]:
            for h in x["failed_hunks"]:
                if h["text"]:
                    out += ["", f"`{x['name']}`, {h['where']} (the hunk as the patch has it):",
                            "", "```diff", h["text"], "```"]

    out += ["", "## Build switches", "",
            "Environment variables and CMake options the CUDA build reads (setup.py and other "
            "build scripts, vLLM's install-time envs, CMake)."]
    for pkg, diff in report["switches"].items():
        appeared = ", ".join(f"`{s['name']}` ({s['where']})" for s in diff["appeared"]) or "none"
        vanished = ", ".join(f"`{s['name']}` ({s['where']})" for s in diff["vanished"]) or "none"
        out += ["", f"- **{pkg}**: appeared: {appeared}; vanished: {vanished} "
                f"({diff['unchanged']} unchanged)"]

    out += ["", "## Rebuilt", ""]
    for item in report["rebuild"]:
        out.append(f"- {item['package']}: " + ("; ".join(item["reasons"]) or "unchanged"))

    out += ["", "## Stages", ""]
    out += _table(["stage", "result", "exit code", "details"],
                  [[s["name"], s["status"],
                    f"{s['exit_code']} ({s['exit_meaning']})" if s["exit_code"] is not None
                    else None, s["detail"]]
                   for s in report["stages"]])

    out += ["", "## Promote the candidate to the default stack", ""]
    if not ready:
        out += ["Not ready: resolve the blockers above first (rebase conflicting patches, "
                "then re-run the trial). Once they are resolved, these commands promote it:", ""]
    else:
        out += ["Run from the repository root, then commit:", ""]
    out += ["```sh", *report["promotion"]["commands"], "```", ""]
    return "\n".join(out)


def write_report(report: Mapping[str, Any], run: Mapping[str, Any], markdown_path: Path,
                 json_path: Path) -> bool:
    """The report's two files, each written to a temporary sibling and renamed when its
    bytes change (a trial of unchanged inputs leaves them as they were), and the run file
    beside them. True when the report changed."""
    changed = False
    for path, body in ((json_path, json.dumps(report, indent=2, default=str) + "\n"),
                       (markdown_path, render_markdown(report))):
        try:
            same = path.read_text(encoding="utf-8") == body
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            write_atomic(path, body)
            changed = True
    write_atomic(run_path(json_path), json.dumps(run, indent=2, default=str) + "\n")
    return changed
