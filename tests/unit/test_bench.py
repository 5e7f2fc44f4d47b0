"""The benchmark's arithmetic: medians of repeats, the verdict against the best peer, --peers."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.peers import PEERS, Launch, chosen
from bench.throughput import Figure, median_of, peer_verdicts


def fig(label: str, rate: float, p50: float, errors: int = 0, ratio: float | None = 1.0) -> Figure:
    return Figure(label, "req/s", rate, p50, 2 * p50, 100, errors, ratio=ratio)


def test_median_of_repeats_takes_each_median_and_every_error() -> None:
    runs = [fig("m c32", 300, 90), fig("m c32", 250, 110, errors=2), fig("m c32", 280, 100)]
    runs[0].cores, runs[1].cores, runs[2].cores = {"worker": 1.0}, {"worker": 2.0}, {"worker": 3.0}
    row = median_of(runs, by="rate")
    assert (row.rate, row.p50_ms, row.errors, row.count) == (280, 100, 2, 300)
    assert row.cores == {"worker": 3.0}  # the CPU of the repeat with the median rate


def test_modelgate_is_judged_against_the_fastest_peer_at_each_concurrency() -> None:
    figs = [
        fig("in-process b32", 500, 60, ratio=None),
        fig("modelgate c1", 90, 10),
        fig("modelgate c32", 390, 100),
        fig("litserve c1", 60, 15),
        fig("litserve c32", 300, 90),
        fig("infinity c1", 70, 12),
        fig("infinity c32", 250, 120),
    ]
    verdicts = {level: (round(r, 2), ok) for level, r, ok in peer_verdicts(figs)}
    assert verdicts == {"c1": (1.2, True), "c32": (1.3, True)}
    figs[4] = fig("litserve c32", 301, 90)  # 390 / 301 < 1.3
    assert not {level: ok for level, _, ok in peer_verdicts(figs)}["c32"]


def test_errors_fail_the_peer_target_and_no_peers_means_no_verdict() -> None:
    ours = [fig("modelgate c32", 900, 100, errors=1), fig("litserve c32", 300, 90)]
    assert peer_verdicts(ours) == [("c32", 3.0, False)]
    assert peer_verdicts([fig("modelgate c32", 900, 100)]) == []


def test_peers_option() -> None:
    assert [p.name for p in chosen("litserve, infinity")] == ["litserve", "infinity"]
    assert chosen("none") == [] and chosen("") == []
    with pytest.raises(SystemExit, match="unknown peer"):
        chosen("triton")
    for peer in PEERS.values():
        assert peer.body % 7 and "%" not in peer.body % 7
        package = peer.name.removesuffix("-onnx").replace("infinity", "infinity-emb")
        assert any(r.startswith(package) for r in peer.requirements)


def test_the_onnx_peer_runs_the_export_it_is_given() -> None:
    peer = PEERS["litserve-onnx"]
    launch = Launch(Path("/m"), 8000, 1, 32, 0.005, "minilm", 2, Path("/x/model.onnx"))
    assert peer.needs_onnx and peer.command(Path("py"), launch)[-2:] == ["2", "/x/model.onnx"]
    assert PEERS["litserve"].command(Path("py"), launch)[-1] == "2"  # torch: no export
