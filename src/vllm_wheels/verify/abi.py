"""verify_abi: will these wheels work in that environment? Answered before anyone imports
them, from the wheels' build facts (our manifest, or the wheel itself) and the runtime's
(read through its interpreter), then confirmed by a real import in a subprocess: by module
name, through the runtime's own import system (helpers/import_smoke.py).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layout
from ..cache import write_atomic
from ..log import Reporter
from ..runner import query
from . import checks
from .checks import FAIL, NA, PASS, UNKNOWN, Check, LinkScope, Status
from .report import REPORT_SCHEMA_VERSION
from .runtime import RUNTIME_ENV_CHANGES, Loader, Runtime, probe
from .wheelfacts import WheelFacts, clear_unpacked, collect_wheels, install_parts, read_wheel

IMPORT_TIMEOUT_S = 600

# The import test's program, run by the runtime's interpreter: it imports each extension
# module by name through the normal import system, over the wheels' files as installed.
IMPORT_SMOKE = layout.helper("import_smoke.py")


@dataclass
class WheelReport:
    facts: WheelFacts
    checks: list[Check] = field(default_factory=list)

    @property
    def status(self) -> Status:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else UNKNOWN if UNKNOWN in statuses else PASS

    def to_dict(self) -> dict[str, Any]:
        return {"filename": self.facts.filename, "sha256": self.facts.sha256,
                "passed": self.status == PASS, "status": self.status,
                "facts_from": self.facts.facts_from,
                "shared_objects": [e.member for e in self.facts.elfs],
                "checks": [c.to_dict() for c in self.checks]}


@dataclass
class Report:
    runtime: Runtime
    wheels: list[WheelReport]
    seconds: float
    targets: list[str]

    @property
    def status(self) -> Status:
        statuses = {w.status for w in self.wheels}
        return FAIL if FAIL in statuses else UNKNOWN if UNKNOWN in statuses else PASS

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": REPORT_SCHEMA_VERSION, "tool": "vllm-wheels verify-abi",
                "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "passed": self.status == PASS, "status": self.status,
                "seconds": round(self.seconds, 2), "arch_targets": self.targets,
                "runtime": self.runtime.to_dict(),
                "wheels": [w.to_dict() for w in self.wheels]}

    def render(self) -> str:
        rt = self.runtime
        torch = f"torch {rt.torch.version} (git {rt.torch.git_version[:7]})" if rt.torch \
            else "no torch"
        lines = [f"runtime: {rt.python} (Python {'.'.join(map(str, rt.version))}, {torch}"
                 f"{', GPU ' + ', '.join(g.name for g in rt.gpus) if rt.gpus else ''})"]
        mark = {PASS: "PASS", FAIL: "FAIL", NA: " n/a", UNKNOWN: "  ??"}
        for w in self.wheels:
            lines.append("")
            lines.append(f"{w.facts.filename}  [{mark[w.status].strip()}; facts from "
                         f"{w.facts.facts_from}]")
            width = max(len(c.name) for c in w.checks)
            for c in w.checks:
                lines.append(f"  {mark[c.status]}  {c.name:<{width}}  {c.summary}")
                if c.status in (FAIL, UNKNOWN) and c.fix:
                    lines.append(f"        {'':<{width}}  fix: {c.fix}")
        counts = {s: sum(1 for w in self.wheels for c in w.checks if c.status == s)
                  for s in (PASS, FAIL, UNKNOWN, NA)}
        verdict = {PASS: "all wheels match this runtime",
                   FAIL: "MISMATCH: do not deploy these wheels to this runtime",
                   UNKNOWN: "could not check everything (see ?? lines)"}[self.status]
        lines += ["", f"{verdict}: {counts[PASS]} pass, {counts[FAIL]} fail, "
                      f"{counts[UNKNOWN]} unknown, {counts[NA]} n/a in {self.seconds:.1f} s"]
        return "\n".join(lines)


def split_host_gpus(runtime: Runtime, arch_targets: Sequence[str]) -> None:
    """Targets given explicitly: a host GPU of another major than every target is not one
    of them (12.0 wheels checked on an H200) and moves to runtime.non_target_gpus. Its code
    is not required, and no kernel of the wheels can run on it, so the import test imports
    every extension without a GPU op, and the gpu-archs check says so plainly instead of
    failing or staying silent. A GPU of a target's major stays (12.1 for 12.0 wheels: a
    cubin runs on a higher minor of its major, and gpu-archs checks that it does)."""
    majors = {cc[0] for cc in (checks.parse_arch(t) for t in arch_targets) if cc}
    runtime.non_target_gpus = [g for g in runtime.gpus if g.compute_capability[0] not in majors]
    runtime.gpus = [g for g in runtime.gpus if g not in runtime.non_target_gpus]


def verify(wheel_paths: Sequence[Path], python: Path, *, work_dir: Path,
           arch_targets: Sequence[str] = (), import_test: bool = True,
           host_gpus: bool = True, reporter: Reporter | None = None) -> Report:
    """Run every check of every wheel against the runtime whose interpreter is `python`.
    `work_dir` holds the unpacked wheels (reused while their content is unchanged).
    `host_gpus=False` ignores this host's GPUs (a build host's GPU is not the target: the
    recorded arch list is), both for arch coverage and for the GPU op of the import test."""
    started = time.monotonic()
    say = reporter.say if reporter else (lambda text: None)
    wheels = collect_wheels(list(wheel_paths))
    runtime = probe(python)
    if not host_gpus:
        runtime.gpus = []
    elif arch_targets:
        split_host_gpus(runtime, arch_targets)
    say(f"verify_abi: {len(wheels)} wheel(s) against {python}")
    unpack_root = work_dir / "unpacked"
    facts = [read_wheel(w, unpack_root, runtime.site_packages) for w in wheels]
    clear_unpacked(unpack_root, {f.sha256[:24] for f in facts})

    overlay = {e.installed: e.info for f in facts for e in f.elfs}
    loader = Loader(runtime, overlay)
    needs_torch = any(f.needs_torch for f in facts)
    providers = [d for d in checks.GLOBAL_PROVIDERS if any(f.pin(d) for f in facts)]
    global_exports = checks.global_scope(loader, runtime, needs_torch, providers)

    reports = []
    for index, f in enumerate(facts, 1):
        say(f"[{index}/{len(facts)}] {f.filename}: {len(f.elfs)} shared object(s)")
        targets = list(arch_targets) or [str(a) for a in (f.manifest or {}).get(
            "cuda_arch_list", [])]
        scopes = []
        for elf in f.elfs:
            objects, missing = loader.closure(elf.installed)
            scopes.append(LinkScope(elf, objects, missing, global_exports))
        results = [
            checks.check_torch(f, runtime),
            checks.check_cuda(f, runtime),
            checks.check_cxx11(f, runtime),
            checks.check_python_tag(f, runtime),
            checks.check_companions(f, runtime, facts),
        ]
        if f.needs_torch and runtime.torch is None:
            # Every library and symbol check would fail for the one reason already
            # reported: say "could not check" instead of burying it in consequences.
            results += [Check(n, UNKNOWN, "not checked: the runtime has no torch to "
                                                "link against")
                        for n in ("needed-libraries", "undefined-symbols", "symbol-versions")]
        else:
            results += [checks.check_needed(f, scopes, runtime),
                        checks.check_symbols(f, scopes),
                        checks.check_symbol_versions(f, scopes)]
        results.append(checks.check_archs(f, runtime, targets))
        reports.append(WheelReport(f, results))
    if import_test:
        say("import smoke test in the runtime (subprocess)")
        _import_smoke(reports, runtime)
    else:
        for r in reports:
            r.checks.append(Check("import", NA, "skipped (--no-import)"))
    return Report(runtime, reports, time.monotonic() - started, list(arch_targets))


def import_plan(reports: list[WheelReport]) -> dict[str, Any]:
    """What the import test imports and where the import system may look: each package on
    the way to an extension module maps to its directories in the unpacked wheels (the
    directory it will be once installed), top-level modules to the unpacked roots."""
    packages: dict[str, list[str]] = {}
    roots: list[str] = []
    modules: list[str] = []
    for r in reports:
        for module, files in r.facts.extension_modules().items():
            if module not in modules:
                modules.append(module)
            for e in files:
                parts = install_parts(e.member)
                # e.unpacked.parents[k] is the directory k levels above the file, i.e.
                # the package parts[:len(parts) - 1 - k]; the top is the install root.
                for depth in range(1, len(parts)):
                    directory = str(e.unpacked.parents[len(parts) - 1 - depth].resolve())
                    dirs = packages.setdefault(".".join(parts[:depth]), [])
                    if directory not in dirs:
                        dirs.append(directory)
                root = str(e.unpacked.parents[len(parts) - 1].resolve())
                if root not in roots:
                    roots.append(root)
    return {"packages": packages, "roots": roots, "modules": modules}


def _import_verdicts(r: WheelReport, runtime: Runtime, results: dict[str, dict[str, Any]]
                     ) -> dict[str, str]:
    """module -> why it failed, judging each result against the static prediction: the
    file the runtime's suffixes select (checks.file_found) is the one that must load."""
    py = ".".join(map(str, runtime.version[:2]))
    suffixes = runtime.extension_suffixes or []
    failed: dict[str, str] = {}
    for module, files in r.facts.extension_modules().items():
        item = results.get(module)
        if item is None:
            continue
        expected = checks.file_found(files, suffixes)
        if not item.get("found"):
            lost = [checks.Unfindable(module, e.member, e.suffix,
                                      checks.python_for_suffix(e.suffix, suffixes)) for e in files]
            failed[module] = f"{item['detail']}; " + "; ".join(u.describe(py, suffixes)
                                                               for u in lost)
        elif expected is None or not item.get("origin") or \
                Path(item["origin"]).resolve() != expected.unpacked.resolve():
            wanted = expected.member if expected else "files (none has a suffix it looks for)"
            failed[module] = f"the import system found {item.get('origin')}, not the wheel's {wanted}"
        elif not item["ok"]:
            failed[module] = item["detail"]
    return failed


def _import_smoke(reports: list[WheelReport], runtime: Runtime) -> None:
    plan = import_plan(reports)
    if not plan["modules"]:
        for r in reports:
            r.checks.append(Check("import", NA, "no Python extension modules"))
        return
    plan.update(torch=any(r.facts.needs_torch for r in reports) and runtime.torch is not None,
                gpu_op=bool(runtime.gpus))
    proc = query([runtime.python, IMPORT_SMOKE, json.dumps(plan)],
                 env_changes=RUNTIME_ENV_CHANGES, timeout=IMPORT_TIMEOUT_S)
    output = proc.stdout
    crashed = not proc.ok
    tail = proc.not_run or proc.stderr.strip()[-800:]
    results = {}
    for line in output.splitlines():
        if line.startswith("VLLM_WHEELS_SMOKE "):
            item = json.loads(line.split(" ", 1)[1])
            results[item["module"]] = item
    torch_item = results.get("torch")
    gpu_item = results.get("<gpu-op>")
    for r in reports:
        names = list(r.facts.extension_modules())
        if not names:
            r.checks.append(Check("import", NA, "no Python extension modules"))
            continue
        if r.facts.needs_torch and runtime.torch is None:
            r.checks.append(Check("import", UNKNOWN, "not tried: the runtime has no torch"))
            continue
        if torch_item is not None and not torch_item["ok"]:
            r.checks.append(Check("import", UNKNOWN,
                                        f"the runtime's own torch fails to import: "
                                        f"{torch_item['detail']}",
                                        fix="repair the runtime's torch first"))
            continue
        failed = _import_verdicts(r, runtime, results)
        absent = [n for n in names if n not in results]
        if absent and crashed:
            failed.update({n: f"the interpreter crashed while importing ({tail})" for n in absent})
        evidence: dict[str, Any] = {"modules": names}
        if gpu_item is not None:
            evidence["gpu_op"] = gpu_item
        needs_driver = {n: d for n, d in failed.items()
                        if not runtime.gpus and any(lib in d for lib in checks.DRIVER_LIBS)}
        if needs_driver:
            # Modules linking the driver cannot load on a GPU-less host: untestable here,
            # not failed. The others were imported (or failed) for real.
            evidence["needs_driver"] = needs_driver
            failed = {n: d for n, d in failed.items() if n not in needs_driver}
        if failed:
            untested = (f"; not tried here ({', '.join(needs_driver)}): they need the NVIDIA "
                        "driver, absent on this host" if needs_driver else "")
            r.checks.append(Check(
                "import", FAIL, "; ".join(f"{n}: {d}" for n, d in failed.items()) + untested,
                evidence,
                fix="see the static checks above for the cause; the import error is the "
                    "symptom users would hit"))
            continue
        if needs_driver:
            imported = [n for n in names if n not in needs_driver]
            text = (f"imported {', '.join(imported)}; " if imported else "") + \
                f"{', '.join(needs_driver)} need the NVIDIA driver (libcuda.so.1), absent on " \
                "this host without a GPU: run verify_abi on a GPU host to import them too"
            r.checks.append(Check("import", PASS if imported else NA, text, evidence))
            continue
        gpu = ""
        if gpu_item is not None:
            gpu = f"; {gpu_item['detail']}" if gpu_item["ok"] else \
                f"; GPU op FAILED: {gpu_item['detail']}"
            if not gpu_item["ok"]:
                r.checks.append(Check("import", FAIL, f"imported {', '.join(names)}{gpu}",
                                            evidence, fix="the kernels do not run on this GPU"))
                continue
        no_op = " (no target GPU on this host: no op run)"
        r.checks.append(Check("import", PASS, f"imported {', '.join(names)} in the "
                                                    f"runtime{gpu or no_op}", evidence))


def write_json(report: Report, target: Path) -> None:
    write_atomic(target, json.dumps(report.to_dict(), indent=2) + "\n")
