"""The main loop's wait between two drains of the ring."""

from beyla_sidecar.pipeline import DRAIN_BATCH, IDLE_POLL_MS, next_wait


def test_a_full_batch_drains_again_at_once() -> None:
    assert next_wait(DRAIN_BATCH, 250, 250) == 0


def test_records_restore_the_configured_interval() -> None:
    assert next_wait(1, 0, 250) == 250
    assert next_wait(DRAIN_BATCH - 1, 250, 10) == 10


def test_an_empty_ring_backs_off_to_the_idle_wait_and_stays_there() -> None:
    waits, wait = [], 10
    for _ in range(8):
        wait = next_wait(0, wait, 10)
        waits.append(wait)
    assert waits == [20, 40, 80, 160, 320, IDLE_POLL_MS, IDLE_POLL_MS, IDLE_POLL_MS]


def test_an_empty_ring_after_a_full_batch_does_not_spin() -> None:
    """A wait of 0 (more was waiting) then an empty ring: the next waits grow from 1 ms."""
    assert next_wait(0, 0, 250) == 1
    assert next_wait(0, 1, 250) == 2


def test_a_longer_interval_than_the_idle_wait_is_kept_while_idle() -> None:
    assert next_wait(0, 1000, 1000) == 1000
    assert next_wait(0, 600, 1000) == 1000
