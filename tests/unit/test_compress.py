"""The pure pieces of the compression commands: the corpus split, layer choice, batch order,
the loss summary and the quality arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contract.config import load_registry
from modelgate.compress.data import CompressError, load_corpus
from modelgate.compress.distill import Options, batch_rows, loss_summary
from modelgate.compress.evaluate import class_quality, embedding_quality, top_k_overlap
from modelgate.compress.models import ModelRef, every_kth, parse_layers, yaml_snippet
from modelgate.sentiment.corpus import LABELS, macro_f1

ROOT = Path(__file__).resolve().parents[2]


def test_a_text_corpus_splits_the_same_way_for_a_seed_and_never_overlaps(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"text {i}" for i in range(100)) + "\n\n  \ntext 3\n")
    a, b, c = load_corpus(path, seed=1), load_corpus(path, seed=1), load_corpus(path, seed=2)
    assert (a.train, a.held_out) == (b.train, b.held_out)
    assert a.held_out != c.held_out
    assert len(a.held_out) == 10 and len(a.train) == 90  # blank lines and a repeat dropped
    assert not set(a.train) & set(a.held_out)
    assert a.train_labels is None and a.label_names is None


def test_the_labelled_held_out_part_is_mixed_not_grouped_by_class(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    rows = [f"{label},1,{label} text {i}" for label in LABELS for i in range(40)]
    path.write_text("sentiment,confidence,text\n" + "\n".join(rows) + "\n")
    corpus = load_corpus(path, seed=0)
    assert corpus.held_out_labels is not None and len(corpus.held_out) == 12
    assert len(set(corpus.held_out_labels[:6])) > 1  # the first N are a fair sample
    assert sorted(corpus.held_out_labels) == [0] * 4 + [1] * 4 + [2] * 4  # still stratified
    for text, label in zip(corpus.held_out, corpus.held_out_labels, strict=True):
        assert text.startswith(LABELS[label])
    assert len(set(corpus.sample(10, seed=0))) == 10
    assert corpus.sample(10, seed=0) == corpus.sample(10, seed=0)


def test_the_models_yaml_entry_is_valid_whatever_the_names(tmp_path: Path) -> None:
    ref = ModelRef("X", "/m", "feature-extraction", "cls")
    folder = tmp_path / "odd: #name"
    entry = yaml_snippet("My Model: Student!" * 8, ref, folder)
    (tmp_path / "m.yaml").write_text("models:\n" + entry)
    [spec] = load_registry(tmp_path / "m.yaml").models
    assert spec.source.path == str(folder) and spec.pooling == "cls"
    assert spec.name.startswith("my-model-student") and len(spec.name) <= 63


def test_a_corpus_too_small_or_absent_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="no such corpus file"):
        load_corpus(tmp_path / "none.txt")
    (tmp_path / "few.txt").write_text("a\nb\nc\n")
    with pytest.raises(CompressError, match="need at least 20"):
        load_corpus(tmp_path / "few.txt")


def test_every_kth_keeps_the_top_layer() -> None:
    assert every_kth(6, 2) == [1, 3, 5]
    assert every_kth(6, 3) == [2, 5]
    assert every_kth(12, 4) == [3, 7, 11]
    assert every_kth(4, 1) == [0, 1, 2, 3]
    with pytest.raises(CompressError):
        every_kth(6, 0)
    assert parse_layers("0, 2,4") == [0, 2, 4]
    with pytest.raises(CompressError, match="layer numbers"):
        parse_layers("0,two")


def test_the_rows_of_a_step_depend_only_on_seed_and_step() -> None:
    fresh: dict[int, torch.Tensor] = {}
    order = [batch_rows(s, 4, 10, 0, fresh).tolist() for s in range(6)]
    # Two batches an epoch (the remainder of 10 rows is left out), each epoch a permutation.
    assert all(len(rows) == 4 for rows in order)
    assert len(set(order[0] + order[1])) == 8
    assert order[0] + order[1] != order[2] + order[3]
    assert batch_rows(5, 4, 10, 0, {}).tolist() == order[5]
    assert batch_rows(5, 4, 10, 1, {}).tolist() != order[5]


def test_loss_summary() -> None:
    losses = [float(100 - i) for i in range(100)]
    summary = loss_summary(losses)
    assert summary["first"] == pytest.approx(95.5) and summary["last"] == pytest.approx(5.5)
    assert len(summary["curve"]) == 20 and summary["curve"] == sorted(summary["curve"])[::-1]
    assert loss_summary([2.0]) == {"first": 2.0, "last": 2.0, "curve": [2.0]}


def test_options_refuse_nonsense_in_one_message() -> None:
    with pytest.raises(CompressError) as err:
        Options(steps=0, alpha=1.5, loss="l1").check()
    assert "--steps" in str(err.value) and "--alpha" in str(err.value)
    assert "--loss" in str(err.value)


def test_top_k_overlap_and_cosines() -> None:
    torch.manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(30, 8, dtype=torch.float64), dim=-1)
    assert top_k_overlap(a, a, 10) == 1.0
    shuffled = a[torch.randperm(30)]
    assert top_k_overlap(a, shuffled, 10) < 0.7
    same = embedding_quality(a.tolist(), a.tolist())
    assert same == {"mean_cosine": 1.0, "min_cosine": 1.0, "top10_overlap": 1.0}
    flipped = embedding_quality((-a).tolist(), a.tolist())
    assert flipped["mean_cosine"] == -1.0


def test_class_quality_and_macro_f1() -> None:
    names = ("negative", "neutral", "positive")
    teacher = [{"label": n} for n in ["negative", "neutral", "positive", "positive"]]
    student = [{"label": n} for n in ["negative", "neutral", "neutral", "positive"]]
    truth = [0, 1, 2, 1]
    figures = class_quality(student, teacher, truth, names)
    assert figures["agreement"] == 0.75
    assert figures["accuracy"] == 0.5  # predicted 0,1,1,2 against 0,1,2,1
    assert figures["macro_f1"] == pytest.approx(macro_f1(truth, [0, 1, 1, 2], 3), abs=1e-4)
    assert macro_f1([0, 1, 2], [0, 1, 2], 3) == 1.0
    # Labels the corpus does not name: agreement only.
    assert set(class_quality(teacher, teacher, truth, ("a", "b", "c"))) == {"agreement"}


def test_the_student_example_config_is_valid() -> None:
    registry = load_registry(ROOT / "examples" / "models-student.yaml")
    assert [m.name for m in registry.models] == ["minilm", "minilm-l3"]
    assert registry.get("minilm-l3").source.path == "../models/minilm-l3"  # type: ignore[union-attr]
