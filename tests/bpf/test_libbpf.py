"""The libbpf binding's map walks on real kernel maps."""

from __future__ import annotations

import pytest

from beyla_sidecar.bpf.loader import Probes

pytestmark = pytest.mark.bpf  # loads the probes


def test_lookup_batch_walks_every_entry_once_across_batches(probes: Probes) -> None:
    conns = probes._conns
    size = conns.value_size
    entries = {(i + 1).to_bytes(8, "little"): bytes([i % 251]) * size for i in range(600)}
    for key, value in entries.items():
        conns.update(key, value)
    try:
        # 3 or more batches: each holds whole hash buckets
        seen = [(bytes(k), bytes(v)) for k, v in conns.lookup_batch(batch=256)]
    finally:
        for key in entries:
            conns.delete(key)
    assert len(seen) == len(entries) and dict(seen) == entries
    assert list(conns.lookup_batch()) == []


def test_lookup_and_delete_batch_takes_every_entry(probes: Probes) -> None:
    conns = probes._conns
    entries = {(i + 1).to_bytes(8, "little"): bytes([i % 251]) * conns.value_size for i in range(300)}
    for key, value in entries.items():
        conns.update(key, value)
    taken = list(conns.lookup_and_delete_batch(conns.value_size, batch=128))
    assert len(taken) == len(entries) and dict(taken) == entries
    assert list(conns.keys()) == []
