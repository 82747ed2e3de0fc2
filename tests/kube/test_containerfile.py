"""Containerfile: no container engine here, so its structure is checked against the repository.

What was also checked by hand (not in this test, it needs PyPI): the build stage's two steps,
`make -C probes CLANG=clang-16 STRIP=llvm-strip-16` then a wheel build, run on this Debian 12
machine with the same Debian packages, give a wheel holding beyla_sidecar/bpf/objects/*.bpf.o and
the `beyla-sidecar` console script.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib

import pytest

from .conftest import REPO

CONTAINERFILE = REPO / "Containerfile"


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


def test_two_stages_with_the_right_bases():
    build, runtime = stages()
    assert build[0] == ("FROM", "debian:bookworm AS build")
    assert runtime[0] == ("FROM", "python:3.11-slim-bookworm")


def test_build_stage_compiles_probes_and_builds_a_wheel():
    build = stages()[0]
    runs = " ".join(rest for word, rest in build if word == "RUN")
    for pkg in ("clang-16", "libbpf-dev", "bpftool", "make"):
        assert re.search(rf"\b{re.escape(pkg)}\b", runs), pkg
    assert "make -C probes" in runs
    assert "-m build --wheel" in runs
    copies = [shlex.split(rest) for word, rest in build if word == "COPY"]
    for args in copies:
        for src in args[:-1]:
            assert (REPO / src.rstrip("/")).exists(), f"COPY source {src} missing from the repository"
    copied = {s.rstrip("/") for args in copies for s in args[:-1]}
    assert {"pyproject.toml", "probes", "beyla_sidecar"} <= copied
    assert (REPO / "probes" / "Makefile").exists()
    # The Makefile takes the variables the Containerfile passes.
    makefile = (REPO / "probes" / "Makefile").read_text()
    assert "CLANG ?=" in makefile and "STRIP ?=" in makefile
    assert "bpf/objects" in makefile


def test_runtime_stage():
    runtime = stages()[1]
    runs = " ".join(rest for word, rest in runtime if word == "RUN")
    assert re.search(r"\blibbpf1\b", runs)
    assert "pip install --no-cache-dir /tmp/dist/*.whl" in runs
    assert ("COPY", "--from=build /dist/ /tmp/dist/") in runtime
    assert ("ENTRYPOINT", '["beyla-sidecar"]') in runtime
    assert ("CMD", '["run"]') in runtime
    labels = " ".join(rest for word, rest in runtime if word == "LABEL")
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert not any(word == "USER" for word, _ in runtime)  # the sidecar needs uid 0; the chart sets the webhook's


def test_package_ships_the_objects_and_the_command():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["beyla-sidecar"] == "beyla_sidecar.cli:main"
    assert "bpf/objects/*.bpf.o" in project["tool"]["setuptools"]["package-data"]["beyla_sidecar"]


@pytest.mark.skipif(not (shutil.which("clang-16") and shutil.which("bpftool") and (REPO / "probes" / "Makefile").exists()
                         and __import__("os").path.exists("/sys/kernel/btf/vmlinux")),
                    reason="needs clang-16, bpftool and kernel BTF (the build stage's tools)")
def test_build_stage_make_step_runs(tmp_path):
    """The build stage's `make -C probes` on a copy of the tree (not the work tree)."""
    shutil.copytree(REPO / "probes", tmp_path / "probes", ignore=shutil.ignore_patterns("vmlinux.h", ".output"))
    (tmp_path / "beyla_sidecar" / "bpf").mkdir(parents=True)
    strip = "STRIP=llvm-strip-16" if shutil.which("llvm-strip-16") else "STRIP="
    proc = subprocess.run(["make", "-C", "probes", "CLANG=clang-16", strip], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    objects = sorted((tmp_path / "beyla_sidecar" / "bpf" / "objects").glob("*.bpf.o"))
    assert objects
    assert all(o.read_bytes()[:4] == b"\x7fELF" for o in objects)
    sources = sorted((REPO / "probes").glob("*.bpf.c"))
    assert [o.name for o in objects] == [s.name[:-2] + ".o" for s in sources]


def test_json_form_instructions_are_valid_json():
    for word, rest in instructions():
        if word in ("ENTRYPOINT", "CMD") or (word == "RUN" and rest.startswith("[")):
            json.loads(rest)
