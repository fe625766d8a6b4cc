"""What the dynamic loader will need from a shared object, read without loading it.

pyelftools (the maintained pure-Python ELF reader) finds the sections, dynamic tags and
symbol-version tables; the bulk symbol table (.dynsym: 77k entries in libtorch_cpu) is
then decoded with `struct.iter_unpack`, which is ~20x faster than pyelftools' per-symbol
objects and keeps a whole wheel set's check in seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from .fatbin import FatbinEntry, parse_fatbin

SHN_UNDEF = 0
STB_GLOBAL, STB_WEAK = 1, 2
STV_DEFAULT, STV_PROTECTED = 0, 3
VERSYM_HIDDEN = 0x8000


@dataclass(frozen=True)
class Undefined:
    name: str
    weak: bool
    version: str | None  # e.g. GLIBCXX_3.4.29
    version_file: str | None  # the soname that must define that version


@dataclass
class ElfInfo:
    path: str
    soname: str | None
    machine: str
    needed: list[str]
    rpath: list[str]  # DT_RPATH (searched before LD_LIBRARY_PATH; ignored if RUNPATH set)
    runpath: list[str]  # DT_RUNPATH
    undefined: list[Undefined]
    exports: frozenset[str]
    version_defs: frozenset[str]  # versions this library defines (.gnu.version_d)
    version_needs: dict[str, frozenset[str]]  # soname -> versions required from it
    fatbin: list[FatbinEntry] = field(default_factory=list)

    @property
    def python_init(self) -> str | None:
        """The module name if this is a CPython extension module (exports PyInit_<name>)."""
        stem = Path(self.path).name.split(".", 1)[0]
        return stem if f"PyInit_{stem}" in self.exports else None


class NotElf(Exception):
    pass


def is_elf(head: bytes) -> bool:
    return head[:4] == b"\x7fELF"


def read_elf(source: Path | bytes, display_path: str | None = None, *,
             with_fatbin: bool = True) -> ElfInfo:
    """Parse one ELF file (a path, or the bytes of a wheel member). `with_fatbin=False`
    skips the device code section (hundreds of MB in libtorch_cuda), for runtime libraries
    whose architectures are not ours to check."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            return _read(handle, display_path or str(source), with_fatbin)
    return _read(io.BytesIO(source), display_path or "<bytes>", with_fatbin)


@functools.lru_cache(maxsize=4096)
def read_elf_cached(path: str, _size: int, _mtime: float) -> ElfInfo:
    return read_elf(Path(path), with_fatbin=False)


def read_runtime_elf(path: Path) -> ElfInfo:
    """Cached per (path, size, mtime): torch's libraries are read once per process."""
    st = path.stat()
    return read_elf_cached(str(path), st.st_size, st.st_mtime)


def _read(handle: BinaryIO, display: str, with_fatbin: bool) -> ElfInfo:
    try:
        elf = ELFFile(handle)
    except ELFError as exc:
        raise NotElf(f"{display}: {exc}") from None
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname = None
    dynamic = elf.get_section_by_name(".dynamic")
    if isinstance(dynamic, DynamicSection):
        for tag in dynamic.iter_tags():
            # pyelftools sets the string attribute named after the tag (needed, soname...).
            kind = tag.entry.d_tag
            if kind == "DT_NEEDED":
                needed.append(str(getattr(tag, "needed", "")))
            elif kind == "DT_SONAME":
                soname = str(getattr(tag, "soname", ""))
            elif kind in ("DT_RPATH", "DT_RUNPATH"):
                text = str(getattr(tag, kind[3:].lower(), ""))
                (rpath if kind == "DT_RPATH" else runpath).extend(p for p in text.split(":") if p)

    # Version index -> (version name, soname it comes from); index 0/1 = local/global.
    version_names: dict[int, tuple[str, str | None]] = {}
    version_defs: set[str] = set()
    version_needs: dict[str, set[str]] = {}
    for section in elf.iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for verneed, auxes in section.iter_versions():
                for aux in auxes:
                    version_names[aux.entry.vna_other] = (aux.name, verneed.name)
                    version_needs.setdefault(str(verneed.name), set()).add(aux.name)
        elif isinstance(section, GNUVerDefSection):
            for verdef, auxes in section.iter_versions():
                names = [aux.name for aux in auxes]
                if names and not verdef.entry.vd_flags & 0x1:  # skip VER_FLG_BASE (soname)
                    version_names[verdef.entry.vd_ndx] = (names[0], None)
                    version_defs.add(names[0])

    undefined: list[Undefined] = []
    exports: set[str] = set()
    dynsym = elf.get_section_by_name(".dynsym")
    versym_section = elf.get_section_by_name(".gnu.version")
    if dynsym is not None and dynsym["sh_type"] != "SHT_NOBITS":
        strtab = elf.get_section(dynsym["sh_link"]).data()
        versyms: list[int] = []
        if versym_section is not None:
            raw = versym_section.data()
            fmt = ("<" if elf.little_endian else ">") + "H"
            versyms = [v[0] for v in struct.iter_unpack(fmt, raw)]
        for index, (name_off, info, other, shndx) in enumerate(_symbols(elf, dynsym.data())):
            if index == 0 or not name_off:
                continue
            bind = info >> 4
            if bind not in (STB_GLOBAL, STB_WEAK):
                continue
            end = strtab.index(b"\0", name_off)
            name = strtab[name_off:end].decode("utf-8", "replace")
            if shndx == SHN_UNDEF:
                ver = versyms[index] & 0x7FFF if index < len(versyms) else 1
                vname, vfile = version_names.get(ver, (None, None))
                undefined.append(Undefined(name, bind == STB_WEAK, vname, vfile))
            elif (other & 0x3) in (STV_DEFAULT, STV_PROTECTED):
                if index < len(versyms) and versyms[index] & VERSYM_HIDDEN:
                    continue  # a non-default old version (name@VER): not what the loader binds
                exports.add(name)

    fatbin_section = elf.get_section_by_name(".nv_fatbin")
    fatbin = (sorted(set(parse_fatbin(fatbin_section.data())))
              if fatbin_section is not None and with_fatbin else [])
    return ElfInfo(path=display, soname=soname, machine=elf["e_machine"], needed=needed,
                   rpath=rpath, runpath=runpath, undefined=undefined,
                   exports=frozenset(exports), version_defs=frozenset(version_defs),
                   version_needs={k: frozenset(v) for k, v in version_needs.items()},
                   fatbin=fatbin)


def _symbols(elf: ELFFile, data: bytes) -> Iterable[tuple[int, int, int, int]]:
    """(st_name, st_info, st_other, st_shndx) for every entry of a symbol table."""
    order = "<" if elf.little_endian else ">"
    if elf.elfclass == 64:
        # Elf64_Sym: name u32, info u8, other u8, shndx u16, value u64, size u64
        for name, info, other, shndx, _v, _s in struct.iter_unpack(order + "IBBHQQ", data):
            yield name, info, other, shndx
    else:
        # Elf32_Sym: name u32, value u32, size u32, info u8, other u8, shndx u16
        for name, _v, _s, info, other, shndx in struct.iter_unpack(order + "IIIBBH", data):
            yield name, info, other, shndx


# ----------------------------------------------------------------------- demangling

@functools.lru_cache(maxsize=1)
def _cxa_demangle() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    # The C++ runtime's own demangler (what c++filt uses), through ctypes: no binutils
    # needed on the machine that verifies.
    name = ctypes.util.find_library("stdc++") or "libstdc++.so.6"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    func = lib.__cxa_demangle
    func.restype = ctypes.c_void_p
    func.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_size_t),
                     ctypes.POINTER(ctypes.c_int)]
    return func


def demangle(name: str) -> str:
    if not name.startswith("_Z"):
        return name
    func = _cxa_demangle()
    if func is None:
        return name
    status = ctypes.c_int()
    pointer = func(name.encode(), None, None, ctypes.byref(status))
    if not pointer or status.value != 0:
        return name
    try:
        return ctypes.string_at(pointer).decode("utf-8", "replace")
    finally:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.free(ctypes.c_void_p(pointer))


def version_key(version: str) -> tuple[str, tuple[int, ...]]:
    """GLIBCXX_3.4.29 -> ("GLIBCXX", (3, 4, 29)), for 'highest required' reporting."""
    prefix, _, number = version.partition("_")
    parts = tuple(int(p) for p in number.split(".") if p.isdigit())
    return prefix, parts


def expand_origin(entry: str, origin: str) -> str:
    return os.path.normpath(entry.replace("$ORIGIN", origin).replace("${ORIGIN}", origin))
