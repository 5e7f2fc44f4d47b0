"""``engine: onnx`` and ``engine: openvino`` against ``engine: torch`` on the same weights: every
task, on padded batches of mixed lengths split into chunks, answers within :data:`FP32_TOL`;
the export cache is reused, and rebuilt when broken or stale; an export that fails is named."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer
from transformers.modeling_outputs import SequenceClassifierOutput

from contract.config import ModelSpec, load_registry
from tests.modelfactory import MINILM_DIR, build_tiny
from tests.models.cases import FP32_TOL, TEXTS
from tests.models.test_tasks import same
from workers.engines import Engine
from workers.main import try_load
from workers.pipelines import build_engine
from workers.runtime import (
    GRAPH,
    MANIFEST,
    ExportedModel,
    ExportError,
    ensure_export,
    publish,
    verified,
)

CASES: dict[str, tuple[list[Any], dict[str, Any]]] = {
    "feature-extraction": (TEXTS, {}),
    "text-classification": (TEXTS, {"top_k": 2}),
    "token-classification": (TEXTS, {}),
    "zero-shot-classification": (TEXTS, {"candidate_labels": ["a", "b c", "a longer label"]}),
    "fill-mask": ([f"{t} [MASK] ." for t in TEXTS], {"top_k": 3}),
    "rerank": ([{"query": "which fox?", "document": t} for t in TEXTS], {}),
    "question-answering": ([{"question": "what is it?", "context": t} for t in TEXTS], {}),
}
"""Each task's items (lengths from 1 to ~40 tokens) and parameters."""


def spec_for(task: str, model_dirs: dict[str, Path], engine: str) -> ModelSpec:
    if task == "feature-extraction":
        path = MINILM_DIR  # the real all-MiniLM-L6-v2
    else:
        path = model_dirs["tiny" if task == "text-classification" else task]
    # Chunks of two: every call pads, and the rows come back from several forward passes.
    source = {"path": str(path)}
    return ModelSpec(name="m", task=task, source=source, max_batch_size=2, engine=engine)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def on_torch(model_dirs: dict[str, Path]) -> dict[str, list[Any]]:
    """Each task's answers from the torch engine: the reference."""
    return {
        task: build_engine(spec_for(task, model_dirs, "torch"))(items, params)
        for task, (items, params) in CASES.items()
    }


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
@pytest.mark.parametrize("task", list(CASES))
def test_every_task_answers_as_it_does_on_torch(
    task: str,
    engine: str,
    model_dirs: dict[str, Path],
    exports: Path,
    on_torch: dict[str, list[Any]],
) -> None:
    served = build_engine(spec_for(task, model_dirs, engine), exports=exports)
    assert isinstance(served.model, ExportedModel)
    items, params = CASES[task]
    same(served(items, params), on_torch[task], FP32_TOL)
    one = served(items[:1], params)  # a batch of one: its own (unpadded) shapes
    same(one, on_torch[task][:1], FP32_TOL)


def _tiny_spec(path: Path) -> ModelSpec:
    return ModelSpec(
        name="tiny", task="text-classification", source={"path": str(path)}, engine="onnx"
    )


def _answer(engine: Engine) -> list[Any]:
    return engine(TEXTS, {"top_k": 2})


def test_an_export_is_reused_and_a_broken_or_stale_one_rebuilt(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    spec = _tiny_spec(model_dirs["tiny"])
    want = _answer(build_engine(spec.model_copy(update={"engine": "torch"})))
    first = build_engine(spec, exports=tmp_path)
    folder = first.model.folder  # type: ignore[union-attr]
    graph = folder / GRAPH
    assert verified(folder) is not None and folder.parent.parent == tmp_path
    written = graph.stat().st_mtime_ns

    again = build_engine(spec, exports=tmp_path)
    assert again.model.folder == folder  # type: ignore[union-attr]
    assert graph.stat().st_mtime_ns == written, "a verified export was written again"

    weights = max(
        (p for p in folder.iterdir() if p.name not in (MANIFEST, GRAPH)), key=os.path.getsize
    )
    with weights.open("r+b") as fh:  # a torn copy: its bytes changed, its size not
        fh.seek(weights.stat().st_size // 2)
        fh.write(b"torn" * 16)
    assert verified(folder) is None
    rebuilt = build_engine(spec, exports=tmp_path)
    assert verified(folder) is not None, "a broken export was served, not rebuilt"
    same(_answer(rebuilt), want, FP32_TOL)

    (folder / MANIFEST).unlink()  # an export cut off before its manifest
    same(_answer(build_engine(spec, exports=tmp_path)), want, FP32_TOL)
    assert verified(folder) is not None

    other = build_tiny("text-classification", tmp_path / "retrained", seed=1)
    retrained = build_engine(_tiny_spec(other), exports=tmp_path)
    assert retrained.model.folder != folder, "other weights reused a stale export"  # type: ignore[union-attr]
    assert _answer(retrained) != _answer(rebuilt)


def test_an_export_another_worker_finished_meanwhile_is_kept(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    """Workers of one model start together and may all export: the first verified export in
    place stays (others may be loading it); a broken one is replaced whole."""
    theirs = build_engine(_tiny_spec(model_dirs["tiny"]), exports=tmp_path / "exports")
    folder = theirs.model.folder  # type: ignore[union-attr]
    ours = tmp_path / "ours"
    shutil.copytree(folder, ours)  # this worker's own finished export
    graph = (folder / GRAPH).stat().st_ino
    publish(ours, folder)
    assert (folder / GRAPH).stat().st_ino == graph, "a verified export was replaced"
    assert ours.exists()  # left for ensure_export to remove

    (folder / GRAPH).write_bytes(b"torn")
    publish(ours, folder)
    assert verified(folder) is not None and not ours.exists(), "a broken export was kept"

    again = tmp_path / "again"
    shutil.copytree(folder, again)
    shutil.rmtree(folder)  # none yet: moved into place
    publish(again, folder)
    assert verified(folder) is not None and not again.exists()


class Branchy(torch.nn.Module):
    """A forward pass that depends on the values of its input: eager torch runs it, the
    exporter (which traces shapes, not values) cannot."""

    def forward(self, input_ids: torch.Tensor, **_: Any) -> SequenceClassifierOutput:
        sign = 1.0 if int(input_ids.sum()) % 2 else -1.0
        return SequenceClassifierOutput(logits=sign * input_ids.float())


def test_an_export_that_fails_says_so(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    with pytest.raises(ExportError, match="the ONNX export failed: "):
        ensure_export("branchy", Branchy(), tokenizer, "sha256:x", tmp_path)
    assert not any((tmp_path / "branchy").iterdir()), "a failed export left files behind"


def test_a_worker_that_cannot_export_names_the_model_and_engine(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the export folder should be")
    config = tmp_path / "models.yaml"
    entry = {"name": "tiny-onnx", "task": "text-classification", "engine": "onnx"}
    entry["source"] = {"path": str(model_dirs["tiny"])}  # type: ignore[assignment]
    config.write_text(json.dumps({"models": [entry]}))
    registry = load_registry(config)
    engine, problem = try_load(registry.models[0], registry, blocked)
    assert engine is None and problem is not None
    assert problem.startswith("model 'tiny-onnx' (") and "engine onnx) cannot load" in problem
    assert "cannot write the export folder" in problem
