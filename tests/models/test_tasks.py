"""Every task engine against the transformers pipeline for its task, on tiny local models: the
same outputs, whatever the batch. Question answering has no pipeline in transformers 5; its
engine is checked against a brute-force search over the model's own logits instead."""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline

from contract.config import ModelSpec
from tests.models.cases import FP32_TOL, max_abs_diff, minilm_spec
from workers.engines import Engine
from workers.pipelines import build_engine
from workers.tasks import InputTooLong, InvalidItem

SENTENCES = [
    "Ada Lovelace lived in London with Charles Babbage.",
    "hello",
    "Paris and Berlin are cities in Europe, far from New York",
    "Ünïcödé names like Zoë Müller",
]


def task_spec(task: str, path: Path, **options: Any) -> ModelSpec:
    return ModelSpec(name="tiny", task=task, source={"path": str(path)}, **options)


@pytest.fixture(scope="module")
def engines(model_dirs: dict[str, Path]) -> dict[str, Engine]:
    tasks = ["token-classification", "zero-shot-classification", "fill-mask", "rerank"]
    tasks.append("question-answering")
    return {t: build_engine(task_spec(t, model_dirs[t], max_batch_size=3)) for t in tasks}


def same(got: Any, want: Any, tol: float = FP32_TOL) -> None:
    """Equal JSON values, floats within ``tol``."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (got, want)
        for key in want:
            same(got[key], want[key], tol)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            same(g, w, tol)
    elif isinstance(want, float):
        assert math.isclose(got, want, abs_tol=tol), (got, want)
    else:
        assert got == want, (got, want)


def fold(text: str) -> str:
    """Lower case, no accents, no spaces or word-piece marks: how an uncased tokenizer's
    ``word`` compares with the original text."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return (
        "".join(c for c in decomposed if not unicodedata.combining(c))
        .replace("##", "")
        .replace(" ", "")
    )


def plain(value: Any) -> Any:
    """A pipeline's output as JSON values (numpy scalars become floats)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


@pytest.mark.parametrize("strategy", [None, "simple", "first", "average", "max"])
def test_token_classification_equals_the_pipeline(
    engines: dict[str, Engine], model_dirs: dict[str, Path], strategy: str | None
) -> None:
    reference = pipeline("token-classification", model=str(model_dirs["token-classification"]))
    params = {"aggregation_strategy": strategy} if strategy else {}
    got = engines["token-classification"](SENTENCES, params)
    want = [plain(reference(s, **params)) for s in SENTENCES]
    same(got, want)
    for text, entities in zip(SENTENCES, got, strict=True):
        for entity in entities:
            # Offsets slice back to the entity's text, as the uncased tokenizer spells it.
            assert fold(text[entity["start"] : entity["end"]]) == fold(entity["word"])
            if strategy:
                assert "entity_group" in entity
    assert got[0], "the random head labels some tokens as entities"


@pytest.mark.parametrize(
    "params",
    [
        {"candidate_labels": ["travel", "cooking", "science"]},
        {"candidate_labels": ["travel", "cooking"], "multi_label": True},
        {"candidate_labels": ["one label"]},
        {"candidate_labels": ["a", "b"], "hypothesis_template": "Das ist {}."},
    ],
)
def test_zero_shot_equals_the_pipeline(
    engines: dict[str, Engine], model_dirs: dict[str, Path], params: dict[str, Any]
) -> None:
    reference = pipeline(
        "zero-shot-classification", model=str(model_dirs["zero-shot-classification"])
    )
    got = engines["zero-shot-classification"](SENTENCES, params)
    want = [plain(reference(s, **params)) for s in SENTENCES]
    same(got, want)


def test_zero_shot_batches_requests_with_different_labels_together(
    engines: dict[str, Engine],
) -> None:
    engine = engines["zero-shot-classification"]
    a = {"candidate_labels": ["x", "y"]}
    b = {"candidate_labels": ["p", "q", "r"], "multi_label": True}
    together = engine.run_groups([(SENTENCES[:2], a), (SENTENCES[2:], b)])
    same(together, [engine(SENTENCES[:2], a), engine(SENTENCES[2:], b)])


def test_zero_shot_under_a_token_budget_answers_the_same(
    engines: dict[str, Engine], model_dirs: dict[str, Path]
) -> None:
    """Premise-hypothesis pairs in passes of at most 40 tokens: the same scores."""
    spec = task_spec(
        "zero-shot-classification", model_dirs["zero-shot-classification"], max_batch_tokens=40
    )
    params = {"candidate_labels": ["a", "b", "c"], "multi_label": True}
    same(
        build_engine(spec)(SENTENCES, params),
        engines["zero-shot-classification"](SENTENCES, params),
    )


@pytest.mark.parametrize(
    "params",
    [{}, {"top_k": 2}, {"targets": ["london", "paris"]}, {"targets": ["city"], "top_k": 1}],
)
def test_fill_mask_equals_the_pipeline(
    engines: dict[str, Engine], model_dirs: dict[str, Path], params: dict[str, Any]
) -> None:
    reference = pipeline("fill-mask", model=str(model_dirs["fill-mask"]))
    texts = ["Ada lived in [MASK].", "[MASK] is a city", "two [MASK] in one [MASK] text"]
    got = engines["fill-mask"](texts, params)
    want = [plain(reference(t, **params)) for t in texts]
    same(got, want)
    assert len(got[2]) == 2, "one list of fills per mask"


def test_fill_mask_refuses_a_text_without_the_mask(engines: dict[str, Engine]) -> None:
    with pytest.raises(InvalidItem, match=r"\[MASK\]"):
        engines["fill-mask"](["no mask here"], {})
    with pytest.raises(InvalidItem, match="none of the targets"):
        engines["fill-mask"](["a [MASK]"], {"targets": [" ", "\u200b"]})


def test_rerank_scores_equal_the_classification_pipeline_on_pairs(
    engines: dict[str, Engine], model_dirs: dict[str, Path]
) -> None:
    reference = pipeline("text-classification", model=str(model_dirs["rerank"]))
    items = [{"query": "where did Ada live", "document": s} for s in SENTENCES]
    got = engines["rerank"](items, {})
    want = [
        reference({"text": i["query"], "text_pair": i["document"]}, function_to_apply="sigmoid")
        for i in items
    ]
    same(got, [float(w["score"]) for w in want])


def test_batching_never_changes_an_output(engines: dict[str, Engine]) -> None:
    """max_batch_size is 3: four inputs run in two chunks; each must equal its run alone."""
    cases: dict[str, tuple[list[Any], dict[str, Any]]] = {
        "token-classification": (SENTENCES, {"aggregation_strategy": "simple"}),
        "zero-shot-classification": (SENTENCES, {"candidate_labels": ["a", "b"]}),
        "fill-mask": ([f"{s} [MASK]" for s in SENTENCES], {}),
        "rerank": ([{"query": "q", "document": s} for s in SENTENCES], {}),
        "question-answering": ([{"question": "who?", "context": s} for s in SENTENCES], {}),
    }
    for task, (items, params) in cases.items():
        together = engines[task](items, params)
        alone = [engines[task]([item], params)[0] for item in items]
        same(together, alone)


def brute_force_answer(path: Path, question: str, context: str, max_len: int = 15) -> str:
    """The best answer span of a one-window context, searched pair by pair."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path).eval()
    enc = tokenizer(question, context, return_offsets_mapping=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**{k: v for k, v in enc.items() if k != "offset_mapping"})
    ids = enc.sequence_ids(0)
    allowed = [i for i, s in enumerate(ids) if s == 1]
    candidates = [0, *allowed]  # CLS takes part in the softmax, then drops out

    def probs(logits: torch.Tensor) -> dict[int, float]:
        exp = {i: math.exp(float(logits[0, i])) for i in candidates}
        total = sum(exp.values())
        return {i: e / total for i, e in exp.items()}

    start, end = probs(out.start_logits), probs(out.end_logits)
    best = max(
        ((s, e) for s in allowed for e in allowed if s <= e < s + max_len),
        key=lambda se: start[se[0]] * end[se[1]],
    )
    words = enc.word_ids(0)
    first = next(i for i in allowed if words[i] == words[best[0]])
    last = [i for i in allowed if words[i] == words[best[1]]][-1]
    offsets = enc["offset_mapping"][0]
    return context[int(offsets[first][0]) : int(offsets[last][1])]


def test_question_answering_finds_the_best_span(
    engines: dict[str, Engine], model_dirs: dict[str, Path]
) -> None:
    engine = engines["question-answering"]
    items = [{"question": "Where did Ada live?", "context": s} for s in SENTENCES]
    answers = engine(items, {})
    for item, answer in zip(items, answers, strict=True):
        context = item["context"]
        assert answer["answer"] == context[answer["start"] : answer["end"]]
        want = brute_force_answer(model_dirs["question-answering"], item["question"], context)
        assert answer["answer"] == want
        assert 0 < answer["score"] <= 1


def test_question_answering_top_k_and_long_contexts(engines: dict[str, Engine]) -> None:
    engine = engines["question-answering"]
    context = " ".join(f"Word{i} sits in place {i}." for i in range(400))  # > 512 tokens
    [ranked] = engine(
        [{"question": "Which word sits in place 390?", "context": context}], {"top_k": 3}
    )
    assert len(ranked) == 3
    assert [a["score"] for a in ranked] == sorted((a["score"] for a in ranked), reverse=True)
    assert len({(a["start"], a["end"]) for a in ranked}) == 3, "a span counts once"
    for answer in ranked:
        assert answer["answer"] == context[answer["start"] : answer["end"]]
    reached = engine(
        [{"question": "q", "context": context}],
        {"top_k": 20, "doc_stride": 64, "max_answer_len": 3},
    )[0]
    assert max(a["end"] for a in reached) > len(context) // 2, "later windows are read too"
    impossible = engine([{"question": "q", "context": "short"}], {"handle_impossible_answer": True})
    assert set(impossible[0]) == {"score", "start", "end", "answer"}


def test_question_answering_refuses_a_bad_item(engines: dict[str, Engine]) -> None:
    with pytest.raises(InvalidItem, match="question"):
        engines["question-answering"](["just a string"], {})


def test_ner_with_truncation_off_refuses_a_long_input(model_dirs: dict[str, Path]) -> None:
    engine = build_engine(
        task_spec("token-classification", model_dirs["token-classification"], truncation=False)
    )
    with pytest.raises(InputTooLong, match="takes at most 512"):
        engine(["word " * 600], {})


def test_matryoshka_dimensions_truncate_then_renormalise(minilm_fast: Engine) -> None:
    full = torch.tensor(minilm_fast(SENTENCES, {"normalize": False}))
    cut = torch.tensor(minilm_fast(SENTENCES, {"dimensions": 128}))
    assert cut.shape == (len(SENTENCES), 128)
    want = torch.nn.functional.normalize(full[:, :128], dim=-1)
    assert max_abs_diff(cut.tolist(), want.tolist()) < FP32_TOL
    assert torch.allclose(cut.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_truncation_direction_keeps_the_chosen_end(model_dirs: dict[str, Path]) -> None:
    engine = build_engine(minilm_spec(max_batch_size=4))
    tail = " the end is what matters here"
    text = "filler " * 600 + tail
    left = engine([text], {"truncation_direction": "left"})[0]
    right = engine([text], {"truncation_direction": "right"})[0]
    kept_tail = engine([("filler " * 600)[-2000:] + tail], {"truncation_direction": "left"})[0]
    assert max_abs_diff(left, right) > 1e-3
    assert max_abs_diff(left, kept_tail) < 1e-4, "left truncation keeps the last tokens"


def test_a_label_too_long_for_the_model_is_refused_not_crashed(engines: dict[str, Engine]) -> None:
    """Zero-shot truncates only the premise: a hypothesis over the limit is a 413, not a 500."""
    with pytest.raises(InputTooLong, match="second text of a pair has"):
        engines["zero-shot-classification"](["hello"], {"candidate_labels": ["word " * 600]})


def test_the_reference_pipeline_applies_dimensions_and_truncation_side_too(
    minilm_fast: Engine,
) -> None:
    reference = build_engine(minilm_spec(fast_path=False, matryoshka_dimensions=[128]))
    long_text = "filler " * 600 + " the end is what matters here"
    for params in ({"dimensions": 128}, {"truncation_direction": "left"}):
        texts = [*SENTENCES, long_text]
        assert max_abs_diff(reference(texts, params), minilm_fast(texts, params)) < FP32_TOL


def test_fill_mask_refuses_a_mask_that_truncation_cuts_off(engines: dict[str, Engine]) -> None:
    with pytest.raises(InputTooLong, match="a mask is past"):
        engines["fill-mask"](["word " * 600 + "[MASK]"], {})


def test_question_answering_with_no_possible_span_is_an_empty_list(
    engines: dict[str, Engine],
) -> None:
    for top_k in (1, 2):
        assert engines["question-answering"](
            [{"question": "q", "context": " "}], {"top_k": top_k}
        ) == [[]]
