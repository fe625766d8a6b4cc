"""The trial report: one JSON document (schema_version 1) and its markdown rendering,
written side by side into verify/trials/. The markdown is built from the JSON only, so
the two never disagree and a saved trial renders the same after a resume.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..cache import write_atomic
from ..log import format_duration
from .stages import NO_GPU, STAGES, StageResult, StageStatus

REPORT_SCHEMA_VERSION = 1
PATCH_STATUS = {"applies": "applies cleanly",
                "already-applied": "already upstream (reverse-applies)",
                "conflicts": "CONFLICTS"}
EARLIER_RUN = "(from an earlier run of this trial)"


def build_report(plan: Mapping[str, Any], results: Mapping[str, StageResult], *,
                 requested: Sequence[str], gpu: bool, state_file: Path, state_note: str,
                 report_md: Path, report_json: Path) -> dict[str, Any]:
    stages = []
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
        stages.append(entry)
    body = {k: v for k, v in plan.items() if k != "seconds"}
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": "vllm-wheels trial",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trial": {"name": f"trial-vllm-{plan['request']['vllm']}",
                  "stages_requested": list(requested), "gpu": gpu,
                  "state_file": str(state_file), "state": state_note,
                  "report_markdown": str(report_md), "report_json": str(report_json),
                  "plan_seconds": plan.get("seconds")},
        **body,
        "stages": stages,
    }


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
           f"- Generated {report['generated']}; stages requested: "
           f"{', '.join(report['trial']['stages_requested'])}; {report['trial']['state']}", "",
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
    out += _table(["stage", "result", "duration", "details", "log"],
                  [[s["name"], s["status"] + (" (reused)" if s.get("reused") else ""),
                    format_duration(s["seconds"]) if s["seconds"] is not None else None,
                    s["detail"], f"`{s['log']}`" if s["log"] else None]
                   for s in report["stages"]])

    out += ["", "## Promote the candidate to the default stack", ""]
    if not ready:
        out += ["Not ready: resolve the blockers above first (rebase conflicting patches, "
                "then re-run the trial). Once they are resolved, these commands promote it:", ""]
    else:
        out += ["Run from the repository root, then commit:", ""]
    out += ["```sh", *report["promotion"]["commands"], "```", ""]
    return "\n".join(out)


# What changes from run to run of the same trial without the trial changing: when it ran,
# how long it took, this run's log, whether the plan was reused, and paths on this host
# (the cache, the checkout). The reports are tracked in git, so a re-run that differs only
# here leaves them untouched.
VOLATILE_TRIAL_KEYS = ("state", "state_file", "report_markdown", "report_json", "plan_seconds")
VOLATILE_STAGE_KEYS = ("seconds", "finished", "reused", "log", "command", "outputs")


def _without_volatile(value: Any) -> Any:
    if isinstance(value, Mapping):
        out = {k: _without_volatile(v) for k, v in value.items()
               if k not in ("generated", "tree")}
        if isinstance(out.get("trial"), dict):
            out["trial"] = {k: v for k, v in out["trial"].items()
                            if k not in VOLATILE_TRIAL_KEYS}
        if isinstance(out.get("stages"), list):
            out["stages"] = [
                {k: (v.replace(" " + EARLIER_RUN, "").replace(EARLIER_RUN, "")
                     if k == "detail" and isinstance(v, str) else v)
                 for k, v in st.items() if k not in VOLATILE_STAGE_KEYS}
                if isinstance(st, dict) else st for st in out["stages"]]
        return out
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def same_trial(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """The two reports say the same, apart from VOLATILE_* (and dates, durations, paths)."""
    return bool(_without_volatile(old) == _without_volatile(new))


def write_report(report: Mapping[str, Any], markdown_path: Path, json_path: Path) -> bool:
    """Both files, each written to a temporary sibling and renamed; neither is rewritten
    when the saved report says the same (`same_trial`), so a trial of unchanged inputs
    leaves the tracked files as they were. True when written."""
    text = json.dumps(report, indent=2, default=str) + "\n"
    if markdown_path.is_file() and json_path.is_file():
        try:
            saved = json.loads(json_path.read_text(encoding="utf-8"))
        except ValueError:
            saved = None
        if saved is not None and same_trial(saved, json.loads(text)):
            return False
    for path, body in ((json_path, text), (markdown_path, render_markdown(report))):
        write_atomic(path, body)
    return True
