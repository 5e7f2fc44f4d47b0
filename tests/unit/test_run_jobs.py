"""Batch execution logic with a fake engine: grouping, isolation of failures, the allowlist."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from contract.jobs import PREDICT_FUNC
from workers.policy import BulkPace, LanePolicy
from workers.tasks import ChunkedRun, MemoryChunks, run_chunked, run_jobs


@dataclass
class FakeJob:
    id: str
    kwargs: dict[str, Any]
    func_name: str = PREDICT_FUNC


@dataclass
class RecordingEngine:
    calls: list[tuple[list[Any], dict[str, Any]]] = field(default_factory=list)
    group_calls: int = 0
    poison: str = "POISON"
    across_groups: bool = False
    counted: list[list[Any]] = field(default_factory=list)

    def __call__(self, inputs: list[Any], params: dict[str, Any]) -> list[Any]:
        self.calls.append((list(inputs), dict(params)))
        if self.poison in inputs:
            raise ValueError("cannot digest this")
        return [f"{t}|{params.get('top_k', '-')}" for t in inputs]

    def count_tokens(self, inputs: list[Any]) -> list[int]:
        self.counted.append(list(inputs))
        return [len(t) for t in inputs]

    def run_groups(self, groups: Sequence[tuple[list[Any], dict[str, Any]]]) -> list[list[Any]]:
        self.group_calls += 1
        if any(self.poison in items for items, _ in groups):
            raise ValueError("cannot digest this")
        return [[f"{t}|{p.get('top_k', '-')}" for t in items] for items, p in groups]


def job(i: int, inputs: list[str], **params: Any) -> FakeJob:
    return FakeJob(f"j{i}", {"inputs": inputs, "parameters": params, "deadline": None})


def test_jobs_with_equal_parameters_share_one_call_and_keep_order() -> None:
    engine = RecordingEngine()
    jobs = [job(0, ["a", "b"]), job(1, ["c"], top_k=2), job(2, ["d"])]
    out = run_jobs(engine, jobs)
    assert [o.value for o in out] == [["a|-", "b|-"], ["c|2"], ["d|-"]]
    assert sorted(len(c[0]) for c in engine.calls) == [1, 3]


def test_tokens_are_counted_once_per_batch_for_the_jobs_that_succeeded() -> None:
    engine = RecordingEngine()
    jobs = [job(0, ["a", "bbb"]), job(1, ["POISON"]), job(2, ["cc"], top_k=2)]
    out = run_jobs(engine, jobs)
    assert [o.tokens for o in out] == [[1, 3], None, [2]]
    assert engine.counted == [["a", "bbb", "cc"]]


def test_poisoned_input_fails_only_its_own_job() -> None:
    engine = RecordingEngine()
    jobs = [job(0, ["a"]), job(1, ["POISON"]), job(2, ["c", "d"])]
    out = run_jobs(engine, jobs)
    assert out[0].value == ["a|-"] and out[2].value == ["c|-", "d|-"]
    assert out[1].value is None and out[1].error is not None
    assert out[1].error.code == "inference_failed"
    assert "ValueError" in out[1].error.message


def test_forbidden_function_is_never_called() -> None:
    engine = RecordingEngine()
    evil = FakeJob("e", {"inputs": ["x"]}, func_name="os.system")
    out = run_jobs(engine, [evil, job(1, ["ok"])])
    assert out[0].error is not None and out[0].error.code == "forbidden_function"
    assert engine.calls == [(["ok"], {})]


def test_expired_deadline_and_bad_payload_are_refused() -> None:
    engine = RecordingEngine()
    late = FakeJob("late", {"inputs": ["x"], "deadline": 100.0})
    bad = FakeJob("bad", {"inputs": "not a list"})
    out = run_jobs(engine, [late, bad], now=200.0)
    assert [o.error.code for o in out if o.error] == ["deadline_exceeded", "invalid_job"]
    assert engine.calls == []


def test_an_engine_that_batches_across_parameters_gets_one_call() -> None:
    engine = RecordingEngine(across_groups=True)
    jobs = [job(0, ["a", "b"]), job(1, ["c"], top_k=2), job(2, ["d"])]
    out = run_jobs(engine, jobs)
    assert [o.value for o in out] == [["a|-", "b|-"], ["c|2"], ["d|-"]]
    assert (engine.group_calls, engine.calls) == (1, [])


def test_a_failed_call_across_parameters_falls_back_to_each_job() -> None:
    engine = RecordingEngine(across_groups=True)
    jobs = [job(0, ["a"]), job(1, ["POISON"], top_k=1), job(2, ["c"])]
    out = run_jobs(engine, jobs)
    assert out[0].value == ["a|-"] and out[2].value == ["c|-"]
    assert out[1].error is not None and out[1].error.code == "inference_failed"


def test_object_items_reach_the_engine_as_they_were_queued() -> None:
    engine = RecordingEngine()
    item = {"question": "q", "context": "c"}
    out = run_jobs(engine, [FakeJob("qa", {"inputs": [item]})])
    assert engine.calls == [([item], {})]
    assert out[0].error is None


def test_a_job_larger_than_a_batch_runs_in_chunks_and_reports_each() -> None:
    engine = RecordingEngine()
    store = MemoryChunks()
    texts = [f"t{i}" for i in range(10)]
    outcome, calls = run_chunked(engine, job(0, texts, top_k=1), 4, store)
    assert len(calls) == 3 and [n for n, _ in calls] == [4, 4, 2]
    assert [len(inputs) for inputs, _ in engine.calls] == [4, 4, 2]
    assert outcome.value == [f"{t}|1" for t in texts]
    assert outcome.tokens == [len(t) for t in texts]
    assert store.seen == [(0, 10), (4, 10), (8, 10), (10, 10)]


def test_a_failing_chunk_fails_the_job_and_stops_the_rest() -> None:
    engine = RecordingEngine()
    store = MemoryChunks()
    texts = ["a", "b", "POISON", "c", "d", "e"]
    outcome, calls = run_chunked(engine, job(0, texts), 2, store)
    assert len(calls) == 2  # the third chunk never ran
    assert outcome.error is not None and outcome.error.code == "inference_failed"
    assert outcome.value is None
    assert store.seen == [(0, 6), (2, 6)]


def test_a_chunked_job_is_admitted_like_any_other() -> None:
    engine = RecordingEngine()
    bad = FakeJob("j9", {"inputs": ["a"] * 5}, func_name="os.system")
    outcome, calls = run_chunked(engine, bad, 2, MemoryChunks())
    assert calls == [] and engine.calls == []
    assert outcome.error is not None and outcome.error.code == "forbidden_function"


def test_a_chunked_job_resumes_from_its_stored_chunks() -> None:
    engine = RecordingEngine()
    texts = [f"t{i}" for i in range(10)]
    store = MemoryChunks()
    kept = ["kept0", "kept1", "kept2", "kept3", "kept4"]
    store.chunks[0] = (kept, [9] * 5)  # done by a worker that died
    outcome, calls = run_chunked(engine, job(0, texts), 4, store)
    assert [c[0] for c in engine.calls] == [["t5", "t6", "t7", "t8"], ["t9"]]  # from input 5 on
    assert len(calls) == 2 and all(ms >= 0 for _, ms in calls)
    assert outcome.value == [*kept, "t5|-", "t6|-", "t7|-", "t8|-", "t9|-"]
    assert outcome.tokens == [9, 9, 9, 9, 9, 2, 2, 2, 2, 2]
    assert store.seen[0] == (5, 10) and store.seen[-1] == (10, 10)
    assert sorted(store.chunks) == [0, 5, 9]  # by start offset


def test_chunk_sizes_may_change_from_one_chunk_to_the_next() -> None:
    engine = RecordingEngine()
    texts = [f"t{i}" for i in range(10)]
    sizes = iter([2, 5, 8])
    outcome, calls = run_chunked(engine, job(0, texts), lambda: next(sizes), MemoryChunks())
    assert [n for n, _ in calls] == [2, 5, 3]
    assert outcome.value == [f"{t}|-" for t in texts]


def test_a_chunk_rides_along_other_jobs_in_one_call_and_is_saved_as_its_own() -> None:
    engine = RecordingEngine()
    texts = [f"t{i}" for i in range(5)]
    store = MemoryChunks()
    run = ChunkedRun(job(0, texts), store)
    chunk = run.next_chunk(3)
    others = [job(1, ["x"]), job(2, ["y", "z"])]
    *theirs, part = run_jobs(engine, [*others, chunk])
    assert engine.calls == [(["x", "y", "z", "t0", "t1", "t2"], {})]  # one model call
    assert [o.value for o in theirs] == [["x|-"], ["y|-", "z|-"]]
    run.record(part)
    assert not run.finished and run.pos == 3 and run.chunks == 1
    run.record(run_jobs(engine, [run.next_chunk(3)])[0])  # only two are left
    assert run.finished and sorted(store.chunks) == [0, 3]
    assert run.outcome().value == [f"{t}|-" for t in texts]


def test_a_failed_ride_fails_only_the_chunk_and_its_job() -> None:
    engine = RecordingEngine()
    run = ChunkedRun(job(0, ["a", "POISON"]), MemoryChunks())
    *theirs, part = run_jobs(engine, [job(1, ["x"]), run.next_chunk(2)])
    assert theirs[0].value == ["x|-"]  # the neighbour's answer is kept
    run.record(part)
    outcome = run.outcome()
    assert run.finished and outcome.error is not None and outcome.value is None


def test_bulk_pace_owes_its_share_of_the_rate_a_bulk_job_has_alone() -> None:
    pace = BulkPace(share=0.25, max_size=32)
    assert pace.owed(0.0) == 1  # no rate yet: one input a batch, never starved
    pace.observe(4, 0.010)  # a small call only sets a lower bound
    assert pace.rate == pytest.approx(400) and pace.learnt == 0
    pace.observe(32, 0.064)  # 500/s from a full call replaces it
    assert pace.rate == pytest.approx(500) and pace.learnt == 1
    pace.observe(32, 0.080, alone=True)  # 400/s: a bulk chunk alone, with its saving
    pace.observe(32, 0.160, alone=True)  # 200/s: lowers the peak by a tenth of the gap
    assert pace.learnt == 2 and pace.rate == pytest.approx(380)
    pace.observe(32, 0.128, alone=True)  # 250/s
    assert pace.rate == pytest.approx(367)
    pace.observe(32, 0.064, alone=True)  # 500/s: a faster step is the new peak
    pace.observe(32, 0.080, alone=True)  # 400/s
    assert pace.rate == pytest.approx(490)
    pace.observe(32, 0.010)  # model calls no longer move a rate learnt from bulk chunks
    pace.observe(2, 0.001)
    assert pace.rate == pytest.approx(490)
    pace.start()
    assert pace.owed(100.0) == 0  # no credit carried from before the job
    assert pace.owed(100.2) == 24  # 0.25 * 490/s * 0.2 s = 24.5
    pace.spend(24)
    assert pace.owed(100.2) == 0
    assert pace.owed(110.0) == 31  # credit caps at a batch; one slot stays interactive
    pace.spend(100)
    assert pace.credit == 0


def test_lanes_give_bulk_its_share_and_no_more_while_both_wait() -> None:
    for share, expected in ((0.25, 25), (0.1, 10), (1.0, 100)):
        policy = LanePolicy(share)
        lanes = [policy.next_lane() for _ in range(100)]
        assert lanes.count("bulk") == expected, share
    policy = LanePolicy(0.5)
    assert [policy.next_lane() for _ in range(4)] == ["interactive", "bulk"] * 2
