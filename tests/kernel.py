"""BPF program accounting shared by the tests: what the kernel has loaded, and for whom."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path


def bpf_prog_ids(pid: int | str = "self") -> dict[int, str]:
    """BPF programs held open by a process: prog id -> name (via bpftool, ids from fdinfo)."""
    ids = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-prog":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:  # fd closed meanwhile
            continue
        ids.update(int(line.split()[1]) for line in info.splitlines() if line.startswith("prog_id:"))
    return {pid_: name for pid_, name in loaded_programs().items() if pid_ in ids}


def loaded_programs() -> dict[int, str]:
    """Every BPF program in the kernel: id -> name, as `bpftool prog show` lists them."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], check=True, capture_output=True,
                         text=True).stdout
    return {p["id"]: p.get("name", "") for p in json.loads(out)}


def bpf_map_entries(pid: int | str = "self") -> dict[str, int]:
    """Entries in each hash map a process holds open: map name -> count (via bpftool)."""
    ids = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) != "anon_inode:bpf-map":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        if fields.get("map_type", "").strip() in ("1", "9"):  # BPF_MAP_TYPE_HASH, LRU_HASH
            ids.add(int(fields["map_id"]))
    out = {}
    for map_id in ids:
        run = partial(subprocess.run, check=True, capture_output=True, text=True)
        name = json.loads(run(["bpftool", "map", "show", "id", str(map_id), "--json"]).stdout)["name"]
        out[name] = len(json.loads(run(["bpftool", "map", "dump", "id", str(map_id), "--json"]).stdout))
    return out


def still_loaded(ids: Iterable[int], within_s: float = 2.0) -> set[int]:
    """Which of these programs are still in the kernel after up to within_s: the kernel frees a
    tracing program asynchronously (after an RCU grace period) once its last fd and link go."""
    wanted = set(ids)
    deadline = time.monotonic() + within_s
    while True:
        left = wanted & loaded_programs().keys()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
