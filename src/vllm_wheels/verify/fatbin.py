"""Read which GPU architectures a shared object or object file carries, in pure Python
(no cuobjdump: it is not in the CUDA pip wheels). The ELF side uses pyelftools, the
well-kept ELF reader of the Python ecosystem, rather than hand-written ELF parsing.

The fatbin container (section `.nv_fatbin`) is a sequence of blobs, each starting with
the 16-byte header {magic 0xBA55ED50, version u16, header size u16, payload size u64},
followed by entries {kind u16 (1 = PTX, 2 = ELF/SASS), version u16, header size u32,
payload size u64, ..., arch u32 at offset 28, ..., flags u64 at offset 40}. In the flags,
bit 20 marks an arch-specific `a` target (sm_120a) and bit 21 a family `f` target
(sm_120f); both were checked against `cuobjdump -elf` of nvcc 13.0 output. Payloads may be
compressed, which is why grepping for "sm_120" finds nothing; the entry header is never
compressed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from elftools.elf.elffile import ELFFile

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX = 1
KIND_ELF = 2
FLAG_ARCH_SPECIFIC = 1 << 20  # sm_XYa
FLAG_FAMILY = 1 << 21  # sm_XYf


@dataclass(frozen=True, order=True)
class FatbinEntry:
    kind: str  # "sass" or "ptx"
    arch: int  # 120 for sm_120 / compute_120
    variant: str = ""  # "", "a" (arch-specific) or "f" (family)

    @property
    def name(self) -> str:
        """cuobjdump's spelling: sm_120a for a cubin, compute_120 for PTX."""
        return f"{'sm' if self.kind == 'sass' else 'compute'}_{self.arch}{self.variant}"

    def runs_on(self, major: int, minor: int) -> bool:
        """CUDA's compatibility rules for a GPU of compute capability major.minor:
        a plain cubin runs on its own major at an equal or higher minor; an `a` cubin only
        on its exact arch; an `f` cubin within its family (same major, equal or higher
        minor); PTX is JIT-compiled by the driver for any equal or newer GPU."""
        own_major, own_minor = divmod(self.arch, 10)
        if self.kind == "ptx":
            return (major, minor) >= (own_major, own_minor)
        if self.variant == "a":
            return (major, minor) == (own_major, own_minor)
        return major == own_major and minor >= own_minor

    def __str__(self) -> str:
        return self.name if self.kind == "sass" else f"{self.name} (PTX)"


def parse_fatbin(data: bytes) -> list[FatbinEntry]:
    entries: list[FatbinEntry] = []
    offset = 0
    while offset + 16 <= len(data):
        magic, _version, header_size, fat_size = struct.unpack_from("<IHHQ", data, offset)
        if magic != FATBIN_MAGIC:
            # Blobs are padded/aligned inside the section; scan forward for the next one.
            next_magic = data.find(struct.pack("<I", FATBIN_MAGIC), offset + 1)
            if next_magic < 0:
                break
            offset = next_magic
            continue
        pos = offset + header_size
        end = pos + fat_size
        while pos + 32 <= min(end, len(data)):
            kind, _ver, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
            arch = struct.unpack_from("<I", data, pos + 28)[0]
            flags = struct.unpack_from("<Q", data, pos + 40)[0] if entry_header >= 48 else 0
            variant = "a" if flags & FLAG_ARCH_SPECIFIC else "f" if flags & FLAG_FAMILY else ""
            if kind in (KIND_PTX, KIND_ELF) and entry_header:
                entries.append(FatbinEntry("ptx" if kind == KIND_PTX else "sass", arch, variant))
            if entry_header == 0:
                break
            pos += entry_header + payload
        offset = max(end, offset + 16)
    return entries


def read_archs(path: Path | BinaryIO) -> list[FatbinEntry]:
    """Every architecture entry of every fatbin in an ELF file (empty: no device code)."""
    if isinstance(path, Path):
        with path.open("rb") as handle:
            return read_archs(handle)
    section = ELFFile(path).get_section_by_name(".nv_fatbin")
    if section is None:
        return []
    return sorted(set(parse_fatbin(section.data())))
