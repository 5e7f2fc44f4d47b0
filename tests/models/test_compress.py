"""distill, prune and evaluate on tiny local models (a 4-layer, 32-wide BERT with MiniLM's
tokenizer) and small generated corpora: the loss falls, a stopped run resumes to the same
weights as one that never stopped, pruning cuts what scores lowest, the saved models load with
from_pretrained, and evaluate's figures are computed from the outputs."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from contract.config import load_registry
from modelgate.cli import main
from modelgate.compress.data import CompressError, load_corpus
from modelgate.compress.distill import CHECKPOINT, Options, Progress, Student, distill
from modelgate.compress.evaluate import evaluate
from modelgate.compress.models import ModelRef, load, resolve
from modelgate.compress.prune import Plan, channel_importance, prune, shrink_ffn
from tests.modelfactory import build_tiny

pytestmark = pytest.mark.models

WORDS = [
    "good",
    "bad",
    "great",
    "awful",
    "fine",
    "terrible",
    "lovely",
    "horrible",
    "okay",
    "neutral",
    "happy",
    "sad",
    "calm",
    "angry",
    "quick",
    "slow",
    "bright",
    "dark",
    "warm",
    "cold",
    "city",
    "river",
    "music",
    "phone",
    "battery",
    "screen",
    "weather",
    "rain",
]


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("corpus") / "texts.txt"
    path.write_text("\n".join(sentence(rng) + f" {i}" for i in range(400)) + "\n")
    return path


@pytest.fixture(scope="module")
def labelled_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sentiment rows whose label follows the words, so a classifier can learn something."""
    rng = random.Random(3)
    path = tmp_path_factory.mktemp("corpus") / "sentiment.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentiment", "confidence", "text"])
        for i in range(300):
            label = ("negative", "neutral", "positive")[i % 3]
            cue = {"negative": "awful", "neutral": "okay", "positive": "lovely"}[label]
            writer.writerow([label, "1", f"{sentence(rng)} {cue} {i}"])
    return path


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> ModelRef:
    folder = build_tiny("feature-extraction", tmp_path_factory.mktemp("m") / "tiny-emb", layers=4)
    return resolve(str(folder), None)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> ModelRef:
    """A random 4-layer classifier made confident (its head scaled up), so that its soft
    targets say something a student can learn."""
    folder = build_tiny("sentiment", tmp_path_factory.mktemp("m") / "tiny-sent", layers=4)
    model, _ = load(resolve(str(folder), None))
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    model.save_pretrained(folder)
    return resolve(str(folder), None)


QUICK = Options(steps=24, batch_size=8, lr=1e-3, checkpoint_every=8, max_length=32)


def run(teacher: ModelRef, corpus: Path, out: Path, **kw: Any) -> dict[str, Any]:
    options = kw.pop("options", QUICK)
    student = kw.pop("student", Student(keep_every=2))
    return distill(
        teacher,
        student,
        load_corpus(corpus),
        out,
        options,
        say=lambda _: None,
        evaluate_texts=40,
        **kw,
    )


def test_an_embedder_distils_into_half_its_layers_and_learns(
    embedder: ModelRef, texts_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "student"
    report = run(embedder, texts_file, out)
    assert report["loss"]["last"] < 0.9 * report["loss"]["first"], report["loss"]
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert report["student"]["parameters"] < report["student"]["teacher_parameters"]
    held = report["held_out"]["candidate"]
    assert held["min_cosine"] <= held["mean_cosine"] < 1.0
    assert 0.0 <= held["top10_overlap"] <= 1.0
    assert json.loads((out / "report.json").read_text()) == report
    assert not (out / CHECKPOINT).exists()
    # The models.yaml entry it wrote is valid and serves the folder as the teacher is served.
    (tmp_path / "models.yaml").write_text("models:\n" + (out / "models-entry.yaml").read_text())
    [spec] = load_registry(tmp_path / "models.yaml").models
    assert (spec.task, spec.source.path) == ("feature-extraction", str(out.resolve()))
    model, _ = load(resolve(str(out), None))
    assert len(model.encoder.layer) == 2


def test_the_layer_term_adds_to_the_output_term(
    embedder: ModelRef, texts_file: Path, tmp_path: Path
) -> None:
    quick = Options(steps=8, batch_size=8, lr=1e-3, max_length=32)
    with_layers = run(embedder, texts_file, tmp_path / "a", options=quick)
    output_only = run(
        embedder,
        texts_file,
        tmp_path / "b",
        options=Options(**{**quick.__dict__, "hidden_weight": 0}),
    )
    assert with_layers["loss"]["first"] > output_only["loss"]["first"] > 0


def test_a_stopped_run_resumes_to_the_weights_of_an_unbroken_one(
    embedder: ModelRef, texts_file: Path, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    run(embedder, texts_file, whole, student=Student(layers=[0, 3]))

    broken = tmp_path / "broken"

    def stop_at_11(p: Progress) -> None:
        if p.step == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(embedder, texts_file, broken, student=Student(layers=[0, 3]), on_step=stop_at_11)
    state = torch.load(broken / CHECKPOINT, weights_only=True)
    assert state["step"] == 8
    seen: list[int] = []
    report = run(
        embedder,
        texts_file,
        broken,
        student=Student(layers=[0, 3]),
        on_step=lambda p: seen.append(p.step),
    )
    assert seen == list(range(9, 25))
    a, b = load_file(whole / "model.safetensors"), load_file(broken / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(report["loss"]["curve"]) == 20

    # Other options do not resume another run's checkpoint.
    other = tmp_path / "other"
    with pytest.raises(KeyboardInterrupt):
        run(embedder, texts_file, other, on_step=stop_at_11)
    with pytest.raises(CompressError, match="another run"):
        run(embedder, texts_file, other, options=Options(**{**QUICK.__dict__, "lr": 5e-4}))


def test_a_classifier_learns_from_soft_targets_and_labels(
    classifier: ModelRef, labelled_csv: Path, tmp_path: Path
) -> None:
    # The output terms alone, embeddings trained: a random teacher's layers and embedding table
    # say nothing about these labels, so its layer term would pull against the cross-entropy
    # (it is tested on an embedder above) and a frozen table could not learn the cue words.
    options = Options(
        freeze_embeddings=False,
        steps=30,
        batch_size=16,
        lr=2e-3,
        max_length=32,
        temperature=2.0,
        alpha=0.5,
        hidden_weight=0,
    )
    report = run(classifier, labelled_csv, tmp_path / "s", options=options)
    assert report["loss"]["last"] < report["loss"]["first"]
    held = report["held_out"]
    assert held["texts"] == 30  # the held-out tenth of 300 rows, stratified
    assert set(held["candidate"]) == {"agreement", "accuracy", "macro_f1"}
    assert set(held["teacher"]) == {"accuracy", "macro_f1"}
    assert 0.0 <= held["candidate"]["accuracy"] <= 1.0
    assert report["corpus"]["labels"] == ["negative", "neutral", "positive"]


def test_labels_other_than_the_teachers_are_refused(
    embedder: ModelRef, labelled_csv: Path, tmp_path: Path
) -> None:
    folder = build_tiny("text-classification", tmp_path / "two", layers=2)
    with pytest.raises(CompressError, match="not the teacher's"):
        run(resolve(str(folder), None), labelled_csv, tmp_path / "s")


def test_ffn_channels_that_add_nothing_are_cut_first(embedder: ModelRef) -> None:
    model, tokenizer = load(embedder)
    dead = [3, 17, 40]
    for layer in model.encoder.layer:
        with torch.no_grad():
            layer.output.dense.weight[:, dead] = 0
    batch = tokenizer(
        ["a few words here", "and some more words there"], padding=True, return_tensors="pt"
    )
    before = model(**batch)[0]
    scores = channel_importance(model, [batch])
    assert all(float(s[dead].max()) == 0.0 for s in scores)
    kept = shrink_ffn(model, scores, keep=64 - len(dead))
    assert all(not set(dead) & set(k) for k in kept)
    assert model.config.intermediate_size == 61
    # Cutting channels that contribute nothing leaves the outputs as they were.
    torch.testing.assert_close(model(**batch)[0], before, atol=1e-5, rtol=1e-5)


def test_prune_cuts_the_least_important_layer_and_saves_a_loadable_model(
    embedder: ModelRef, texts_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pruned"
    report = prune(
        embedder,
        load_corpus(texts_file),
        out,
        Plan(drop_layers=1, ffn_keep=0.5, calibration=32),
        say=lambda _: None,
        evaluate_texts=40,
    )
    scores = report["layer_importance"]
    assert len(scores) == 4 and len(set(scores)) == 4
    dropped = scores.index(min(scores))
    assert report["kept_layers"] == [i for i in range(4) if i != dropped]
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["intermediate_size"]) == (3, 32)
    assert report["parameters"]["after"] < report["parameters"]["before"]
    model, _ = load(resolve(str(out), None))
    assert model.encoder.layer[0].intermediate.dense.out_features == 32
    assert report["held_out"]["candidate"]["mean_cosine"] < 1.0


def test_a_pruned_model_distils_further_from_its_folder(
    embedder: ModelRef, texts_file: Path, tmp_path: Path
) -> None:
    pruned = tmp_path / "pruned"
    prune(
        embedder,
        load_corpus(texts_file),
        pruned,
        Plan(ffn_keep=0.25, calibration=16),
        say=lambda _: None,
        evaluate_texts=0,
    )
    before = load_file(pruned / "model.safetensors")
    report = run(
        embedder,
        texts_file,
        tmp_path / "healed",
        student=Student(folder=resolve(str(pruned), None)),
    )
    assert report["student"]["from_folder"] == str(pruned.resolve())
    assert report["student"]["layers"] == 4 and report["student"]["embeddings_frozen"]
    after = load_file(tmp_path / "healed" / "model.safetensors")
    assert after.keys() == before.keys()
    assert torch.equal(
        after["embeddings.word_embeddings.weight"], before["embeddings.word_embeddings.weight"]
    )
    assert not torch.equal(
        after["encoder.layer.0.intermediate.dense.weight"],
        before["encoder.layer.0.intermediate.dense.weight"],
    )
    assert report["loss"]["last"] < report["loss"]["first"]


def test_evaluate_puts_teacher_candidates_and_int8_side_by_side(
    embedder: ModelRef, texts_file: Path, tmp_path: Path
) -> None:
    corpus = load_corpus(texts_file)
    run(embedder, texts_file, tmp_path / "student")
    student = resolve(str(tmp_path / "student"), None)
    report = evaluate(
        embedder,
        [student],
        corpus,
        variants=["dynamic-int8"],
        limit=30,
        seconds=0.3,
        rounds=1,
        batch=8,
        say=lambda _: None,
    )
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["tiny-emb", "tiny-emb dynamic-int8", "student", "student dynamic-int8"]
    assert rows["tiny-emb"]["mean_cosine"] == 1.0 and rows["tiny-emb"]["top10_overlap"] == 1.0
    assert rows["student"]["mean_cosine"] < 1.0
    # int8 moves a tiny model's vectors by ~1e-4: close, and its Linear weights a quarter the size.
    assert 0.99 < rows["tiny-emb dynamic-int8"]["min_cosine"] <= 1.0
    assert rows["tiny-emb dynamic-int8"]["size_mb"] < rows["tiny-emb"]["size_mb"]
    for row in rows.values():
        assert row["p50_ms_b1"] > 0 and row["texts_per_s_b8"] > 0 and row["size_mb"] > 0
    assert rows["tiny-emb"]["speedup_b8"] == 1.0


def test_evaluate_scores_classifiers_on_the_corpus_labels(
    classifier: ModelRef, labelled_csv: Path
) -> None:
    corpus = load_corpus(labelled_csv)
    report = evaluate(classifier, [], corpus, variants=[], seconds=0, say=lambda _: None)
    [row] = report["rows"]
    assert row["agreement"] == 1.0
    # A random 3-class head: its accuracy is measured, not assumed.
    truth = corpus.held_out_labels
    assert truth is not None and 0.0 <= row["accuracy"] <= 1.0
    assert set(row) >= {"accuracy", "macro_f1", "size_mb"}


def test_the_cli_runs_and_refuses_mistakes_in_one_line(
    embedder: ModelRef, texts_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli-student"
    code = main(
        [
            "distill",
            embedder.location,
            "--corpus",
            str(texts_file),
            "--out",
            str(out),
            "--steps",
            "6",
            "--batch-size",
            "8",
            "--eval-texts",
            "20",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "saved" in printed.out and "mean_cosine" in printed.out
    code = main(
        [
            "evaluate",
            embedder.location,
            "--corpus",
            str(texts_file),
            "--candidate",
            str(out),
            "--variants",
            "none",
            "--texts",
            "20",
            "--seconds",
            "0.2",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert json.loads((tmp_path / "r.json").read_text())["rows"][1]["model"] == "cli-student"
    distill = ["distill", embedder.location, "--corpus", str(texts_file)]
    mistakes = [
        (
            [
                "distill",
                embedder.location,
                "--corpus",
                str(tmp_path / "none.txt"),
                "--out",
                str(tmp_path / "x"),
            ],
            "no such corpus file",
        ),
        ([*distill, "--out", str(out)], "not empty"),
        (
            ["distill", "nosuchmodel", "--corpus", str(texts_file), "--out", str(tmp_path / "y")],
            "not a model folder",
        ),
        ([*distill, "--out", str(tmp_path / "z"), "--alpha", "2"], "--alpha"),
        ([*distill, "--out", str(tmp_path / "z"), "--layers", "0,9"], "from 0 to 3"),
        (
            ["prune", embedder.location, "--corpus", str(texts_file), "--out", str(tmp_path / "p")],
            "nothing to prune",
        ),
        (
            ["evaluate", embedder.location, "--corpus", str(texts_file), "--variants", "int4"],
            "choose from",
        ),
    ]
    for argv, message in mistakes:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, err
