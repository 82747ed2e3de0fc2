"""Containerfile: no container engine runs here (docker is a client without a daemon), so the
instructions are replayed on this Debian 12 machine for what a broken image would not show at
build time: stale host objects, a default command that is not the sidecar, a version label that
is not the package's, a runtime without the library the loader opens. Not replayed: apt-get and
the wheel build, which need the network."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from .conftest import REPO

CONTAINERFILE = REPO / "Containerfile"
EM_BPF = 247  # ELF e_machine of BPF objects


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def ignored(relative: str) -> bool:
    """.containerignore, as the engine applies it to the build context (`**/` at any depth)."""
    for pattern in (REPO / ".containerignore").read_text().split():
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(regex + "(/.*)?", relative):
            return True
    return False


def copy_context(stage: list[tuple[str, str]], workdir: Path) -> None:
    """The stage's COPY instructions (relative destinations) from the filtered repository."""
    for word, rest in stage:
        if word != "COPY":
            continue
        *sources, dest = shlex.split(rest)
        for source in sources:
            src, target = REPO / source, workdir / dest
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True, ignore=lambda d, names: [
                    n for n in names if ignored(str((Path(d) / n).relative_to(REPO)))])
            elif not ignored(source):
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target / src.name if dest.endswith("/") else target)


def console(*argv: str) -> subprocess.CompletedProcess[str]:
    """argv run as the image runs it: argv[0] is the console script the installed package declares."""
    code = ("import sys; from importlib.metadata import entry_points; "
            "[script] = entry_points(group='console_scripts', name=sys.argv[1]); "
            "sys.argv = sys.argv[1:]; sys.exit(script.load()())")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=30)


def exec_form(stage: list[tuple[str, str]], word: str) -> list[str]:
    # Not JSON would make the engine run the text through /bin/sh -c (and drop CMD).
    [argv] = [json.loads(rest) for w, rest in stage if w == word]
    return argv


BUILD_TOOLS = ("clang-16", "llvm-strip-16", "bpftool")


@pytest.mark.skipif(not (all(map(shutil.which, BUILD_TOOLS)) and os.access("/sys/kernel/btf/vmlinux", os.R_OK)),
                    reason=f"needs the build stage's tools ({', '.join(BUILD_TOOLS)}: make install) and kernel BTF")
def test_build_stage_builds_every_probe_itself_into_the_packaged_place(tmp_path: Path) -> None:
    build = stages()[0]
    copy_context(build, tmp_path)
    objects = tmp_path / "beyla_sidecar" / "bpf" / "objects"
    # objects built on the host would be older than nothing make sees: they must stay out
    assert not objects.exists() and not (tmp_path / "probes" / "vmlinux.h").exists()
    [make] = [rest for word, rest in build if word == "RUN" and rest.startswith("make ")]
    proc = subprocess.run(["sh", "-c", make], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    built = sorted(objects.iterdir())
    assert [o.name for o in built] == sorted(s.name.removesuffix(".c") + ".o" for s in (REPO / "probes").glob("*.bpf.c"))
    assert all(int.from_bytes(o.read_bytes()[18:20], "little") == EM_BPF for o in built)
    project = tomllib.loads((tmp_path / "pyproject.toml").read_text())
    # the wheel ships them (package data), and the wheel build finds the metadata it reads
    shipped = project["tool"]["setuptools"]["package-data"]["beyla_sidecar"]
    assert all(any(fnmatch(f"bpf/objects/{o.name}", p) for p in shipped) for o in built)
    assert (tmp_path / project["project"]["readme"]).is_file()


def test_default_command_is_the_packaged_sidecar_run() -> None:
    runtime = stages()[1]
    # --help appended: the subcommand exists and argparse names it
    proc = console(*exec_form(runtime, "ENTRYPOINT"), *exec_form(runtime, "CMD"), "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: beyla-sidecar run ")


def test_version_label_is_what_the_packaged_command_reports() -> None:
    args = dict(rest.split("=", 1) for word, rest in instructions() if word == "ARG" and "=" in rest)
    labels = dict(item.split("=", 1) for word, rest in stages()[1] if word == "LABEL" for item in shlex.split(rest))
    proc = console(*exec_form(stages()[1], "ENTRYPOINT"), "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == string.Template(labels["org.opencontainers.image.version"]).substitute(args) + "\n"


def test_runtime_installs_the_library_the_loader_opens() -> None:
    words = [w for word, rest in stages()[1] if word == "RUN" for w in shlex.split(rest)]
    start = words.index("install", words.index("apt-get")) + 1
    end = next((i for i, w in enumerate(words[start:], start) if w in ("&&", "||", ";")), len(words))
    packages = [w for w in words[start:end] if not w.startswith("-")]
    listing = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True)
    if listing.returncode != 0:
        pytest.skip(f"{' '.join(packages)} not installed here (make install): {listing.stderr.strip()}")
    # beyla_sidecar/bpf/libbpf.py: ctypes.CDLL("libbpf.so.1")
    assert any(Path(line).name == "libbpf.so.1" for line in listing.stdout.splitlines())
