"""Models for the compression commands: which model a name or path means, loading it for
training, cutting layers out of it, its pooled output, and saving a folder the worker serves.
torch and transformers are imported inside functions, so the CLI loads without them.

Encoders of the BERT family (BERT, RoBERTa, XLM-R, MiniLM, ELECTRA: ``base_model.encoder.layer``)
can be cut; any other architecture gets a one-line error saying so."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.config import ConfigError, load_registry, resolve_source
from modelgate.compress.data import CompressError, Corpus, cannot_load
from modelgate.modelfiles import quiet_transformers, save_model, staged

REPORT = "report.json"
SNIPPET = "models-entry.yaml"

TASKS = ("feature-extraction", "text-classification")
"""What can be distilled, pruned and evaluated: embeddings (pooled vectors) and classifiers."""


@dataclass(frozen=True)
class ModelRef:
    """A model to read: where from_pretrained finds it, and what it is served as."""

    name: str
    location: str
    task: str
    pooling: str = "mean"
    revision: str | None = None

    @property
    def is_classifier(self) -> bool:
        return self.task == "text-classification"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "location": self.location, "task": self.task} | (
            {"revision": self.revision} if self.revision else {}
        )


def resolve(
    ref: str, config: str | None, *, task: str | None = None, pooling: str = "mean"
) -> ModelRef:
    """A models.yaml entry's name (looked up in ``config``) or a model folder (read as ``task``,
    else as its config says, pooled by ``pooling``)."""
    path = Path(ref)
    if config and not (path / "config.json").is_file() and Path(config).is_file():
        try:
            registry = load_registry(config)
        except ConfigError as err:
            raise CompressError(f"{config}: {str(err).splitlines()[0]}") from None
        spec = registry.get(ref)
        if spec is not None:
            if spec.task not in TASKS:
                raise CompressError(
                    f"model {ref!r} is {spec.task}; compression handles {' and '.join(TASKS)}"
                )
            try:
                location = resolve_source(spec, registry.base_dir)
            except ConfigError as err:
                raise CompressError(str(err).replace("\n", " ")) from None
            return ModelRef(ref, location, spec.task, spec.pooling, spec.source.revision)
    if not (path / "config.json").is_file():
        where = f"no model named {ref!r} in {config} and " if config else ""
        raise CompressError(f"{where}{ref}: not a model folder (no config.json)")
    found = task or _task_of(path)
    if found not in TASKS:
        raise CompressError(f"--task {found}: compression handles {' and '.join(TASKS)}")
    return ModelRef(path.name, str(path.resolve()), found, pooling)


def _task_of(folder: Path) -> str:
    """A folder saved as a sequence classifier is a classifier; anything else an encoder."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CompressError(f"{folder / 'config.json'}: not readable JSON ({err})") from None
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "text-classification"
    return "feature-extraction"


def load(ref: ModelRef) -> tuple[Any, Any]:
    """Model (float32, eval mode, on CPU) and tokenizer, as from_pretrained gives them."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    auto = AutoModelForSequenceClassification if ref.is_classifier else AutoModel
    revision = {"revision": ref.revision} if ref.revision else {}
    with quiet_transformers():
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref.location, **revision)
            model = auto.from_pretrained(ref.location, **revision)
        except Exception as err:  # any failure to load is one line naming the model
            raise cannot_load(ref.location, err) from None
    return model.eval(), tokenizer


def layers_of(model: Any) -> Any:
    """The ``nn.ModuleList`` of transformer layers of a BERT-family model."""
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if layers is None:
        raise CompressError(
            f"{type(model).__name__}: not a BERT-family encoder (no base_model.encoder.layer); "
            "compression can cut BERT, RoBERTa, XLM-R, MiniLM and ELECTRA models"
        )
    return layers


def keep_layers(model: Any, keep: list[int]) -> Any:
    """A copy of ``model`` with only the layers ``keep`` (0-based, in order): a standard
    config (``num_hidden_layers``) that from_pretrained loads as it is."""
    import torch

    check_layers(keep, len(layers_of(model)))
    student = copy.deepcopy(model)
    kept = torch.nn.ModuleList([layers_of(student)[i] for i in sorted(keep)])
    for new, layer in enumerate(kept):
        attention = getattr(getattr(layer, "attention", None), "self", None)
        if attention is not None and hasattr(attention, "layer_idx"):
            attention.layer_idx = new
    student.base_model.encoder.layer = kept
    student.config.num_hidden_layers = len(kept)
    return student


def check_layers(keep: list[int], total: int) -> None:
    wrong = [i for i in keep if not 0 <= i < total]
    if wrong or not keep or len(set(keep)) != len(keep):
        raise CompressError(
            f"layers {','.join(map(str, keep))}: give distinct layer numbers from 0 to {total - 1}"
        )


def every_kth(total: int, k: int) -> list[int]:
    """Every ``k``-th layer, ending at the last (for k=2 of 6: 1, 3, 5): the top layer, which
    the output is read from, is always kept."""
    if k < 1:
        raise CompressError(f"--keep-every {k}: must be 1 or more")
    return list(range(total - 1, -1, -k))[::-1]


def parse_layers(text: str) -> list[int]:
    try:
        layers = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        layers = []
    if not layers:
        raise CompressError(f"--layers {text!r}: give layer numbers such as 0,2,4")
    return layers


def pooled(model: Any, batch: dict[str, Any], pooling: str) -> Any:
    """The sentence vector a worker serves (before normalising)."""
    return pool(model(**batch)[0], batch["attention_mask"], pooling)


def pool(tokens: Any, mask: Any, pooling: str) -> Any:
    """Mean of the token vectors over the attention mask (the worker's own ``mean_pool``), or
    the first token's."""
    from workers.engines.base import mean_pool

    return tokens[:, 0] if pooling == "cls" else mean_pool(tokens, mask)


def parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def yaml_snippet(name: str, ref: ModelRef, folder: Path) -> str:
    """The models.yaml entry that serves ``folder`` as ``ref`` is served."""
    import yaml

    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:63] or "student"
    entry: dict[str, Any] = {
        "name": slug,
        "task": ref.task,
        "source": {"path": str(folder)},
        "device": "cpu",
    }
    if not ref.is_classifier:
        entry["pooling"] = ref.pooling
    entry |= {"max_batch_size": 32, "max_batch_delay_ms": 0}
    text: str = yaml.safe_dump([entry], sort_keys=False)
    return "".join(f"  {line}\n" for line in text.splitlines())


def check_out(out: Path, *, resumable: str | None = None) -> None:
    """``out`` must be absent or empty, or hold only a checkpoint to go on from (``resumable``,
    and the temporary file a stop while writing it leaves)."""
    if out.exists() and not out.is_dir():
        raise CompressError(f"{out}: exists and is not a folder")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        allowed = {resumable, f"{resumable}.tmp"} if resumable else set()
        if not names <= allowed:
            raise CompressError(
                f"{out}: exists and is not empty; remove it or choose another --out"
            )


def publish(
    out: Path,
    model: Any,
    tokenizer: Any,
    ref: ModelRef,
    name: str,
    corpus: Corpus,
    evaluate_texts: int,
    report: dict[str, Any],
) -> None:
    """Save ``model`` into ``out`` with its models.yaml entry (served as ``ref`` is, under
    ``name``) and ``report``, to which the held-out quality against ``ref`` is added first
    (on ``evaluate_texts`` texts; none when 0)."""
    import time

    with staged(out) as folder:
        save_model(model, tokenizer, folder)
        (folder / SNIPPET).write_text(yaml_snippet(name, ref, out.resolve()))
        if evaluate_texts:
            from modelgate.compress.evaluate import quality_of

            clock = time.monotonic()
            saved = ModelRef(name, str(folder.resolve()), ref.task, ref.pooling)
            report["held_out"] = quality_of(ref, saved, corpus, evaluate_texts)
            report.setdefault("seconds", {})["evaluation"] = round(time.monotonic() - clock, 1)
        (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
