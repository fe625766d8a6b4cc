"""What a wheel was built against: from our build manifest when the wheel has one, else
from the wheel itself (its Requires-Dist pins and its ELF files), so that official or
colleagues' wheels can be checked too.
"""

# ruff: noqa: PTH100, PTH110, PTH113, PTH118, PTH119, PTH120, PTH101
# (loader paths are strings on purpose: they are dictionary keys of the
# install overlay and carry $ORIGIN expansions, exactly as the dynamic loader sees them)

from __future__ import annotations

import email.parser
import functools
import json
import os
import re
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from ..build.sources import sha256_file
from ..build.wheelmeta import MANIFEST_NAME, verify_record
from ..cache import pid_alive, raise_if_disk_full, remove, temp_sibling
from ..errors import CannotCheckError
from .elf import ElfInfo, NotElf, is_elf, read_elf

if TYPE_CHECKING:
    from packaging.tags import Tag

# Mangled-name prefixes of PyTorch's C++ namespaces and its C shim (docs/facts/torch-abi.md section 2).
TORCH_SYMBOL = re.compile(r"^(_ZN3c10|_ZNK3c10|_ZN2at|_ZNK2at|_ZN5torch|_ZNK5torch|_ZN6caffe2|"
                          r"aoti_torch_|torch_)")
TORCH_LIBS = re.compile(r"^lib(torch|c10|shm|caffe2)[\w.]*\.so")
CUDART = re.compile(r"^libcudart\.so\.(\d+)$")


@dataclass
class WheelElf:
    member: str  # path inside the wheel, e.g. vllm/_C.abi3.so
    installed: str  # where it lands in the runtime's site-packages
    unpacked: Path  # where it lies on disk now
    info: ElfInfo

    @property
    def module_name(self) -> str | None:
        """Dotted import name if this is a Python extension module (vllm._C), from where
        the file lands once installed (a <name>.data/platlib/ prefix is no package)."""
        init = self.info.python_init
        if init is None:
            return None
        parts = install_parts(self.member)
        return ".".join((*parts[:-1], init))

    @property
    def suffix(self) -> str:
        """What follows the module name in the file name ('.abi3.so',
        '.cpython-312-x86_64-linux-gnu.so'): what the import system matches against its
        EXTENSION_SUFFIXES (a module name has no dots)."""
        name = Path(self.member).name
        return name[len(name.split(".", 1)[0]):]


@dataclass
class WheelFacts:
    path: Path
    sha256: str
    name: str
    version: str
    tags: frozenset[Tag]
    requires: list[Requirement]
    manifest: dict[str, Any] | None
    unpacked: Path
    elfs: list[WheelElf] = field(default_factory=list)

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def facts_from(self) -> str:
        return "build manifest" if self.manifest else "wheel metadata and ELF files"

    def pin(self, project: str) -> Requirement | None:
        wanted = canonicalize_name(project)
        for req in self.requires:
            if canonicalize_name(req.name) == wanted and (req.marker is None or
                                                          req.marker.evaluate({"extra": ""})):
                return req
        return None

    @property
    def torch_manifest(self) -> dict[str, Any] | None:
        torch = (self.manifest or {}).get("torch")
        return torch if isinstance(torch, dict) else None

    @functools.cached_property
    def needs_torch(self) -> bool:
        # Asked by most checks; scans every undefined symbol, so computed once (read_wheel
        # has filled `elfs` before any check runs).
        if self.torch_manifest or self.pin("torch"):
            return True
        for elf in self.elfs:
            if any(TORCH_LIBS.match(n) for n in elf.info.needed):
                return True
            if any(TORCH_SYMBOL.match(u.name) for u in elf.info.undefined):
                return True
        return False

    def extension_modules(self) -> dict[str, list[WheelElf]]:
        """Import name -> the wheel's files for it: usually one, but a wheel may carry one
        per Python version (_C.cpython-311-...so and _C.cpython-312-...so), of which the
        import system loads the first its suffix order finds."""
        modules: dict[str, list[WheelElf]] = {}
        for elf in self.elfs:
            if elf.module_name:
                modules.setdefault(elf.module_name, []).append(elf)
        return modules

    def cudart_majors(self) -> set[int]:
        majors = set()
        for elf in self.elfs:
            for name in elf.info.needed:
                m = CUDART.match(name)
                if m:
                    majors.add(int(m.group(1)))
        return majors

    def has_device_code(self) -> bool:
        return any(elf.info.fatbin for elf in self.elfs)

    def built_cxx11_abi(self) -> bool | None:
        torch = self.torch_manifest
        if torch is not None and isinstance(torch.get("cxx11_abi"), bool):
            return bool(torch["cxx11_abi"])
        # From the mangled torch symbols it imports: std::string appears as
        # NSt7__cxx1112basic_string... with the new ABI and as Ss with the old one.
        new = old = False
        for elf in self.elfs:
            for u in elf.info.undefined:
                if TORCH_SYMBOL.match(u.name):
                    new = new or "St7__cxx11" in u.name
                    old = old or bool(re.search(r"(RKSs|Ss[EI])", u.name))
        if new != old:
            return new
        return None


def unpack_wheel(wheel: Path, root: Path) -> tuple[str, Path]:
    """Unpack once per content hash (re-verification of unchanged wheels is instant).
    Unpacked to a temp sibling and renamed: an interrupted run leaves nothing half-made."""
    digest = sha256_file(wheel)
    target = root / digest[:24]
    if target.is_dir():
        os.utime(target)  # recently used: kept by clear_unpacked
        return digest, target
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.infolist():
                dest = (tmp / member.filename).resolve()
                if not str(dest).startswith(str(tmp.resolve())):
                    raise CannotCheckError(f"{wheel.name}: member {member.filename} escapes "
                                           "the wheel root", fix="do not use this wheel")
                zf.extract(member, tmp)
                mode = (member.external_attr >> 16) & 0o777
                if mode:
                    os.chmod(dest, mode)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            remove(tmp)  # a concurrent run unpacked the same wheel first: use its copy
    except zipfile.BadZipFile as exc:
        remove(tmp)
        raise CannotCheckError(f"{wheel} is not a valid wheel (zip): {exc}",
                               fix="rebuild or re-download it") from None
    except OSError as exc:
        remove(tmp)
        raise_if_disk_full(exc, root, why=f"verify_abi reads {wheel.name}'s files from an "
                                          "unpacked copy; the partial copy was removed",
                           fix="free space or point --cache-dir at a larger disk")
        raise
    except BaseException:
        remove(tmp)
        raise
    return digest, target


# In an unpacked tree (named by the wheel's sha256): this wheel's RECORD was checked. A
# re-verification of the same bytes skips the check (it reads every member again).
RECORD_CHECKED = ".vllm-wheels-record-checked"


def check_record(wheel: Path, unpacked: Path) -> None:
    """CannotCheckError (exit 9) when a member's bytes or size differ from RECORD, or a
    member is not in it (wheelmeta.verify_record): these are not the files that were
    built, so no fact read from them says anything about the wheel as built."""
    marker = unpacked / RECORD_CHECKED
    if marker.exists():
        return
    problems = verify_record(wheel)
    if problems:
        raise CannotCheckError(
            f"{wheel.name}: its files do not match its RECORD:\n"
            + "\n".join(f"    {p}" for p in problems[:20])
            + (f"\n    ... and {len(problems) - 20} more" if len(problems) > 20 else ""),
            why="RECORD is the wheel's own list of its files with their sha256 and size; a "
                "member changed (or a RECORD edited) after the wheel was made means these are "
                "not the bytes that were built, and pip installs them without a word",
            fix="rebuild the wheel (or download it again from where it was published); never "
                "edit a wheel by hand")
    marker.touch()


def install_parts(member: str) -> tuple[str, ...]:
    """A wheel member's path under site-packages once installed, as parts:
    <name>.data/{purelib,platlib}/x goes to x."""
    parts = Path(member).parts
    if len(parts) > 2 and parts[0].endswith(".data") and parts[1] in ("purelib", "platlib"):
        parts = parts[2:]
    return parts


def installed_path(member: str, site_packages: Path) -> str:
    """Where pip puts a wheel member."""
    return os.path.normpath(os.path.join(site_packages, *install_parts(member)))


def read_wheel(wheel: Path, unpack_root: Path, site_packages: Path) -> WheelFacts:
    try:
        name, version, _build, tags = parse_wheel_filename(wheel.name)
    except Exception as exc:  # packaging raises InvalidWheelFilename
        raise CannotCheckError(f"{wheel.name} is not a wheel filename: {exc}") from None
    digest, unpacked = unpack_wheel(wheel, unpack_root)
    check_record(wheel, unpacked)
    dist_info = next(unpacked.glob("*.dist-info"), None)
    if dist_info is None or not (dist_info / "METADATA").exists():
        raise CannotCheckError(f"{wheel.name} has no .dist-info/METADATA",
                               fix="rebuild the wheel")
    metadata = email.parser.Parser().parsestr((dist_info / "METADATA").read_text())
    requires = []
    for line in metadata.get_all("Requires-Dist") or []:
        try:
            requires.append(Requirement(line))
        except InvalidRequirement:
            continue
    manifest = None
    manifest_path = dist_info / MANIFEST_NAME
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    facts = WheelFacts(path=wheel, sha256=digest, name=str(name), version=str(version),
                       tags=frozenset(tags), requires=requires, manifest=manifest,
                       unpacked=unpacked)
    for file in sorted(unpacked.rglob("*")):
        if not file.is_file() or file.is_symlink() or ".so" not in file.name:
            continue
        with file.open("rb") as handle:
            if not is_elf(handle.read(4)):
                continue
        member = file.relative_to(unpacked).as_posix()
        try:
            info = read_elf(file, display_path=member)
        except NotElf:
            continue
        facts.elfs.append(WheelElf(member, installed_path(member, site_packages), file, info))
    return facts


def collect_wheels(paths: list[Path]) -> list[Path]:
    wheels: list[Path] = []
    for path in paths:
        if path.is_dir():
            wheels += sorted(path.glob("*.whl"))
        elif path.is_file() and path.suffix == ".whl":
            wheels.append(path)
        elif not path.exists():
            raise CannotCheckError(f"{path} does not exist",
                                   fix="build the wheels first (`nox -s build_wheels`) or pass "
                                       "--wheels with a directory or .whl files")
        else:
            raise CannotCheckError(f"{path} is neither a wheel nor a directory of wheels",
                                   fix="pass --wheels with a directory or .whl files")
    if not wheels:
        raise CannotCheckError(f"no wheels found in {', '.join(map(str, paths))}",
                               fix="build them first (`nox -s build_wheels`) or pass --wheels")
    return wheels


def clear_unpacked(root: Path, keep: set[str], max_age_days: float = 7) -> None:
    """Drop unpacked trees not used for `max_age_days` (keeps the cache bounded). Age,
    not "not in this run": another verify_abi (e.g. a build's) may be reading them now."""
    if not root.is_dir():
        return
    cutoff = time.time() - max_age_days * 86400
    for child in root.iterdir():
        if child.name.startswith("."):
            # `.<name>.tmp-<pid>` of a run that was killed mid-unpack.
            pid = child.name.rpartition(".tmp-")[2]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(child, ignore_errors=True)
            continue
        if child.name in keep:
            continue
        try:
            if child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)
        except FileNotFoundError:
            continue

