"""How the sidecar finds the pod's cgroup and its capability (no root needed: fake cgroup2 trees)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from beyla_sidecar.bpf.propagation import PropagationError, find_cgroups, has_net_admin


def cgroup_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name in ("cgroup.procs", "cgroup.controllers"):
        (path / name).touch()
    return path


def proc_cgroup(tmp_path: Path, line: str) -> str:
    f = tmp_path / "cgroup"
    f.write_text(f"12:memory:/whatever\n{line}\n")
    return str(f)


def test_the_pod_is_the_parent_of_the_sidecars_cgroup(tmp_path: Path) -> None:
    mount = cgroup_dir(tmp_path / "mnt")
    pod = cgroup_dir(mount / "kubepods.slice" / "pod-1")
    own = cgroup_dir(pod / "cri-sidecar")
    assert find_cgroups(str(mount), proc_cgroup(tmp_path, "0::/kubepods.slice/pod-1/cri-sidecar")) == (pod, own)


def test_a_cgroup_namespace_is_seen_through_by_inode(tmp_path: Path) -> None:
    mount = cgroup_dir(tmp_path / "mnt")
    own = cgroup_dir(mount / "kubepods" / "pod-2" / "sidecar")
    cgroup_dir(mount / "kubepods" / "pod-3" / "sidecar")
    # /proc/self/cgroup says "/" inside a cgroup namespace; the container's own /sys/fs/cgroup is
    # the same directory as its cgroup in the node's mount
    found = find_cgroups(str(mount), proc_cgroup(tmp_path, "0::/"), namespaced_root=str(own))
    assert found == (own.parent, own)


@pytest.mark.parametrize(("setup", "line", "message"), [
    ("none", "0::/a/b", "no cgroup2 filesystem at"),
    ("root", "0::/", "root cgroup"),
    ("v1", "1:cpu:/", "no cgroup v2"),
    ("elsewhere", "0::/not/here", "is not found under"),
])
def test_what_cannot_work_says_why(tmp_path: Path, setup: str, line: str, message: str) -> None:
    mount = tmp_path / "mnt"
    if setup != "none":
        cgroup_dir(mount)
    reference = cgroup_dir(tmp_path / "other") if setup == "elsewhere" else mount
    with pytest.raises(PropagationError, match=message):
        find_cgroups(str(mount), proc_cgroup(tmp_path, line), namespaced_root=str(reference))


def test_net_admin_is_read_from_the_effective_set(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")
    assert has_net_admin(str(status))
    status.write_text("Name:\tx\nCapEff:\t000001ffffffefff\n")
    assert not has_net_admin(str(status))
    assert isinstance(has_net_admin(), bool) and os.path.exists("/proc/self/status")
