"""The models.yaml schema and its loader, shared by the gateway and the workers.

The file is read with ``yaml.safe_load`` and validated by strict, frozen pydantic models: an
unknown key, a bad value or a missing source is an error. Every problem is collected into one
:class:`ConfigError` whose lines name the path of the offending value
(``models[1].timeout_s: must be > 0``), so a user fixes a file in one pass.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from contract.tasks import SUPPORTED_TASKS

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
"""URL-safe model names: lower case letters, digits, dot, dash and underscore."""

COMPILE_TASKS = frozenset({"feature-extraction", "text-classification"})
"""Tasks whose compile warm-up (plain texts of many lengths) is the shape of their requests."""

DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda|cuda:\d+)$")
"""Devices a worker can be placed on."""


class ConfigError(Exception):
    """models.yaml could not be loaded; ``problems`` holds one ``path: message`` line each."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s)\n{lines}")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Strict):
    """Where a model's files come from: exactly one of hub, path or package."""

    hub: str | None = None
    revision: str | None = None
    path: str | None = None
    package: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        given = [k for k in ("hub", "path", "package") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of hub, path or package")
        if self.hub and not self.revision:
            raise ValueError("a hub model needs a pinned revision (a commit hash or tag)")
        if self.revision and not self.hub:
            raise ValueError("revision applies only to hub models")
        return self

    def describe(self) -> str:
        if self.hub:
            return f"hub:{self.hub}@{self.revision}"
        return f"path:{self.path}" if self.path else f"package:{self.package}"


class ModelSpec(_Strict):
    """One served model: what to load, where to run it and the limits of its API."""

    name: str
    task: str
    source: Source
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    pooling: Literal["mean", "cls"] = "mean"
    max_batch_size: Annotated[int, Field(gt=0, le=4096)] = 32
    max_batch_tokens: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    """The most tokens one forward pass computes, padding included (inputs x the longest);
    a batch over it runs in length-sorted passes under it. Unset: by device
    (``workers.policy.token_budget``); 0: none, the item count alone."""
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_inputs: Annotated[int, Field(gt=0, le=100_000)] = 64
    max_job_inputs: Annotated[int, Field(gt=0, le=1_000_000)] = 10_000
    max_chars: Annotated[int, Field(gt=0, le=10_000_000)] = 10_000
    max_queue: Annotated[int, Field(gt=0)] = 10_000
    bulk_share: Annotated[float, Field(gt=0, le=1)] = 0.25
    """The share of its own throughput that a running bulk job (async jobs, Batch API) keeps
    while interactive requests come in; with none coming, bulk work takes every batch."""
    truncation: bool = True
    cache_ttl_s: Annotated[int, Field(ge=0)] = 3600
    replicas: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = "auto"
    """Workers ``modelgate up`` starts; ``auto``: see :meth:`Registry.worker_counts`."""
    threads: Annotated[int, Field(gt=0, le=256)] | None = None
    scale_to_zero: bool = False
    """Whether an autoscaler (KEDA, ``modelgate k8s``) may stop every worker of this model while
    its queues are empty. The gateway then queues a request for the model with no live worker
    (the queue length wakes a worker) instead of answering 503, and the request waits for its
    answer within ``timeout_s``, which must cover a cold start."""
    compile: bool = False
    quantize: Literal["dynamic-int8"] | None = None
    fast_path: bool = True
    engine: Literal["torch", "onnx", "openvino"] = "torch"
    matryoshka_dimensions: list[Annotated[int, Field(gt=0)]] | None = None

    @field_validator("name")
    @classmethod
    def _url_safe(cls, v: str) -> str:
        if not NAME_PATTERN.match(v):
            raise ValueError("must be URL-safe: lower-case letters, digits, '.', '_' or '-'")
        return v

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in SUPPORTED_TASKS:
            raise ValueError(f"unsupported task {v!r}; one of {', '.join(sorted(SUPPORTED_TASKS))}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE_PATTERN.match(v):
            raise ValueError("must be cpu, cuda, cuda:N or auto")
        return v

    @model_validator(mode="after")
    def _compile_fits(self) -> ModelSpec:
        if self.compile and self.task not in COMPILE_TASKS:
            raise ValueError(f"compile: true applies only to {' and '.join(sorted(COMPILE_TASKS))}")
        return self

    @model_validator(mode="after")
    def _engine_fits(self) -> ModelSpec:
        # An exported graph is the float32 model's forward pass; the torch-only options change
        # the torch module, and fast_path: false is the transformers pipeline on torch itself.
        if self.engine == "torch":
            return self
        e = f"engine {self.engine!r}"
        problems = [
            *([f"{e} needs dtype float32, not {self.dtype}"] if self.dtype != "float32" else []),
            *([f"{e} and compile: true do not combine"] if self.compile else []),
            *([f"{e} and quantize do not combine"] if self.quantize else []),
            *([f"{e} needs fast_path: true"] if not self.fast_path else []),
            *(
                [f"{e} runs on device cpu, not {self.device!r}"]
                if self.engine == "openvino" and self.device != "cpu"
                else []
            ),
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _dimensions_fit(self) -> ModelSpec:
        if self.matryoshka_dimensions is not None and self.task != "feature-extraction":
            raise ValueError("matryoshka_dimensions applies only to feature-extraction")
        return self

    @model_validator(mode="after")
    def _quantize_fits(self) -> ModelSpec:
        # Dynamic int8 kernels exist only on CPU and quantize float32 weights; auto may pick a GPU.
        # torch.compile breaks its graph at every int8 Linear: minutes of tracing, no speed-up.
        if not self.quantize:
            return self
        q = f"quantize {self.quantize!r}"
        problems = [
            *([f"{q} needs device 'cpu', not {self.device!r}"] if self.device != "cpu" else []),
            *([f"{q} needs dtype float32, not {self.dtype}"] if self.dtype != "float32" else []),
            *([f"{q} and compile: true do not combine"] if self.compile else []),
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self


AUTO_REPLICAS_MAX = 4
"""``replicas: auto`` starts at most this many workers of one CPU model: one single-threaded
worker a core measured best for a small encoder on 2 cores (README, Benchmarks); a large model
on a large machine sets its count, as copies of its weights cost memory."""


class Registry(_Strict):
    """Every model in one models.yaml, by name, in file order."""

    models: list[ModelSpec]
    default_model: str | None = None
    base_dir: str = "."

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model name(s): {', '.join(dupes)}")
        # The API's schema names drop punctuation: tiny-cls and tiny_cls would share them.
        letters = [re.sub(r"[^a-z0-9]", "", n) for n in names]
        alike = sorted({n for n, k in zip(names, letters, strict=True) if letters.count(k) > 1})
        if alike:
            raise ValueError(f"model names that differ only in punctuation: {', '.join(alike)}")
        if self.default_model is not None:
            default = self.get(self.default_model)
            if default is None:
                raise ValueError(
                    f"default_model {self.default_model!r} is not a model in this file"
                )
            if default.task != "text-classification":
                raise ValueError(
                    f"default_model {self.default_model!r} must be a text-classification model "
                    f"(POST /predict answers with a label and a score), not {default.task}"
                )
        return self

    def worker_counts(self, cores: int) -> dict[str, int]:
        """Workers per model on a host of ``cores``: a number as given; ``auto``, one for a
        CUDA model, and for any other one single-threaded worker per core, the cores shared
        among those models (at least one, at most :data:`AUTO_REPLICAS_MAX`)."""
        cpu = self._cpu_models()
        share = max(1, min(AUTO_REPLICAS_MAX, cores // max(1, len(cpu))))
        counts = {}
        for m in self.models:
            if m.replicas != "auto":
                counts[m.name] = m.replicas
            else:
                counts[m.name] = share if m in cpu else 1
        return counts

    def worker_threads(self, cores: int) -> int:
        """Torch threads of each CPU worker whose entry sets none: the cores divided among the
        CPU workers :meth:`worker_counts` starts (at least one each)."""
        counts = self.worker_counts(cores)
        return max(1, cores // max(1, sum(counts[m.name] for m in self._cpu_models())))

    def _cpu_models(self) -> list[ModelSpec]:
        return [m for m in self.models if not m.device.startswith("cuda")]

    def get(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def __iter__(self) -> Any:
        return iter(self.models)


def resolve_source(spec: ModelSpec, base_dir: str | Path = ".") -> str:
    """The argument for ``from_pretrained``: a hub id, or an absolute folder on this machine."""
    src = spec.source
    if src.hub:
        return src.hub
    if src.path:
        path = Path(src.path)
        return str(path if path.is_absolute() else (Path(base_dir) / path).resolve())
    assert src.package is not None
    package, _, inner = src.package.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(spec.name, [f"source.package: package {package!r} is not installed"])
    return str(Path(next(iter(found.submodule_search_locations))) / inner)


def _format_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required"
        elif e["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            msg = msg.replace("Input should be", "must be")
        where = _format_loc(loc)
        problems.append(f"{where}: {msg}" if where else msg)
    return problems


def parse_registry(data: Any, source: str = "models.yaml", base_dir: str = ".") -> Registry:
    """Validate already-parsed YAML data; raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["top level: must be a mapping with a 'models' list"])
    try:
        return Registry.model_validate({**data, "base_dir": base_dir})
    except ValidationError as err:
        raise ConfigError(source, _problems(err)) from None


def load_registry(path: str | Path) -> Registry:
    """Read and validate a models.yaml file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(str(path), [f"cannot read file: {err.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [f"not valid YAML: {err}"]) from None
    return parse_registry(data, str(path), str(path.resolve().parent))
