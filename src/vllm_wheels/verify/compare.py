"""Compare a built wheel with the official wheel of the same release: which extension modules
and Python packages each has, and, per extension, which GPU machine code it carries, read
with the project's own fatbin reader (`fatbin.py`; cuobjdump is not in the CUDA pip wheels).

The question it answers is the one a custom build must survive: "for every kernel family
where the official wheel has machine code for my GPU, does mine have it too?" An extension
is a kernel family's unit of shipping (`_C`, `_moe_C`, `vllm_flash_attn/_vllm_fa2_C`, ...),
so the comparison is per extension: the cubins (SASS) that run on the target arch, the PTX
the driver would JIT-compile for it, and the number of cubins per arch (a family built for
fewer kernels shows as fewer cubins of the same arch).

Reads the wheels' zip members directly (no unpacking to disk): the official x86_64 wheel is
244 MB and its extensions are read one at a time."""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .fatbin import FatbinEntry, parse_fatbin

COMPARE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ExtensionCode:
    """The device code of one extension module."""

    member: str
    size: int
    cubins: dict[str, int]  # "sm_120" / "sm_90a" -> number of cubins
    ptx: tuple[str, ...]  # "compute_80", ...

    def runs_natively(self, major: int, minor: int) -> int:
        """Cubins that run on a GPU of this compute capability without JIT."""
        return sum(n for name, n in self.cubins.items()
                   if _entry(name).runs_on(major, minor))

    def jit_only(self, major: int, minor: int) -> bool:
        """Has device code for the GPU only as PTX (the driver JIT-compiles it on first load:
        minutes of start-up, and no arch-specific kernels)."""
        return not self.runs_natively(major, minor) and any(
            _entry(p, "ptx").runs_on(major, minor) for p in self.ptx)


@dataclass(frozen=True)
class WheelContents:
    name: str
    size: int
    extensions: dict[str, ExtensionCode]
    packages: tuple[str, ...]


@dataclass
class Comparison:
    ours: WheelContents
    official: WheelContents
    arch: tuple[int, int]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missing_code(self) -> list[str]:
        """Extensions where the official wheel runs natively on the arch and ours does not."""
        return [r["extension"] for r in self.rows if r["verdict"] == "MISSING"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": COMPARE_SCHEMA_VERSION,
            "arch": f"{self.arch[0]}.{self.arch[1]}",
            "wheels": {"ours": {"name": self.ours.name, "size": self.ours.size},
                       "official": {"name": self.official.name, "size": self.official.size}},
            "extensions": self.rows,
            "packages": {
                "only_ours": sorted(set(self.ours.packages) - set(self.official.packages)),
                "only_official": sorted(set(self.official.packages) - set(self.ours.packages)),
                "both": len(set(self.ours.packages) & set(self.official.packages)),
            },
            "missing_code": self.missing_code,
        }


def _entry(name: str, kind: str = "sass") -> FatbinEntry:
    """'sm_120a' / 'compute_80' -> FatbinEntry."""
    digits = name.split("_", 1)[1]
    variant = digits[-1] if digits[-1] in "af" else ""
    return FatbinEntry(kind, int(digits.rstrip("af")), variant)


def _is_extension(member: str) -> bool:
    base = member.rsplit("/", 1)[-1]
    return base.endswith(".so") or ".so." in base


def read_contents(wheel: Path) -> WheelContents:
    if not zipfile.is_zipfile(wheel):
        raise ConfigError(f"{wheel} is not a wheel (not a zip archive)",
                          fix="pass the .whl files of the two builds to compare")
    extensions: dict[str, ExtensionCode] = {}
    packages: set[str] = set()
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            member = info.filename
            if ".dist-info/" in member or ".data/" in member:
                continue
            if member.endswith("/__init__.py"):
                packages.add(member.rsplit("/", 1)[0].replace("/", "."))
            if not _is_extension(member):
                continue
            from elftools.elf.elffile import ELFFile

            data = archive.read(member)
            section = ELFFile(io.BytesIO(data)).get_section_by_name(".nv_fatbin")
            entries = parse_fatbin(section.data()) if section is not None else []
            cubins = Counter(e.name for e in entries if e.kind == "sass")
            ptx = sorted({e.name for e in entries if e.kind == "ptx"})
            extensions[member] = ExtensionCode(member, info.file_size, dict(sorted(cubins.items())),
                                               tuple(ptx))
    return WheelContents(wheel.name, wheel.stat().st_size, extensions, tuple(sorted(packages)))


def _verdict(ours: ExtensionCode | None, official: ExtensionCode | None,
             major: int, minor: int) -> tuple[str, str]:
    if official is None:
        return "ONLY OURS", "not in the official wheel"
    if ours is None:
        native = official.runs_natively(major, minor)
        return ("MISSING" if native else "ABSENT",
                f"official has it ({native} cubins for the arch)" if native else
                "official has it, with no machine code for the arch")
    o, f = ours.runs_natively(major, minor), official.runs_natively(major, minor)
    if f and not o:
        return "MISSING", f"official: {f} cubins run natively, ours: none" + \
            (" (PTX only: JIT at load)" if ours.jit_only(major, minor) else "")
    if o and not f:
        return "MORE", f"ours: {o} cubins run natively, official: none" + \
            (" (PTX only: JIT at load)" if official.jit_only(major, minor) else "")
    if not o and not f:
        how = {(True, True): "both PTX only (JIT)", (False, False): "neither has code for it"}
        key = (ours.jit_only(major, minor), official.jit_only(major, minor))
        return "SAME", how.get(key, "ours PTX only" if key[0] else "official PTX only")
    return "SAME", f"ours {o} / official {f} cubins run natively"


def compare(ours: Path, official: Path, arch: str) -> Comparison:
    try:
        major, minor = (int(p) for p in arch.rstrip("af").split("."))
    except ValueError:
        raise ConfigError(f"--arch {arch!r} is not a compute capability",
                          fix="e.g. --arch 12.0 (RTX 5090) or --arch 9.0 (H100/H200)") from None
    mine, theirs = read_contents(ours), read_contents(official)
    result = Comparison(mine, theirs, (major, minor))
    for member in sorted(set(mine.extensions) | set(theirs.extensions)):
        a, b = mine.extensions.get(member), theirs.extensions.get(member)
        verdict, why = _verdict(a, b, major, minor)
        result.rows.append({
            "extension": member, "verdict": verdict, "why": why,
            "ours": _code_dict(a), "official": _code_dict(b),
        })
    return result


def _code_dict(code: ExtensionCode | None) -> dict[str, Any] | None:
    if code is None:
        return None
    return {"size": code.size, "cubins": code.cubins, "ptx": list(code.ptx)}


def _archs(code: dict[str, Any] | None) -> str:
    if code is None:
        return "-"
    parts = [f"{name}×{n}" for name, n in code["cubins"].items()]
    parts += [f"{p} (PTX)" for p in code["ptx"]]
    return ", ".join(parts) or "no device code"


def render_markdown(comparison: Comparison) -> str:
    data = comparison.to_dict()
    lines = [
        f"# {comparison.ours.name} vs {comparison.official.name}",
        "",
        f"Target arch {data['arch']}. Per extension: the cubins (machine code, ×count) and PTX "
        "each wheel carries, read with vllm_wheels.verify.fatbin; MISSING = the official "
        "wheel runs natively on the arch and ours does not.",
        "",
        f"- ours: {comparison.ours.size:,} bytes, {len(comparison.ours.extensions)} extensions, "
        f"{len(comparison.ours.packages)} packages",
        f"- official: {comparison.official.size:,} bytes, "
        f"{len(comparison.official.extensions)} extensions, "
        f"{len(comparison.official.packages)} packages",
        f"- extensions MISSING code for {data['arch']}: "
        + (", ".join(data["missing_code"]) or "none"),
        "",
        "| extension | verdict | ours | official | why |",
        "|---|---|---|---|---|",
    ]
    for row in data["extensions"]:
        lines.append(f"| `{row['extension']}` | {row['verdict']} | {_archs(row['ours'])} | "
                     f"{_archs(row['official'])} | {row['why']} |")
    pk = data["packages"]
    lines += ["", f"Python packages in both: {pk['both']}.",
              "Only in ours: " + (", ".join(f"`{p}`" for p in pk["only_ours"]) or "none") + ".",
              "Only in the official wheel: "
              + (", ".join(f"`{p}`" for p in pk["only_official"]) or "none") + ".", ""]
    return "\n".join(lines)
