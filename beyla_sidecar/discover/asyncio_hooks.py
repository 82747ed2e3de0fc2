"""Where CPython's _asyncio accelerator runs Tasks: file offsets of three of its functions.

task_init: _asyncio_Task___init__, tp_init of the type "_asyncio.Task";
task_step: TaskStepMethWrapper_call, tp_call of the type "TaskStepMethWrapper";
task_wakeup: task_wakeup, ml_meth of the PyMethodDef "task_wakeup".

They are static functions, named only in .symtab, which distributions strip from lib-dynload.
CPython 3.8-3.11 define the module's types as static PyTypeObjects, so the functions remain
reachable through the data: the struct whose name field points at the string holds the function
pointer at a fixed offset. That path is taken even when symbols are there: finding the structs
as 3.8-3.11 lay them out is what says the probes' reading of the functions' arguments holds
(3.12 made the types heap types and changed the Task step). A pointer is read as the file
stores it: the addend of a RELATIVE dynamic relocation in a PIE or shared object, the 8 bytes
themselves in a non-PIE executable or under packed (RELR) relocations.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .elf import ET_EXEC, PF_W, PF_X, SHT_RELA, SHT_RELR, Elf, ElfError, open_elf

ASYNCIO_HOOKS = ("task_init", "task_step", "task_wakeup")

# The module is a lib-dynload .so, or built into the interpreter or libpython.
_FILE_NAME = re.compile(r"_asyncio.*\.so.*|python3.*|libpython3.*\.so.*")
# The CPython version a file name gives (_asyncio.cpython-311-..., python3.11, libpython3.11.so)
_VERSION = re.compile(r"(?:cpython-3|python3\.)(\d+)")
_LAYOUT_VERSIONS = range(8, 12)

_ELF64_LE = b"\x02\x01"  # e_ident[EI_CLASS], e_ident[EI_DATA]
_RELATIVE = {62: 8, 183: 1027}  # e_machine -> R_X86_64_RELATIVE, R_AARCH64_RELATIVE
_RELA = struct.Struct("<QQq")  # r_offset r_info r_addend
_POINTER = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class _Struct:
    """A static C struct leading to one hook: found by its name field, told from other
    references to the name by fields of known value, holding the function pointer."""

    name: bytes
    name_at: int
    function_at: int
    fixed: tuple[tuple[int, bytes], ...]  # (offset, bytes) the struct holds in the file


# PyVarObject_HEAD_INIT(NULL, 0): ob_refcnt 1, ob_type NULL (set by PyType_Ready), ob_size 0.
_STATIC_TYPE_HEAD = ((0, struct.pack("<QQQ", 1, 0, 0)),)
# 64-bit PyTypeObject (Include/cpython/object.h): tp_name at 24, tp_call at 128, tp_init at 296.
# PyMethodDef: ml_name at 0, ml_meth at 8, ml_flags (int) at 16, METH_O for task_wakeup.
_STRUCTS = {
    "task_init": _Struct(b"_asyncio.Task", 24, 296, _STATIC_TYPE_HEAD),
    "task_step": _Struct(b"TaskStepMethWrapper", 24, 128, _STATIC_TYPE_HEAD),
    "task_wakeup": _Struct(b"task_wakeup", 0, 8, ((16, struct.pack("<i", 0x0008)),)),
}


class _Pointers:
    """The 8-byte pointers a file stores in its data, as it stores them."""

    def __init__(self, elf: Elf) -> None:
        self._elf = elf
        self._relative = _RELATIVE[elf.machine]
        self._relas = [s for s in elf.sections if s.type == SHT_RELA and s.entsize == _RELA.size]
        # Pointers that are only file bytes: a non-PIE has no RELATIVE relocations, RELR keeps no addends.
        self._in_place = elf.type == ET_EXEC or any(s.type == SHT_RELR for s in elf.sections)

    def _relocations(self) -> Iterator[tuple[int, int]]:
        """(slot, value) of every RELATIVE relocation."""
        data = self._elf.data
        for s in self._relas:
            count = max(min(s.offset + s.size, len(data)) - s.offset, 0) // _RELA.size
            for r_offset, r_info, r_addend in _RELA.iter_unpack(data[s.offset:s.offset + count * _RELA.size]):
                if r_info == self._relative:
                    yield r_offset, r_addend

    def _stored(self, value: int) -> Iterator[int]:
        """Aligned slots of the writable segments whose file bytes are `value`."""
        needle = _POINTER.pack(value)
        for seg in self._elf.loads:
            if not seg.flags & PF_W:
                continue
            end = seg.offset + seg.filesz
            at = self._elf.data.find(needle, seg.offset, end)
            while at >= 0:
                slot = at - seg.offset + seg.vaddr
                if slot % _POINTER.size == 0:
                    yield slot
                at = self._elf.data.find(needle, at + 1, end)

    def slots(self, values: set[int]) -> set[tuple[int, int]]:
        """(slot, value) of the slots pointing at any of `values`."""
        found = {(slot, value) for slot, value in self._relocations() if value in values}
        if self._in_place:
            found.update((slot, value) for value in values for slot in self._stored(value))
        return found

    def values(self, slots: set[int]) -> dict[int, int]:
        """The pointer at each of `slots` that the file holds one for."""
        found = {slot: value for slot, value in self._relocations() if slot in slots}
        for slot in slots - found.keys():
            raw = self._elf.read(slot, _POINTER.size)
            if raw is not None:
                found[slot] = _POINTER.unpack(raw)[0]
        return found


def _strings(elf: Elf, name: bytes) -> set[int]:
    """Virtual addresses of the loaded C strings equal to `name` (tails of longer strings
    included: the linker may merge a string into one it ends)."""
    needle = name + b"\0"
    found: set[int] = set()
    at = elf.data.find(needle)
    while at >= 0:
        address = elf.address(at)
        if address is not None:
            found.add(address)
        at = elf.data.find(needle, at + 1)
    return found


def _code_offset(elf: Elf, vaddr: int) -> int | None:
    """The file offset of `vaddr` if it lies in an executable segment."""
    seg = elf.segment(vaddr)
    return vaddr - seg.vaddr + seg.offset if seg is not None and seg.flags & PF_X else None


def _bases(elf: Elf, s: _Struct, name_slots: set[int]) -> set[int]:
    """Addresses of the structs `s` among those whose name field is one of `name_slots`."""
    bases = {slot - s.name_at for slot in name_slots}
    return {b for b in bases if all(elf.read(b + at, len(value)) == value for at, value in s.fixed)}


def _from_data(elf: Elf) -> dict[str, int]:
    """The hooks found through the module's static structs (ELF64 little-endian x86_64 or
    aarch64 only), or {} unless each is exactly one function."""
    strings = {hook: _strings(elf, s.name) for hook, s in _STRUCTS.items()}
    if not all(strings.values()):
        return {}
    pointers = _Pointers(elf)
    named = pointers.slots(set[int]().union(*strings.values()))
    slots: dict[str, set[int]] = {}  # hook -> function pointer slots
    for hook, s in _STRUCTS.items():
        name_slots = {slot for slot, value in named if value in strings[hook]}
        slots[hook] = {base + s.function_at for base in _bases(elf, s, name_slots)}
    values = pointers.values(set[int]().union(*slots.values()))
    found: dict[str, int] = {}
    for hook in _STRUCTS:
        code = {o for slot in slots[hook] if slot in values and (o := _code_offset(elf, values[slot])) is not None}
        if len(code) != 1:
            return {}
        found[hook] = code.pop()
    return found


def classify_asyncio(path: str, display_path: str) -> dict[str, int]:
    """File offsets (for uprobes) of ASYNCIO_HOOKS in the file at `path` (a host-reachable
    path; `display_path` is the process's own path of it, matched against the module's
    file names), or {} when it is not a CPython _asyncio that can be hooked."""
    name = os.path.basename(display_path)
    version = _VERSION.search(name)
    if not _FILE_NAME.fullmatch(name) or (version and int(version.group(1)) not in _LAYOUT_VERSIONS):
        return {}
    try:
        with open_elf(path) as elf:
            if elf.data[4:6] != _ELF64_LE or elf.machine not in _RELATIVE:
                return {}
            return _from_data(elf)
    except (OSError, ElfError, ValueError):
        return {}
