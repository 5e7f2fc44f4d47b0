"""``modelgate distill``: train a small student to answer like its teacher.

The student is a copy of the teacher with some layers left out (the usual start: it inherits
the teacher's embeddings and the kept layers' weights), a model folder (a pruned model, say), or
a smaller config with fresh weights. Each step feeds one batch of training texts to both; the
student learns the teacher's pooled sentence vectors (cosine or MSE) or, for a classifier, its
temperature-softened class distribution (KL, times T squared as Hinton et al. scale it), mixed
with cross-entropy on the corpus's labels when it has them. A cut student also learns, layer by
layer, the token vectors of the teacher layer each of its layers was copied from (1 - cosine,
as DistilBERT's hidden-state term): far more signal a step than one vector a text.

Runs are seeded and reproducible: the batch of step ``n`` is a function of the seed and ``n``,
and a checkpoint (model, optimiser, schedule and RNG state, in ``OUT/checkpoint.pt``, written
atomically) lets a stopped run go on exactly where it was: run the same command again."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelgate.compress.data import CompressError, Corpus
from modelgate.compress.models import (
    ModelRef,
    check_out,
    every_kth,
    keep_layers,
    layers_of,
    load,
    parameters,
    pool,
    publish,
)

CHECKPOINT = "checkpoint.pt"

Say = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """How to train; every field is a flag of ``modelgate distill``."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    warmup: float = 0.06
    weight_decay: float = 0.01
    loss: str = "cosine"
    temperature: float = 2.0
    alpha: float = 0.5
    max_length: int = 128
    seed: int = 0
    checkpoint_every: int = 100
    hidden_weight: float = 1.0
    """Weight of the layer-to-layer term (a cut student only): each kept layer's token vectors
    against those of the teacher layer it was copied from."""
    freeze_embeddings: bool | None = None
    """None: frozen when the student starts from trained weights (a cut copy or a folder),
    trained when it starts fresh from a config."""

    def check(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append("--steps must be 1 or more")
        if self.batch_size < 1:
            problems.append("--batch-size must be 1 or more")
        if not self.lr > 0:
            problems.append("--lr must be above 0")
        if not 0 <= self.warmup < 1:
            problems.append("--warmup is a share of the steps, from 0 to below 1")
        if self.loss not in ("cosine", "mse"):
            problems.append("--loss is cosine or mse")
        if not self.temperature > 0:
            problems.append("--temperature must be above 0")
        if not 0 <= self.alpha <= 1:
            problems.append("--alpha is from 0 (labels only) to 1 (teacher only)")
        if self.max_length < 8:
            problems.append("--max-length must be 8 or more")
        if not 0 <= self.seed < 2**32:
            problems.append("--seed is from 0 to 2**32 - 1")
        if self.hidden_weight < 0:
            problems.append("--hidden-weight must be 0 or more")
        if self.checkpoint_every < 1:
            problems.append("--checkpoint-every must be 1 or more")
        if problems:
            raise CompressError("; ".join(problems))


@dataclass(frozen=True)
class Student:
    """What the student starts as: exactly one of the three."""

    layers: list[int] | None = None
    keep_every: int | None = None
    folder: ModelRef | None = None
    config: Path | None = None

    def describe(self) -> dict[str, Any]:
        if self.folder is not None:
            return {"from_folder": self.folder.location}
        if self.config is not None:
            return {"from_config": str(self.config)}
        return {"layers": self.layers} if self.layers else {"keep_every": self.keep_every}


@dataclass
class Progress:
    """What a caller sees after each step."""

    step: int
    steps: int
    loss: float
    started_at: int
    losses: list[float] = field(default_factory=list)


def build_student(teacher: Any, teacher_tokenizer: Any, spec: Student, seed: int) -> Any:
    import torch

    if spec.folder is not None:
        student, tokenizer = load(spec.folder)
        if tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise CompressError(
                f"{spec.folder.location}: its tokenizer is not the teacher's; a student must "
                "read the same tokens"
            )
        if spec.folder.is_classifier != _is_classifier(teacher):
            raise CompressError(
                f"{spec.folder.location}: not the same kind of model as the teacher"
            )
        _check_shape(student.config, teacher.config, spec.folder.location)
        return student
    if spec.config is not None:
        try:
            config = type(teacher.config).from_json_file(str(spec.config))
        except (OSError, ValueError) as err:
            raise CompressError(f"{spec.config}: not a model config: {err}") from None
        if config.vocab_size != teacher.config.vocab_size:
            raise CompressError(
                f"{spec.config}: vocab_size {config.vocab_size} is not the teacher's "
                f"{teacher.config.vocab_size}"
            )
        for key in ("id2label", "label2id", "num_labels", "problem_type"):
            if hasattr(teacher.config, key):
                setattr(config, key, getattr(teacher.config, key))
        _check_shape(config, teacher.config, str(spec.config))
        torch.manual_seed(seed)
        try:
            return type(teacher)(config).eval()
        except (ValueError, TypeError) as err:
            raise CompressError(f"{spec.config}: not a buildable config: {err}") from None
    return keep_layers(teacher, layer_map(teacher, spec) or [])


def _check_shape(config: Any, teacher: Any, where: str) -> None:
    """A student's outputs must be comparable with the teacher's: same width, same labels."""
    if config.hidden_size != teacher.hidden_size:
        raise CompressError(
            f"{where}: hidden_size {config.hidden_size} is not the teacher's "
            f"{teacher.hidden_size}; its vectors could not be compared with the teacher's"
        )
    if getattr(config, "num_labels", None) != getattr(teacher, "num_labels", None):
        raise CompressError(
            f"{where}: {config.num_labels} labels, the teacher {teacher.num_labels}"
        )


def layer_map(teacher: Any, spec: Student) -> list[int] | None:
    """For a cut student, the teacher layer each of its layers was copied from."""
    if spec.folder is not None or spec.config is not None:
        return None
    return (
        sorted(spec.layers)
        if spec.layers
        else every_kth(len(layers_of(teacher)), spec.keep_every or 2)
    )


def _is_classifier(model: Any) -> bool:
    return type(model).__name__.endswith("ForSequenceClassification")


def fingerprint(teacher: ModelRef, student: Student, corpus: Corpus, options: Options) -> str:
    """Identifies a run: a checkpoint is resumed only by the run that wrote it."""
    described = {
        "teacher": teacher.describe(),
        "student": student.describe(),
        "corpus": corpus.sha256,
        "options": asdict(options),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def batch_rows(step: int, size: int, count: int, seed: int, cache: dict[int, Any]) -> Any:
    """The training rows of step ``step``: epochs of seeded permutations, the last partial
    batch of each epoch left out, so the rows of a step depend on nothing but its number."""
    import torch

    per_epoch = max(1, count // size)
    epoch, k = divmod(step, per_epoch)
    if epoch not in cache:
        cache.clear()
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        cache[epoch] = torch.randperm(count, generator=generator)
    return cache[epoch][k * size : (k + 1) * size]


def distill(
    teacher_ref: ModelRef,
    spec: Student,
    corpus: Corpus,
    out: Path,
    options: Options,
    *,
    say: Say = print,
    on_step: Callable[[Progress], None] | None = None,
    evaluate_texts: int = 1000,
) -> dict[str, Any]:
    """Train the student and save it into ``out`` with report.json and a models.yaml entry;
    returns the report. Resumes from ``out/checkpoint.pt`` when the same run left one."""
    import torch

    options.check()
    check_out(out, resumable=CHECKPOINT)
    if len(corpus.train) < options.batch_size:
        raise CompressError(
            f"the corpus has {len(corpus.train)} training texts, fewer than one batch "
            f"({options.batch_size})"
        )
    began = time.monotonic()
    torch.manual_seed(options.seed)
    teacher, tokenizer = load(teacher_ref)
    student = build_student(teacher, tokenizer, spec, options.seed)
    copied = layer_map(teacher, spec)
    mapping = copied if options.hidden_weight > 0 else None
    key = fingerprint(teacher_ref, spec, corpus, options)
    labels = torch.tensor(corpus.train_labels) if corpus.train_labels is not None else None
    if labels is not None and teacher_ref.is_classifier:
        _check_labels(teacher, corpus)

    freeze = options.freeze_embeddings
    if freeze is None:
        freeze = spec.config is None
    if freeze:
        # The copied embedding table (most of a small encoder's weights) stays the teacher's:
        # about a third less work a step, and the student reads tokens as the teacher does.
        student.base_model.embeddings.requires_grad_(False)
    trained = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=options.lr, weight_decay=options.weight_decay)
    warm = max(1, round(options.warmup * options.steps))

    def rate(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (options.steps - step) / max(1, options.steps - warm))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, rate)
    start, losses = 0, list[float]()
    checkpoint = out / CHECKPOINT
    if checkpoint.is_file():
        start, losses = _resume(checkpoint, key, student, optimiser, schedule)
        say(f"resuming from step {start} of {options.steps} ({checkpoint})")
    out.mkdir(parents=True, exist_ok=True)

    say(
        f"distilling {teacher_ref.name} ({parameters(teacher) / 1e6:.1f}M parameters, "
        f"{len(layers_of(teacher))} layers) into a student of {parameters(student) / 1e6:.1f}M "
        f"parameters, {len(layers_of(student))} layers: {options.steps} steps of "
        f"{options.batch_size} texts from {len(corpus.train)}"
    )
    perms: dict[int, Any] = {}
    teacher.eval()
    student.train()
    for step in range(start, options.steps):
        rows = batch_rows(step, options.batch_size, len(corpus.train), options.seed, perms)
        batch = tokenizer(
            [corpus.train[i] for i in rows.tolist()],
            padding=True,
            truncation=True,
            max_length=options.max_length,
            return_tensors="pt",
        )
        loss = _loss(teacher, student, batch, teacher_ref, options, labels, rows, mapping)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        done = step + 1
        if done % options.checkpoint_every == 0 and done < options.steps:
            _save_checkpoint(checkpoint, key, done, student, optimiser, schedule, losses)
        if on_step is not None:
            on_step(Progress(done, options.steps, losses[-1], start, losses))
    student.eval()
    trained_s = time.monotonic() - began
    report = {
        "teacher": teacher_ref.describe(),
        "student": spec.describe()
        | {
            "layers": len(layers_of(student)),
            "parameters": parameters(student),
            "teacher_parameters": parameters(teacher),
            "embeddings_frozen": freeze,
            "teacher_layers": copied,
        },
        "corpus": corpus.describe(),
        "options": asdict(options),
        "loss": loss_summary(losses),
        "seconds": {"training": round(trained_s, 1)},
        "versions": _versions(),
    }
    name = f"{teacher_ref.name}-student"
    publish(out, student, tokenizer, teacher_ref, name, corpus, evaluate_texts, report)
    checkpoint.unlink(missing_ok=True)
    return report


def _check_labels(teacher: Any, corpus: Corpus) -> None:
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    if corpus.label_names is not None and list(corpus.label_names) != names:
        raise CompressError(
            f"the corpus's labels ({', '.join(corpus.label_names)}) are not the teacher's "
            f"({', '.join(names)})"
        )


def _loss(
    teacher: Any,
    student: Any,
    batch: dict[str, Any],
    ref: ModelRef,
    options: Options,
    labels: Any,
    rows: Any,
    mapping: list[int] | None,
) -> Any:
    """The output term (pooled vectors or logits) plus, for a cut student, the layer term."""
    import torch
    import torch.nn.functional as F

    hidden = {"output_hidden_states": True} if mapping else {}
    with torch.no_grad():
        want = teacher(**batch, **hidden)
    got = student(**batch, **hidden)
    mask = batch["attention_mask"]
    if ref.is_classifier:
        loss = _class_loss(got.logits, want.logits, options, labels, rows)
    else:
        target = pool(want[0], mask, ref.pooling)
        vectors = pool(got[0], mask, ref.pooling)
        if options.loss == "mse":
            loss = F.mse_loss(vectors, target)
        else:
            loss = (1 - F.cosine_similarity(vectors, target, dim=-1)).mean()
    if mapping:
        weights = mask.to(got.hidden_states[0].dtype)
        terms = [
            (
                (
                    1
                    - F.cosine_similarity(
                        got.hidden_states[j + 1], want.hidden_states[k + 1], dim=-1
                    )
                )
                * weights
            ).sum()
            / weights.sum()
            for j, k in enumerate(mapping)
        ]
        loss = loss + options.hidden_weight * sum(terms) / len(terms)
    return loss


def _class_loss(logits: Any, target: Any, options: Options, labels: Any, rows: Any) -> Any:
    """KL to the teacher's softened distribution (x T^2), mixed with cross-entropy on labels."""
    import torch.nn.functional as F

    t = options.temperature
    soft = F.kl_div(
        F.log_softmax(logits / t, dim=-1), F.softmax(target / t, dim=-1), reduction="batchmean"
    ) * (t * t)
    if labels is None or options.alpha == 1:
        return soft
    hard = F.cross_entropy(logits, labels[rows])
    return options.alpha * soft + (1 - options.alpha) * hard


def _save_checkpoint(
    path: Path,
    key: str,
    step: int,
    student: Any,
    optimiser: Any,
    schedule: Any,
    losses: list[float],
) -> None:
    """Written to a temporary file and renamed: a stop mid-write leaves the previous one."""
    import torch

    state = {
        "fingerprint": key,
        "step": step,
        "model": student.state_dict(),
        "optimiser": optimiser.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": torch.get_rng_state(),
        "losses": losses,
    }
    partial = path.with_name(path.name + ".tmp")
    torch.save(state, partial)
    os.replace(partial, path)


def _resume(
    path: Path, key: str, student: Any, optimiser: Any, schedule: Any
) -> tuple[int, list[float]]:
    import torch

    try:
        # weights_only: tensors and plain containers, never arbitrary objects.
        state = torch.load(path, weights_only=True)
    except Exception as err:
        raise CompressError(
            f"{path}: unreadable checkpoint ({err}); remove it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("fingerprint") != key:
        raise CompressError(
            f"{path}: a checkpoint of another run (other teacher, student, corpus or options); "
            "run that command again to resume it, or remove the file to start over"
        )
    try:
        student.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"])
        return int(state["step"]), list(state["losses"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CompressError(
            f"{path}: does not fit this student ({str(err).splitlines()[0]}); remove it to "
            "start over"
        ) from None


def loss_summary(losses: list[float]) -> dict[str, Any]:
    """The mean loss of the first and last tenth of the steps, and of each twentieth."""
    if not losses:
        return {}
    tenth = max(1, len(losses) // 10)
    parts = max(1, min(20, len(losses)))
    size = len(losses) / parts
    curve = [
        sum(chunk) / len(chunk)
        for chunk in (losses[round(i * size) : round((i + 1) * size)] for i in range(parts))
        if chunk
    ]
    return {
        "first": round(sum(losses[:tenth]) / tenth, 6),
        "last": round(sum(losses[-tenth:]) / tenth, 6),
        "curve": [round(v, 6) for v in curve],
    }


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def progress_printer(say: Say) -> Callable[[Progress], None]:
    """A tqdm bar with the loss on a terminal; otherwise a line per ~10% of the steps."""
    state: dict[str, Any] = {}

    def show(p: Progress) -> None:
        if sys.stderr.isatty():
            if "bar" not in state:
                from tqdm import tqdm

                state["bar"] = tqdm(
                    total=p.steps, initial=p.started_at, unit="step", desc="distill"
                )
            bar = state["bar"]
            bar.update(1)
            bar.set_postfix(loss=f"{p.loss:.4f}")
            if p.step == p.steps:
                bar.close()
            return
        state.setdefault("began", time.monotonic())
        every = max(1, p.steps // 10)
        if p.step % every == 0 or p.step == p.steps:
            window = p.losses[-every:]
            took = time.monotonic() - state["began"]
            say(
                f"step {p.step}/{p.steps}: loss {sum(window) / len(window):.5f} "
                f"(mean of the last {len(window)}), {took:.0f}s"
            )

    return show


__all__ = ["Options", "Student", "distill", "progress_printer"]
