"""A pod with its own network namespace, joined by a veth pair to a peer namespace.

The pod is `unshare --net --pid --fork --mount-proc` (its mount namespace is a private copy of
the host's, so tracefs stays mounted and /etc/resolv.conf can be bind-mounted for the pod
alone); the peer is an `ip netns` namespace where the servers run. Addresses:

    pod  eth0  10.231.0.2/24  fd00:231::2/64
    peer veth  10.231.0.1/24 (backend.test), 10.231.0.53 (DNS), 10.231.0.3 (a k8s service),
               10.231.0.4 (no name but a PTR record), fd00:231::1/64
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .pod import Pod, stop_all

POD_V4, PEER_V4, DNS_V4, SVC_V4, UNNAMED_V4 = "10.231.0.2", "10.231.0.1", "10.231.0.53", "10.231.0.3", "10.231.0.4"
POD_V6, PEER_V6 = "fd00:231::2", "fd00:231::1"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Netns:
    """A named network namespace (`ip netns add`); removed by close()."""

    def __init__(self, name: str) -> None:
        self.name = name
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # a leftover of a killed run
        ip("netns", "add", name)
        ip("-n", name, "link", "set", "lo", "up")
        self._procs: list[subprocess.Popen[bytes]] = []

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def spawn(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.argv(argv), **kw)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def run(self, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(argv), check=True, capture_output=True, timeout=timeout)

    def close(self) -> None:
        stop_all(self._procs)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def veth(a: str, a_ns: str, b: str, b_ns: str) -> None:
    """A veth pair: `a` in namespace a_ns (an ip-netns name or a pid), `b` in b_ns."""
    ip("link", "add", a, "type", "veth", "peer", "name", b)
    ip("link", "set", a, "netns", a_ns)
    ip("link", "set", b, "netns", b_ns)


def start_init(pod: Pod) -> None:
    """The pod's init, in new PID and network namespaces."""
    pod.init = subprocess.Popen(["unshare", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
                                 "sleep", "infinity"])
    pod._procs = [pod.init]
    deadline = time.monotonic() + 5
    while pod.init_pid is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pod.init_pid is not None, "unshare did not start"
    pod.ns_inode = os.stat(f"/proc/{pod.init_pid}/ns/pid").st_ino


class NetPod(Pod):
    """A Pod (tests/e2e/pod.py) with its own network namespace and a veth to `peer`."""

    def __init__(self, tmp: Path, peer: Netns) -> None:
        self.tmp = tmp
        start_init(self)
        tag = str(os.getpid() % 100000)
        veth(f"bsp{tag}", str(self.init_pid), f"bsq{tag}", peer.name)
        inside = ["nsenter", "--target", str(self.init_pid), "--net", "--"]
        for cmd in (["ip", "link", "set", f"bsp{tag}", "name", "eth0"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "set", "eth0", "up"], ["ip", "addr", "add", f"{POD_V4}/24", "dev", "eth0"],
                    ["ip", "-6", "addr", "add", f"{POD_V6}/64", "dev", "eth0", "nodad"]):
            subprocess.run([*inside, *cmd], check=True, capture_output=True)
        for cmd in (["link", "set", f"bsq{tag}", "up"], ["addr", "add", f"{PEER_V4}/24", "dev", f"bsq{tag}"],
                    ["addr", "add", f"{DNS_V4}/24", "dev", f"bsq{tag}"],
                    ["addr", "add", f"{SVC_V4}/24", "dev", f"bsq{tag}"],
                    ["addr", "add", f"{UNNAMED_V4}/24", "dev", f"bsq{tag}"],
                    ["-6", "addr", "add", f"{PEER_V6}/64", "dev", f"bsq{tag}", "nodad"]):
            ip("-n", peer.name, *cmd)
        resolv = tmp / "resolv.conf"
        resolv.write_text(f"nameserver {DNS_V4}\noptions timeout:1 attempts:2\n")
        # only in the pod's mount namespace (unshare made its mounts private)
        subprocess.run(["nsenter", "--target", str(self.init_pid), "--mount", "--", "mount", "--bind",
                        str(resolv), "/etc/resolv.conf"], check=True)

    def _nsenter(self, argv: list[str]) -> list[str]:
        return ["nsenter", "--target", str(self.init_pid), "--pid", "--mount", "--net", "--", *argv]


# cgroup v2 on this machine (hybrid hierarchy); real nodes mount it at /sys/fs/cgroup
CGROUP2 = Path("/sys/fs/cgroup/unified")
CONTAINERS = ("app", "sidecar")


class CgroupPod(Pod):
    """A pod as Kubernetes makes it: its own PID and network namespaces, and its own cgroup v2
    with a child cgroup per container. spawn()/run() start processes in the `app` container;
    container("sidecar") is the wrapper that puts the sidecar in its own."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp = tmp
        self.cgroup = CGROUP2 / name
        for container in CONTAINERS:
            (self.cgroup / container).mkdir(parents=True, exist_ok=True)
        start_init(self)
        self.net(["ip", "link", "set", "lo", "up"])

    def container(self, name: str) -> list[str]:
        """argv prefix that moves the command into the container's cgroup, then runs it."""
        return ["sh", "-c", f'echo $$ > {self.cgroup / name}/cgroup.procs && exec "$@"', "sh"]

    def net(self, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
        """A command in the pod's network namespace only (as root of the node, outside the pod)."""
        return subprocess.run(["nsenter", "--target", str(self.init_pid), "--net", "--", *argv], check=True,
                              capture_output=True, timeout=60)

    def _nsenter(self, argv: list[str]) -> list[str]:
        return ["nsenter", "--target", str(self.init_pid), "--pid", "--mount", "--net", "--",
                *self.container("app"), *argv]

    def close(self) -> None:
        super().close()
        deadline = time.monotonic() + 5
        for path in [self.cgroup / c for c in CONTAINERS] + [self.cgroup]:
            while path.exists():
                try:
                    path.rmdir()
                except OSError:  # its last processes are still exiting
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def link_pods(a: CgroupPod, a_addr: str, b: CgroupPod, b_addr: str) -> None:
    """A veth pair between two pods: eth0 in each, addresses in one /24."""
    tag = str(os.getpid() % 100000)
    veth(f"bsa{tag}", str(a.init_pid), f"bsb{tag}", str(b.init_pid))
    for pod, dev, addr in ((a, f"bsa{tag}", a_addr), (b, f"bsb{tag}", b_addr)):
        pod.net(["ip", "link", "set", dev, "name", "eth0"])
        pod.net(["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
        pod.net(["ip", "link", "set", "eth0", "up"])
