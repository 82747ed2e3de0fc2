"""Offsets of the _asyncio Task functions, from symbols and from the module's static structs."""

from __future__ import annotations

import _asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from beyla_sidecar.discover.asyncio_hooks import ASYNCIO_HOOKS, _from_data, classify_asyncio
from beyla_sidecar.discover.elf import PF_X, Elf, open_elf

RUNNING = Path(_asyncio.__file__)
DEBIAN = Path("/usr/lib/python3.11/lib-dynload/_asyncio.cpython-311-x86_64-linux-gnu.so")
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
MODULE_NAME = "_asyncio.cpython-311-x86_64-linux-gnu.so"

# Stand-ins of the three structs with CPython 3.11's 64-bit layouts, for the pointer encodings
# the real modules here do not use (non-PIE executable, packed RELR relocations).
STAND_INS = r"""
static long _asyncio_Task___init__(void *self, void *args, void *kwds) { return (long)self + 1; }
static long TaskStepMethWrapper_call(void *o, void *args, void *kwds) { return (long)o + 2; }
static long task_wakeup(void *task, void *o) { return (long)task + 3; }
void *TaskType[50] = {(void *)1, 0, 0, "_asyncio.Task", (void *)200, [37] = (void *)_asyncio_Task___init__};
void *TaskStepMethWrapper_Type[50] = {(void *)1, 0, 0, "TaskStepMethWrapper", (void *)48,
                                      [16] = (void *)TaskStepMethWrapper_call};
struct { const char *ml_name; void *ml_meth; int ml_flags; const char *ml_doc; } TaskWakeupDef =
    {"task_wakeup", (void *)task_wakeup, 0x0008, 0};
int main(void) { return 0; }
"""


SYMBOLS = {"_asyncio_Task___init__": "task_init", "TaskStepMethWrapper_call": "task_step",
           "task_wakeup": "task_wakeup"}


def from_symbols(elf: Elf) -> dict[str, int]:
    """The hooks by their .symtab names (all three, or {})."""
    offsets = elf.function_offsets(SYMBOLS)
    return {SYMBOLS[name]: offset for name, offset in offsets.items()} if len(offsets) == len(SYMBOLS) else {}


def in_code(path: Path, offset: int) -> bool:
    with open_elf(str(path)) as elf:
        return any(s.flags & PF_X and s.offset <= offset < s.offset + s.filesz for s in elf.loads)


def test_data_path_finds_the_symbols_of_the_unstripped_module() -> None:
    with open_elf(str(RUNNING)) as elf:
        symbols = from_symbols(elf)
        if not symbols:
            pytest.skip(f"{RUNNING} has no symbols of the three functions")
        assert set(symbols) == set(ASYNCIO_HOOKS)
        assert _from_data(elf) == symbols
    assert classify_asyncio(str(RUNNING), str(RUNNING)) == symbols


@pytest.mark.skipif(not DEBIAN.exists(), reason=f"no {DEBIAN}")
def test_stripped_debian_module_is_hooked_through_its_data() -> None:
    with open_elf(str(DEBIAN)) as elf:
        assert from_symbols(elf) == {}  # stripped: only the data leads to the functions
    found = classify_asyncio(str(DEBIAN), str(DEBIAN))
    assert set(found) == set(ASYNCIO_HOOKS) and len(set(found.values())) == 3
    assert all(in_code(DEBIAN, offset) for offset in found.values())
    if DEBIAN_PYTHON.read_bytes()[:4] == b"\x7fELF":
        # Debian builds _asyncio as the lib-dynload module above, not into the interpreter.
        assert classify_asyncio(str(DEBIAN_PYTHON), str(DEBIAN_PYTHON)) == {}


@pytest.mark.parametrize("flags, name", [(["-no-pie"], "python3.11"),
                                         (["-shared", "-fPIC", "-Wl,-z,pack-relative-relocs"], MODULE_NAME)])
def test_pointers_stored_in_place_are_followed(tmp_path: Path, flags: list[str], name: str) -> None:
    (tmp_path / "m.c").write_text(STAND_INS)
    built = subprocess.run(["cc", "-O2", *flags, "-o", tmp_path / name, tmp_path / "m.c"], capture_output=True)
    if built.returncode:
        pytest.skip(f"cc {' '.join(flags)} failed: {built.stderr.decode()[-200:]}")
    with open_elf(str(tmp_path / name)) as elf:
        symbols = from_symbols(elf)
        assert set(symbols) == set(ASYNCIO_HOOKS) and _from_data(elf) == symbols
    subprocess.run(["strip", tmp_path / name], check=True)
    assert classify_asyncio(str(tmp_path / name), str(tmp_path / name)) == symbols


def libc() -> Path:
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "/libc.so" in line or "/libc-" in line:
            return Path(line.split()[-1])
    raise AssertionError("no libc mapped")


def test_other_files_have_no_hooks(tmp_path: Path) -> None:
    text = tmp_path / "python3"
    text.write_text("#!/bin/sh\nexec python3.11 \"$@\"\n")
    empty = tmp_path / "_asyncio.so"
    empty.touch()
    others = [libc(), text, empty, *Path("/usr/lib/x86_64-linux-gnu").glob("libssl.so.3")]
    for path in others:
        # A display path that passes the name filter, so the file itself is looked at.
        assert classify_asyncio(str(path), "/usr/lib/libpython3.11.so.1.0") == {}, path
    module = RUNNING.read_bytes()
    truncated = tmp_path / MODULE_NAME
    for size in (4, 64, 4096, len(module) // 2, len(module) - 1):
        truncated.write_bytes(module[:size])
        assert classify_asyncio(str(truncated), str(truncated)) == {}, size


def test_only_files_named_like_the_module_are_opened(tmp_path: Path) -> None:
    expected = classify_asyncio(str(RUNNING), str(RUNNING))
    assert set(expected) == set(ASYNCIO_HOOKS)
    copy = tmp_path / "libfoo.so"
    shutil.copy(RUNNING, copy)
    assert classify_asyncio(str(copy), str(copy)) == {}
    # The process's own path decides, not the host-reachable one.
    assert classify_asyncio(str(copy), f"/usr/lib/python3.11/lib-dynload/{MODULE_NAME}") == expected
    for name in ("python3.11", "libpython3.11.so.1.0"):
        assert classify_asyncio(str(copy), f"/usr/bin/{name}") == expected


@pytest.mark.parametrize("name", ["_asyncio.cpython-312-x86_64-linux-gnu.so", "python3.13", "libpython3.7m.so.1.0"])
def test_versions_with_another_layout_are_not_hooked(tmp_path: Path, name: str) -> None:
    """3.12 made the types heap types; versions before 3.8 were not verified."""
    shutil.copy(RUNNING, tmp_path / name)
    assert classify_asyncio(str(tmp_path / name), str(tmp_path / name)) == {}
