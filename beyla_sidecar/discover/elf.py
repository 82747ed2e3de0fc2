"""Just enough ELF to find functions and sections: 32/64-bit, either byte order.

Uprobes take a *file offset*; a symbol gives a virtual address, which the PT_LOAD segment
containing it turns into one (what libbpf does for symbol names, done here once per file
instead of once per attach).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

ET_EXEC = 2
SHT_SYMTAB = 2
SHT_RELA = 4
SHT_DYNSYM = 11
SHT_NOBITS = 8
SHT_RELR = 19
PT_LOAD = 1
PF_X = 1
PF_W = 2
STT_FUNC = 2
STT_GNU_IFUNC = 10
SHN_UNDEF = 0


class ElfError(ValueError):
    """Not an ELF file, or one too damaged to read."""


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass(frozen=True, slots=True)
class Segment:
    """A PT_LOAD segment."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int


@dataclass(frozen=True, slots=True)
class _Layout:
    """struct formats of one ELF class and byte order."""

    header: struct.Struct  # from e_type on
    section: struct.Struct  # name type flags addr offset size link info align entsize
    segment: struct.Struct
    symbol: struct.Struct
    segment_order: tuple[int, int, int, int, int, int]  # p_type p_offset p_vaddr p_memsz p_filesz p_flags
    symbol_order: tuple[int, int, int, int]  # indexes of st_name, st_info, st_shndx, st_value


def _layout(ei_class: int, ei_data: int) -> _Layout:
    e = {1: "<", 2: ">"}.get(ei_data)
    if e is None or ei_class not in (1, 2):
        raise ElfError("unknown ELF class or byte order")
    if ei_class == 2:
        return _Layout(struct.Struct(e + "HHIQQQIHHHHHH"), struct.Struct(e + "IIQQQQIIQQ"),
                       struct.Struct(e + "IIQQQQQQ"), struct.Struct(e + "IBBHQQ"), (0, 2, 3, 6, 5, 1), (0, 1, 3, 4))
    return _Layout(struct.Struct(e + "HHIIIIIHHHHHH"), struct.Struct(e + "IIIIIIIIII"),
                   struct.Struct(e + "IIIIIIII"), struct.Struct(e + "IIIBBH"), (0, 1, 2, 5, 4, 6), (0, 3, 5, 1))


class Elf:
    """A parsed ELF image over `data` (bytes or an mmap)."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        if data[:4] != b"\x7fELF" or len(data) < 64:
            raise ElfError("not an ELF file")
        self.data = data
        self._l = _layout(data[4], data[5])
        try:
            self._read_headers()
        except struct.error as exc:
            raise ElfError(f"truncated ELF headers: {exc}") from None

    def _read_headers(self) -> None:
        h = self._l.header.unpack_from(self.data, 16)
        self.type: int = h[0]
        self.machine: int = h[1]
        phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx = h[4], h[5], h[8], h[9], h[10], h[11], h[12]
        p_type, p_offset, p_vaddr, p_memsz, p_filesz, p_flags = self._l.segment_order
        self.loads: list[Segment] = []
        for i in range(phnum):
            seg = self._l.segment.unpack_from(self.data, phoff + i * phentsize)
            if seg[p_type] == PT_LOAD:
                self.loads.append(Segment(seg[p_vaddr], seg[p_memsz], seg[p_offset], seg[p_filesz], seg[p_flags]))
        raw = [self._l.section.unpack_from(self.data, shoff + i * shentsize) for i in range(shnum)]
        names = raw[shstrndx] if 0 <= shstrndx < len(raw) else None
        self.sections: list[Section] = []
        for s in raw:
            name = self._string(names[4], s[0]) if names else ""
            self.sections.append(Section(name, s[1], s[4], s[5], s[6], s[9]))

    def _string(self, table_offset: int, index: int) -> str:
        start = table_offset + index
        end = self.data.find(b"\0", start)
        return bytes(self.data[start:end if end >= 0 else start]).decode("utf-8", "replace")

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def segment(self, vaddr: int) -> Segment | None:
        return next((s for s in self.loads if s.vaddr <= vaddr < s.vaddr + s.memsz), None)

    def file_offset(self, vaddr: int) -> int | None:
        seg = self.segment(vaddr)
        return None if seg is None else vaddr - seg.vaddr + seg.offset

    def address(self, offset: int) -> int | None:
        """The virtual address the byte at file `offset` is loaded at, if it is."""
        for seg in self.loads:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        return None

    def read(self, vaddr: int, size: int) -> bytes | None:
        """The `size` bytes the file holds at `vaddr`, None where it holds none (bss, outside)."""
        seg = self.segment(vaddr)
        if seg is None or vaddr + size > seg.vaddr + seg.filesz:
            return None
        start = vaddr - seg.vaddr + seg.offset
        raw = bytes(self.data[start:start + size])
        return raw if len(raw) == size else None

    def _symbols(self, table: Section) -> Iterator[tuple[int, int, int, int]]:
        """(st_name, st_info, st_shndx, st_value) of every entry of a symbol table."""
        sym = self._l.symbol
        if table.type == SHT_NOBITS or table.entsize != sym.size:
            return
        name_i, info_i, shndx_i, value_i = self._l.symbol_order
        count = (min(table.offset + table.size, len(self.data)) - table.offset) // sym.size
        for fields in sym.iter_unpack(self.data[table.offset:table.offset + count * sym.size]):
            yield fields[name_i], fields[info_i], fields[shndx_i], fields[value_i]

    def function_offsets(self, names: Iterable[str]) -> dict[str, int]:
        """File offsets of the defined functions among `names`, from .dynsym and .symtab."""
        wanted = {n.encode() for n in names}
        found: dict[str, int] = {}
        for table in self.sections:
            if table.type not in (SHT_DYNSYM, SHT_SYMTAB) or not 0 <= table.link < len(self.sections):
                continue
            strtab = self.sections[table.link]
            strings = self.data[strtab.offset:strtab.offset + strtab.size]
            # Most files have none of the names: one search of the string table says so.
            if not any(strings.find(n + b"\0") >= 0 for n in wanted):
                continue
            for st_name, st_info, st_shndx, st_value in self._symbols(table):
                if st_shndx == SHN_UNDEF or (st_info & 0xF) not in (STT_FUNC, STT_GNU_IFUNC):
                    continue
                end = strings.find(b"\0", st_name)
                name = strings[st_name:end] if end >= 0 else b""
                if name in wanted:
                    offset = self.file_offset(st_value)
                    if offset is not None:
                        found[name.decode()] = offset
        return found


@contextmanager
def open_elf(path: str) -> Iterator[Elf]:
    """The ELF file at `path`, memory-mapped read-only for the duration."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size < 64:
            raise ElfError("not an ELF file")
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as data:
            yield Elf(data)
    finally:
        os.close(fd)
