"""A replica caps the new discovery streams it admits per second."""

from __future__ import annotations

from gossamer.controlplane.discovery import Admission


def test_a_burst_up_to_the_rate_is_admitted_and_then_one_per_interval() -> None:
    admission = Admission(rate=10)

    burst = [admission.admit(100.0) for _ in range(12)]

    assert burst == [True] * 10 + [False] * 2
    assert not admission.admit(100.05)  # half a token so far
    assert admission.admit(100.15)  # a whole token, and a half
    assert not admission.admit(100.15)


def test_an_idle_replica_admits_a_full_burst_again_but_no_more() -> None:
    admission = Admission(rate=5)
    for _ in range(5):
        admission.admit(0.0)

    later = [admission.admit(60.0) for _ in range(6)]

    assert later == [True] * 5 + [False]
