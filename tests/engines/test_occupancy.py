"""Occupancy arithmetic: the share of steady-state samples with work waiting or a full batch."""

from internvl_batch.engines.occupancy import Occupancy, combine


def _sample(o: Occupancy, running: int, waiting: int, n: int = 1) -> None:
    for _ in range(n):
        o.record(running, waiting)
        o.sample()


def test_a_queue_that_never_runs_dry_is_fully_occupied_and_the_drain_is_not_counted():
    o = Occupancy(max_num_seqs=4)
    for _ in range(12):
        o.submitted()
    _sample(o, 4, 8, n=5)  # saturated while requests wait
    for _ in range(9):
        o.finished()
    _sample(o, 3, 0, n=7)  # the tail drains: not steady state
    stats = o.stats()
    assert stats["occupancy"] == 1.0 and stats["steady_samples"] == 5
    assert stats["mean_waiting"] == 8.0


def test_a_starved_engine_between_arrivals_counts_against_occupancy():
    o = Occupancy(max_num_seqs=4)
    o.submitted()
    _sample(o, 1, 0, n=6)  # one request running, nothing queued: the engine starves
    for _ in range(8):
        o.submitted()  # the next batch arrives late
    _sample(o, 4, 5, n=2)
    stats = o.stats()
    assert stats["steady_samples"] == 8 and stats["steady_saturated"] == 2
    assert stats["occupancy"] == 0.25


def test_an_idle_engine_does_not_look_busy_from_its_last_report():
    o = Occupancy(max_num_seqs=2)
    o.submitted()
    _sample(o, 2, 1, n=2)
    o.finished()  # nothing in flight: vLLM takes no steps, its last report is stale
    o.sample()
    o.submitted()
    _sample(o, 2, 1)
    assert o.stats()["steady_saturated"] == 3 and o.stats()["steady_samples"] == 4  # the idle one is not busy


def test_replicas_are_weighted_by_their_samples():
    a = {"steady_samples": 90, "steady_saturated": 90, "first_submit": 10.0, "last_finish": 20.0}
    b = {"steady_samples": 10, "steady_saturated": 0, "first_submit": 12.0, "last_finish": 25.0}
    assert combine([a, b]) == {"occupancy": 0.9, "replicas": 2, "steady_samples": 100, "busy_s": 15.0}
    assert combine([])["occupancy"] == 0.0


def test_more_in_flight_than_the_batch_limit_is_queued_even_when_the_report_is_stale():
    o = Occupancy(max_num_seqs=4)
    for _ in range(9):
        o.submitted()
    o.sample()  # the first long prefill: vLLM has reported nothing yet
    _sample(o, 4, 5)
    assert o.stats()["steady_saturated"] == 2 and o.stats()["steady_samples"] == 2
