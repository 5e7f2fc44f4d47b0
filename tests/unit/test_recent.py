"""The recent-activity buckets' pure logic: binning, quantiles, the window summary."""

from __future__ import annotations

from typing import Any

from contract.jobs import Keys
from contract.recent import (
    BOUNDS_MS,
    BUCKET_S,
    MAX_WINDOW_S,
    Tally,
    bin_of,
    bucket_of,
    bucket_starts,
    quantile,
    summarize,
)


class RecordingPipe:
    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def hincrby(self, *args: Any) -> None:
        self.commands.append(("hincrby", *args))

    def expire(self, *args: Any) -> None:
        self.commands.append(("expire", *args))


def test_times_fall_in_the_bin_of_their_upper_bound() -> None:
    assert bin_of(0) == 0
    assert bin_of(1) == 0
    assert bin_of(1.01) == 1
    assert bin_of(BOUNDS_MS[-1] + 1) == len(BOUNDS_MS)


def test_buckets_start_on_multiples_of_the_bucket_length() -> None:
    assert bucket_of(1_000_009.9) == 1_000_000
    starts = bucket_starts(1_000_015.0, 60)
    assert starts == [1_000_010 - BUCKET_S * i for i in range(5, -1, -1)]
    assert len(bucket_starts(1_000_015.0, 10 * MAX_WINDOW_S)) == MAX_WINDOW_S // BUCKET_S


def test_a_tally_writes_its_counts_to_one_bucket_with_a_ttl() -> None:
    tally = Tally()
    tally.add("requests")
    tally.add("requests", 2)
    tally.add("errors", 0)  # nothing to add: not written
    tally.time("latency", 12.0)
    pipe = RecordingPipe()
    tally.write(pipe, Keys("p"), "m", at=1_000_005.0)
    key = "p:recent:m:1000000"
    assert ("hincrby", key, "requests", 3) in pipe.commands
    assert ("hincrby", key, f"latency:{bin_of(12.0)}", 1) in pipe.commands
    assert not any(c[2] == "errors" for c in pipe.commands if c[0] == "hincrby")
    assert pipe.commands[-1][0] == "expire" and pipe.commands[-1][1] == key


def test_quantiles_interpolate_within_the_bin() -> None:
    assert quantile({}, 0.5) is None
    one_bin = {bin_of(10): 100}  # all samples in (7, 10] ms
    assert 7 < quantile(one_bin, 0.5) <= 10  # type: ignore[operator]
    spread = {bin_of(1): 99, bin_of(1000): 1}
    assert quantile(spread, 0.5) <= 1  # type: ignore[operator]
    assert quantile(spread, 0.995) > 700  # type: ignore[operator]


def test_a_summary_adds_buckets_and_reads_rates_ratios_and_errors() -> None:
    now = 1_000_055.0
    tally = Tally()
    buckets = [
        (999_990, {"requests": 5, "items": 40, "batches": 4, "cache_hit": 1, "cache_miss": 3}),
        (1_000_050, {"requests": 6, "error:overloaded": 2, "failed:inference_failed": 1}),
    ]
    tally.time("compute", 20.0)
    buckets.append((1_000_040, dict(tally.counts)))
    s = summarize(buckets, now)
    assert s["requests"] == 11
    assert s["requests_series"] == [5, 6, 0]
    assert s["requests_per_s"] == round(6 / 15, 3)  # the older bucket is outside the minute
    assert s["mean_batch_size"] == 10
    assert s["cache_hit_ratio"] == 0.25
    assert s["errors"] == {"inference_failed": 1, "overloaded": 2}
    assert s["compute_ms"]["p50"] is not None and s["queue_ms"]["p50"] is None
