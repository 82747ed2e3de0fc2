"""The TCP health decoder and probes/tcphealth.h agree: the header read by a C compiler gives the
offsets, the decoder must find each field there. Plus the RTT bounds knob."""

from __future__ import annotations

import ipaddress
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from beyla_sidecar.bpf.tcphealth import (COUNTER_NAMES, NO_SAMPLE, RTT_BOUNDS, ROLES, bounds_us,
                                         decode_destination)
from beyla_sidecar.network import RTT_BOUNDS as SECONDS

PROBES = Path(__file__).resolve().parents[2] / "probes"

LAYOUT_C = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "tcphealth.h"
#define K(m) printf("key.%s %zu\n", #m, offsetof(struct tcph_key, m));
#define D(m) printf("dest.%s %zu\n", #m, offsetof(struct tcph_dest, m));
int main(void) {
    printf("key %zu\ndest %zu\nbounds %d\n", sizeof(struct tcph_key), sizeof(struct tcph_dest), RTT_BOUNDS);
    K(laddr) K(raddr) K(lport) K(rport) K(role)
    D(rtt_sum_us) D(failed) D(resets_sent) D(resets_received) D(retransmits) D(rtt_min_us) D(rtt_max_us)
    D(rtt_buckets)
    printf("role.unknown %d\nrole.client %d\nrole.server %d\n", TCP_ROLE_UNKNOWN, TCP_ROLE_CLIENT, TCP_ROLE_SERVER);
    printf("failed.refused %d\nfailed.timeout %d\nfailed.unreachable %d\n", TCP_FAIL_REFUSED, TCP_FAIL_TIMEOUT,
           TCP_FAIL_UNREACHABLE);
    printf("counter.map_full %d\ncounter.unreadable %d\n", TCP_CNT_MAP_FULL, TCP_CNT_UNREADABLE);
    return 0;
}
"""


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    if not shutil.which("gcc"):
        pytest.skip("gcc not installed (TEST_DEB_PACKAGES)")
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "layout.c").write_text(LAYOUT_C)
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{PROBES}", "-o", str(tmp / "layout"), str(tmp / "layout.c")],
                   check=True, capture_output=True)
    out = subprocess.run([str(tmp / "layout")], check=True, capture_output=True, text=True).stdout
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_the_decoder_reads_each_field_where_the_header_puts_it(layout: dict[str, int]) -> None:
    assert layout["bounds"] == RTT_BOUNDS
    assert [layout[f"role.{r}"] for r in ROLES] == [0, 1, 2]
    assert [layout[f"counter.{c}"] for c in COUNTER_NAMES] == [0, 1]
    key = bytearray(layout["key"])
    key[layout["key.laddr"]:layout["key.laddr"] + 16] = ipaddress.IPv6Address("::ffff:10.0.0.2").packed
    key[layout["key.raddr"]:layout["key.raddr"] + 16] = ipaddress.IPv6Address("fd00::9").packed
    struct.pack_into("<HHB", key, layout["key.lport"], 0, 443, layout["role.client"])
    assert layout["key.rport"] == layout["key.lport"] + 2 and layout["key.role"] == layout["key.rport"] + 2
    value = bytearray(layout["dest"])
    struct.pack_into("<Q", value, layout["dest.rtt_sum_us"], 12345)
    failed = layout["dest.failed"]
    struct.pack_into("<III", value, failed, layout["failed.refused"] + 1, layout["failed.timeout"] + 1,
                     layout["failed.unreachable"] + 1)
    for field, n in (("resets_sent", 4), ("resets_received", 5), ("retransmits", 6), ("rtt_min_us", 70),
                     ("rtt_max_us", 900)):
        struct.pack_into("<I", value, layout[f"dest.{field}"], n)
    struct.pack_into(f"<{RTT_BOUNDS + 1}I", value, layout["dest.rtt_buckets"], *range(RTT_BOUNDS + 1))

    d = decode_destination(bytes(key), bytes(value))
    assert (d.local, d.remote, d.local_port, d.remote_port, d.role) == \
        (ipaddress.IPv4Address("10.0.0.2"), ipaddress.IPv6Address("fd00::9"), 0, 443, "client")
    assert (d.refused, d.timeout, d.unreachable) == (1, 2, 3)  # enum order: refused, timeout, unreachable
    assert (d.resets_sent, d.resets_received, d.retransmits) == (4, 5, 6)
    assert (d.rtt_sum_us, d.rtt_min_us, d.rtt_max_us) == (12345, 70, 900)
    assert d.rtt_buckets == tuple(range(RTT_BOUNDS + 1)) and d.rtt_count == sum(range(RTT_BOUNDS + 1))


def test_an_unknown_role_is_unknown() -> None:
    key = struct.pack("<16s16sHHBxxx", bytes(16), bytes(16), 1, 2, 9)
    value = struct.pack(f"<Q8I{RTT_BOUNDS + 1}I4x", 0, 0, 0, 0, 0, 0, 0, NO_SAMPLE, 0, *[0] * (RTT_BOUNDS + 1))
    d = decode_destination(key, value)
    assert d.role == "unknown" and d.rtt_count == 0 and d.rtt_min_us == NO_SAMPLE


def test_rtt_bounds_in_microseconds() -> None:
    assert struct.unpack(f"<{RTT_BOUNDS}I", bounds_us(SECONDS))[:3] == (100, 200, 500)
    assert struct.unpack(f"<{RTT_BOUNDS}I", bounds_us(SECONDS))[-1] == 10_000_000
    with pytest.raises(ValueError):
        bounds_us(SECONDS[:-1])
    with pytest.raises(ValueError):
        bounds_us(tuple(reversed(SECONDS)))
