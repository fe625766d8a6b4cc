"""The plan as text: what `build-wheels --dry-run` prints, read from the plan's JSON form
(Plan.to_dict) so that the two never disagree.
"""

from __future__ import annotations

import shlex

from ..cache import BUILD_ROOT_ENV
from . import builders
from .plan import Plan
from .toolchain import CheckStatus


def render_plan(plan: Plan) -> str:
    """The plan as `--dry-run` prints it (and the log records before a build)."""
    data = plan.to_dict()
    st = data["stack"]
    target = f", target {st['gpu_target']}" if st.get("gpu_target") else ""
    lines = [f"Plan for stack '{st['name']}'{target} ({st['file']}, digest {st['digest'][:12]})",
             f"  {st['description']}" if st["description"] else "",
             f"  python {st['python']}, TORCH_CUDA_ARCH_LIST={' '.join(st['cuda_arch_list'])}, "
             f"local label +{st['local_label']}",
             f"  torch: {data['torch']['pin']} (CUDA {data['torch']['cuda']}) from "
             f"{data['torch']['index']}"]
    if plan.torch:
        lines.append(f"         installed: {plan.torch.version}, git {plan.torch.git_version}, "
                     f"cxx11abi={plan.torch.cxx11_abi}, wheel sha256 {plan.torch.wheel_sha256}")
    lines.append("Toolchain checks:")
    marks = {CheckStatus.OK: "ok  ", CheckStatus.FAIL: "FAIL", CheckStatus.WARN: "warn",
             CheckStatus.PENDING: "todo"}
    for c in plan.checks:
        lines.append(f"  [{marks[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status in (CheckStatus.FAIL, CheckStatus.WARN):
            lines.append(f"         fix: {c.fix}")
    tc = data["toolchain"]
    lines.append(f"  build venv: {tc['build_venv']}")
    lines.append(f"    requirements: {', '.join(tc['build_venv_requirements'])}")
    if tc["build_venv_constraints"]:
        lines.append("    constrained to the wheels' runtime pins: "
                     f"{', '.join(tc['build_venv_constraints'])}")
    lines.append(f"  parallelism: {tc['parallelism']['rule']}")
    par = tc["parallelism"]
    if par["source"] == "record":
        lines.append(f"    from a unit cost record: {par['unit_costs']} ("
                     + ", ".join(f"{n}: {k} unit(s)" for n, k in par["recorded_units"].items())
                     + f"); memory budget {par['memory_budget_kb'] / 1024 / 1024:.1f} GB; "
                       "vLLM compiles the recorded units longest first")
    else:
        lines.append(f"    from the {par['source']} (no unit cost record for this version and "
                     "arch list: one is written after the build)")
    cc = tc["compile_cache"]
    lines.append(f"  compile cache: {cc['tool']} {cc['directory']}, backend {cc['backend']}")
    if cc["remote"]:
        state = {True: "reachable", False: "UNREACHABLE (local only)",
                 None: "not checked"}[cc["remote"]["reachable"]]
        lines.append(f"    remote: {cc['remote']['url']} from {cc['remote']['source']}: "
                     f"{state}, {cc['remote']['detail']}")
    for prep, pkg in zip(plan.packages, data["packages"], strict=True):
        src = pkg["source"]
        lines.append(f"Package {pkg['name']} ({pkg['builder']} builder)")
        lines.append(f"  source: {src['kind']} {src['version'] or ''} "
                     f"{src['url'] or src['archive'] or ''}")
        if src["sha256"]:
            lines.append(f"          sha256 {src['sha256']} (verified)")
        lines.append(f"  tree: {pkg['tree']}")
        # Each patch applied exactly (no fuzz); an offset is where a hunk landed away
        # from the line the patch names.
        lines.append("  patches: " + ("; ".join(f"{p['name']} ({p['applied'] or 'applied'})"
                                                for p in pkg["patches"]) or "none"))
        by_file: dict[str, int] = {}
        for pin in pkg["stripped_torch_pins"]:
            by_file[pin.split(":")[0]] = by_file.get(pin.split(":")[0], 0) + 1
        if by_file:
            lines.append("  torch pins stripped (torch comes from the stack): "
                         + ", ".join(f"{f} ({n})" for f, n in by_file.items()))
        for ext in pkg["externals"]:
            ref = ext["ref"] + ("" if ext["ref_is_commit"] else f" (tag; commit "
                                f"{ext['commit'] or 'resolved at fetch'})")
            lines.append(f"  external {ext['name']}: {ext['url']} @ {ref}")
            lines.append(f"      {ext['override_env']}={ext['directory'] or '<after fetch>'} "
                         f"[{ext['origin']}] declared in {ext['declared_in']}")
        base = plan.contexts[0].base_env() if plan.contexts else {}
        for index, step in enumerate(pkg["steps"], 1):
            lines.append(f"  step {index}: {step['title']}")
            lines.append(f"      cd {step['cwd']}")
            changed = {k: v for k, v in step["env"].items() if base.get(k) != v}
            for key in sorted(changed):
                lines.append(f"      {key}={shlex.quote(str(changed[key]))}")
            lines.append(f"      {shlex.join(step['argv'])}")
        lines += [f"  {note}" for note in builders.builder_for(prep.spec).plan_notes(prep.spec)]
    for donor in plan.source_only:
        lines.append(f"Source only {donor.spec.name} (not built: left out by --only; its "
                     f"tree serves from_source externals): {donor.tree}")
    if plan.contexts:
        lines.append("Common build environment:")
        for key, value in sorted(plan.contexts[0].base_env().items()):
            lines.append(f"  {key}={value}")
    paths = data["paths"]
    lines += [f"Output: {plan.output_dir}", f"Cache: {plan.cache.root}",
              f"Source trees: {paths['trees']}" + (
                  f" (machine-wide build root, ${BUILD_ROOT_ENV}: a remote compile cache hits "
                  "across builders only at identical tree paths)" if paths["trees_shared"]
                  else ""),
              f"Log: {plan.log_path}"]
    return "\n".join(line for line in lines if line != "")

