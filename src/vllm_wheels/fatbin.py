"""Read which GPU architectures a shared object or object file carries, in pure Python
(no cuobjdump: it is not in the CUDA pip wheels). The ELF side uses pyelftools, the
well-kept ELF reader of the Python ecosystem, rather than hand-written ELF parsing.

The fatbin container (section `.nv_fatbin`) is a sequence of blobs, each starting with
the 16-byte header {magic 0xBA55ED50, version u16, header size u16, payload size u64},
followed by entries {kind u16 (1 = PTX, 2 = ELF/SASS), version u16, header size u32,
payload size u64, ..., arch u32 at offset 28, ...}. Payloads may be compressed, which is
why grepping for "sm_120" finds nothing; the entry header is never compressed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX = 1
KIND_ELF = 2


@dataclass(frozen=True, order=True)
class FatbinEntry:
    kind: str  # "sass" or "ptx"
    arch: int  # 120 for sm_120 / compute_120

    def __str__(self) -> str:
        return f"sm_{self.arch}" if self.kind == "sass" else f"compute_{self.arch} (PTX)"


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
            if kind in (KIND_PTX, KIND_ELF) and entry_header:
                entries.append(FatbinEntry("ptx" if kind == KIND_PTX else "sass", arch))
            if entry_header == 0:
                break
            pos += entry_header + payload
        offset = max(end, offset + 16)
    return entries


def read_archs(path: Path) -> list[FatbinEntry]:
    """Every architecture entry of every fatbin in an ELF file (empty: no device code)."""
    with path.open("rb") as handle:
        elf = ELFFile(handle)
        section = elf.get_section_by_name(".nv_fatbin")
        if section is None:
            return []
        return sorted(set(parse_fatbin(section.data())))
