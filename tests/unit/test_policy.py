"""BatchPolicy's rules, as pure functions (LanePolicy and BulkPace: tests/unit/test_run_jobs.py)."""

from __future__ import annotations

from workers.policy import SHARED_CHUNK_DIVISOR, BatchPolicy, fair_share


def test_a_batch_waits_for_company_only_under_load() -> None:
    policy = BatchPolicy(max_size=32, max_delay_ms=20)
    assert policy.delay_s(last_batch_items=0) == 0.0  # quiet: a lone request runs at once
    assert policy.delay_s(last_batch_items=1) == 0.0
    assert policy.delay_s(last_batch_items=7) == 0.02
    assert BatchPolicy(max_size=32).delay_s(last_batch_items=7) == 0.0  # the default: never


def test_only_a_job_larger_than_a_batch_runs_in_chunks() -> None:
    policy = BatchPolicy(max_size=16)
    assert not policy.is_large(16)
    assert policy.is_large(17)


def test_a_bulk_jobs_own_chunks_shrink_while_interactive_work_comes() -> None:
    policy = BatchPolicy(max_size=32)
    # Riding along interactive work: exactly what the job is owed (0 is a valid answer).
    assert policy.own_chunk(owed=0, company=True, interactive_recent=True) == 0
    assert policy.own_chunk(owed=5, company=True, interactive_recent=False) == 5
    # Interactive work came recently but none waits: a small chunk, never less than owed.
    small = 32 // SHARED_CHUNK_DIVISOR
    assert policy.own_chunk(owed=0, company=False, interactive_recent=True) == small
    assert policy.own_chunk(owed=20, company=False, interactive_recent=True) == 20
    assert BatchPolicy(max_size=2).own_chunk(0, False, True) == 1  # at least one input
    # Alone: whole batches.
    assert policy.own_chunk(owed=3, company=False, interactive_recent=False) == 32


def test_a_worker_leaves_idle_peers_their_share_of_the_queue() -> None:
    # Alone (or the only idle one): everything in sight.
    assert fair_share(queued=7, taken=1, idle_workers=1) == 7
    # Two idle workers and 8 jobs (one taken): 4 each, so 3 more.
    assert fair_share(queued=7, taken=1, idle_workers=2) == 3
    # Odd counts round up for the worker gathering: 5 jobs, 3 here, 2 there.
    assert fair_share(queued=4, taken=1, idle_workers=2) == 2
    # Already at or past its share: nothing more; an empty queue: nothing.
    assert fair_share(queued=1, taken=3, idle_workers=2) == 0
    assert fair_share(queued=0, taken=1, idle_workers=2) == 0
    # No idle worker recorded (a race with its own state): as if alone.
    assert fair_share(queued=5, taken=1, idle_workers=0) == 5
