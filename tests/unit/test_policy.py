"""BatchPolicy's rules, as pure functions (LanePolicy and BulkPace: tests/unit/test_run_jobs.py)."""

from __future__ import annotations

import random

from workers.policy import (
    CPU_TOKEN_BUDGET,
    GPU_TOKEN_BUDGET,
    SHARED_CHUNK_DIVISOR,
    BatchPolicy,
    fair_share,
    forward_chunks,
    token_budget,
)


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


def test_a_batch_that_fits_goes_through_in_one_pass_in_its_order() -> None:
    assert forward_chunks([], 32) == []
    assert forward_chunks([30, 5, 12], 32) == [[0, 1, 2]]
    assert forward_chunks([30, 5, 12], 3, max_tokens=90) == [[0, 1, 2]]  # 3 x 30 = 90


def test_without_a_budget_a_large_batch_runs_in_sorted_passes_of_max_items() -> None:
    assert forward_chunks([4, 1, 3, 2, 5], 2) == [[1, 3], [2, 0], [4]]


def test_a_budget_keeps_short_inputs_from_padding_to_a_long_ones_length() -> None:
    lengths = [200, 10, 12, 10, 250, 11, 10, 9]
    # Together: 8 x 250 = 2,000 tokens computed for 512 real ones.
    assert forward_chunks(lengths, 32) == [list(range(8))]
    passes = forward_chunks(lengths, 32, max_tokens=512)
    assert passes == [[7, 1, 3, 6, 5, 2], [0, 4]]  # 6 x 12 = 72, then 2 x 250 = 500


def test_an_input_longer_than_the_budget_goes_alone() -> None:
    assert forward_chunks([500, 10, 20], 32, max_tokens=100) == [[1, 2], [0]]


def test_every_input_runs_once_and_every_pass_is_within_both_limits() -> None:
    rng = random.Random(7)
    for _ in range(200):
        lengths = [rng.choice([rng.randint(1, 30), rng.randint(100, 512)]) for _ in range(40)]
        items, budget = rng.randint(1, 40), rng.choice([None, 256, 1024, 4096])
        passes = forward_chunks(lengths, items, budget)
        assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
        for p in passes:
            longest = max(lengths[i] for i in p)
            assert len(p) <= items
            assert budget is None or len(p) * longest <= budget or len(p) == 1


def test_the_token_budget_defaults_by_device_and_0_turns_it_off() -> None:
    assert token_budget(None, "cpu") == CPU_TOKEN_BUDGET
    assert token_budget(None, "cuda:0") == GPU_TOKEN_BUDGET
    assert token_budget(300, "cuda:0") == 300
    assert token_budget(0, "cpu") is None
    # The CPU default keeps a batch of 32 short texts (~22 tokens each) in one pass.
    assert forward_chunks([22] * 32, 32, CPU_TOKEN_BUDGET) == [list(range(32))]
