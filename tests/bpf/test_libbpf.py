"""The libbpf binding's map walks on real kernel maps."""

from __future__ import annotations

import pytest

from beyla_sidecar.bpf.libbpf import BpfError
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


def test_update_batch_writes_every_entry_in_one_call(probes: Probes) -> None:
    swept = probes._swept
    entries = {(i + 1).to_bytes(8, "little"): (1000 + i).to_bytes(8, "little") for i in range(300)}
    swept.update_batch(b"".join(entries), b"".join(entries.values()))
    try:
        assert {key: swept.lookup(key) for key in entries} == entries
        swept.update_batch(b"", b"")  # nothing to write: no call
        with pytest.raises(BpfError, match="not whole entries"):
            swept.update_batch(b"\0" * 12, b"\0" * 8)
    finally:
        for key in entries:
            swept.delete(key)
    assert not any(swept.lookup(key) for key in entries)
