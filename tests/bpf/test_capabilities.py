"""`beyla-sidecar check` names the capabilities a pod spec must add."""

from beyla_sidecar.bpf.features import missing_capabilities

ALL = "CapEff:\t000001ffffffffff\n"
# BPF, PERFMON, SYS_PTRACE, DAC_READ_SEARCH, CHECKPOINT_RESTORE: bits 39, 38, 19, 2, 40
SIDECAR_SET = f"CapEff:\t{(1 << 39) | (1 << 38) | (1 << 19) | (1 << 2) | (1 << 40):016x}\n"


def test_root_has_everything() -> None:
    assert missing_capabilities(ALL, paranoid=2) == ()


def test_least_privilege_set_is_enough_unless_perf_is_paranoid() -> None:
    assert missing_capabilities(SIDECAR_SET, paranoid=2) == ()
    assert missing_capabilities(SIDECAR_SET, paranoid=3) == ("SYS_ADMIN",)


def test_missing_ones_are_named() -> None:
    status = "Name:\tx\nCapEff:\t0000000000000004\n"  # only DAC_READ_SEARCH
    assert missing_capabilities(status, paranoid=2) == ("SYS_PTRACE", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
