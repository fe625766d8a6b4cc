"""What the index holds: per file the project, version, local label, what the wheel
needs at run time (torch, CUDA, GPU arch) and whether it is yanked.

The needs come from the build manifest our wheels carry (vllm_wheels_build.json in the
.dist-info) when there is one; otherwise from the metadata: the `Requires-Dist: torch`
pin and the local label's `cuNNN` / `smNN` parts (a mirrored torch has only its label).
"""

from __future__ import annotations

import email.parser
import re
from dataclasses import asdict, dataclass
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ..build.wheelmeta import read_manifest
from .store import FileRecord, IndexDir

LIST_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ListedFile:
    project: str
    version: str
    local_label: str
    torch: str | None  # the torch it needs, e.g. "2.9.0+cu128" or "==2.9.0"
    cuda: str | None  # e.g. "12.8"
    arch: tuple[str, ...]  # compute capabilities, e.g. ("12.0",)
    needs_from: str  # "manifest" | "metadata" | "label"
    yanked: str | None
    verification: str
    verification_detail: str
    origin: str
    filename: str
    sha256: str
    size: int
    upload_time: str


def _cuda_from_label(label: str) -> str | None:
    match = re.search(r"(?:^|\.)cu(\d{2,4})(?:\.|$)", label)
    if not match:
        return None
    digits = match.group(1)
    return f"{digits[:-1]}.{digits[-1]}"


def _arch_from_label(label: str) -> tuple[str, ...]:
    return tuple(f"{d[:-1]}.{d[-1]}" for d in re.findall(r"(?:^|\.)sm(\d{2,3})[af]?(?=\.|$)",
                                                         label))


def needs(index: IndexDir, record: FileRecord) -> tuple[str | None, str | None,
                                                         tuple[str, ...], str]:
    label = Version(record.version).local or ""
    manifest = read_manifest(index.file_path(record.project, record.filename))
    if manifest is not None:
        torch = manifest.get("torch")
        torch_version = torch.get("version") if isinstance(torch, dict) else None
        cuda = torch.get("cuda") if isinstance(torch, dict) else None
        archs = manifest.get("cuda_arch_list")
        return (str(torch_version) if torch_version else None,
                str(cuda) if cuda else _cuda_from_label(label),
                tuple(str(a) for a in archs) if isinstance(archs, list)
                else _arch_from_label(label), "manifest")
    metadata = index.metadata_path(record.project, record.filename).read_bytes()
    headers = email.parser.BytesHeaderParser().parsebytes(metadata)
    torch_spec = None
    for text in headers.get_all("Requires-Dist") or []:
        try:
            req = Requirement(str(text))
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) == "torch":
            torch_spec = str(req.specifier) or "any"
    cuda = _cuda_from_label(label)
    if cuda is None and torch_spec:
        cuda = _cuda_from_label(torch_spec.rsplit("+", 1)[-1])
    return torch_spec, cuda, _arch_from_label(label), \
        "metadata" if torch_spec else "label"


def list_index(index: IndexDir) -> list[ListedFile]:
    state = index.require()
    rows = []
    for record in state.files.values():
        torch, cuda, arch, source = needs(index, record)
        rows.append(ListedFile(
            project=record.project, version=record.version,
            local_label=Version(record.version).local or "", torch=torch, cuda=cuda,
            arch=arch, needs_from=source, yanked=record.yanked,
            verification=record.verification, verification_detail=record.verification_detail,
            origin=record.origin, filename=record.filename, sha256=record.sha256,
            size=record.size, upload_time=record.upload_time))
    rows.sort(key=lambda r: (r.project, Version(r.version), r.filename))
    return rows


def to_json(rows: list[ListedFile], generation: int) -> dict[str, Any]:
    return {"schema_version": LIST_SCHEMA_VERSION, "generation": generation,
            "files": [{**asdict(r), "arch": list(r.arch)} for r in rows]}


def render_table(rows: list[ListedFile]) -> str:
    if not rows:
        return "(the index is empty)"
    header = ("project", "version", "local label", "torch", "CUDA", "arch", "yanked",
              "verified")
    lines = [header]
    for r in rows:
        verified = {"verify-abi": "verify-abi", "mirror-hash": "mirror (sha256)",
                    "unverified": f"NO: {r.verification_detail}"}[r.verification]
        lines.append((r.project, Version(r.version).public, r.local_label or "-",
                      r.torch or "-", r.cuda or "-", ",".join(r.arch) or "-",
                      f"YANKED: {r.yanked}" if r.yanked is not None else "no", verified))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
           for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
