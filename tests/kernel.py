"""BPF program accounting shared by the tests: what the kernel has loaded, and for whom."""

from __future__ import annotations

import json
import os
import subprocess
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
