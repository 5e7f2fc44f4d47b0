"""Exported runtimes: a model's forward pass on ONNX Runtime or OpenVINO instead of eager torch.

``engine: onnx`` (or ``openvino``) in models.yaml keeps everything around the forward pass as it
is — tokenizer, batching, pooling, post-processing, the transformers pipelines of the tasks that
use them — and swaps the loaded ``torch.nn.Module`` for :class:`ExportedModel`, which is called
the same way (``model(**encoded)``) and answers with the same output class, as torch tensors.

The ONNX graph is exported with ``torch.onnx.export`` (the dynamo exporter, with its graph
optimiser) with dynamic batch and sequence axes, once, and cached on disk under the export
folder (``MODELGATE_EXPORT_DIR``, default ``~/.cache/modelgate/exports``) in a folder keyed by
the weights' fingerprint, the task's model class, and the versions of torch and the exporter.
A folder is written under a temporary name and renamed into place when complete, with a
manifest of every file's size and SHA-256: an export that fails the check (a torn copy, an edited
file) is rebuilt, never served. The cache is kept apart from the model's own folder, whose files
are the weights' fingerprint. OpenVINO reads the same ONNX file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from contract.settings import DEFAULT_EXPORT_DIR

log = logging.getLogger("modelgate.worker")

EXPORTER_VERSION = 1
"""Bumped whenever what :func:`export_onnx` writes changes: older exports are then rebuilt."""

RUNTIMES = ("onnx", "openvino")
"""The ``engine`` values served by an exported graph (``torch`` runs the module itself)."""

MANIFEST = "manifest.json"
GRAPH = "model.onnx"
SAMPLE_TEXTS = ["modelgate export", "a second, longer sentence for the exporter to trace"]
"""Two inputs of different lengths: sizes of one would be specialised into the graph."""


class ExportError(RuntimeError):
    """The model could not be exported to, or loaded on, the configured engine."""


def export_root(configured: str | os.PathLike[str] | None = None) -> Path:
    """Where exports are cached: ``configured`` (``MODELGATE_EXPORT_DIR``, read by the entry
    points), else ``~/.cache/modelgate/exports``."""
    return Path(configured or DEFAULT_EXPORT_DIR).expanduser()


def export_key(fingerprint: str, model: torch.nn.Module) -> str:
    """What an export depends on: the weights, the model class (its outputs), the exporter."""
    import onnxscript

    parts = {
        "fingerprint": fingerprint,
        "class": type(model).__qualname__,
        "torch": torch.__version__,
        "onnxscript": onnxscript.__version__,
        "exporter": EXPORTER_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(folder: Path, inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    return {
        "inputs": inputs,
        "outputs": outputs,
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }


def verified(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest when every file it lists is there, whole and unchanged; else None."""
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        for name, meta in manifest["files"].items():
            path = folder / name
            if path.stat().st_size != meta["bytes"] or _sha256(path) != meta["sha256"]:
                return None
        if GRAPH not in manifest["files"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def _root_cause(err: BaseException) -> str:
    """The innermost error's type and first line: the exporter wraps the cause in advice."""
    while err.__cause__ is not None:
        err = err.__cause__
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:300]


class _Outputs(torch.nn.Module):
    """The model with plain tensor inputs and a tuple of the named outputs: what the exporter
    traces, so the graph's outputs are exactly those (named, in order)."""

    def __init__(self, model: torch.nn.Module, inputs: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs
        self.outputs = outputs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.inputs, tensors, strict=True)))
        return tuple(out[name] for name in self.outputs)


def sample_inputs(tokenizer: Any) -> dict[str, torch.Tensor]:
    encoded = tokenizer(SAMPLE_TEXTS, padding=True, return_tensors="pt")
    return {k: v for k, v in encoded.items() if k in tokenizer.model_input_names}


def tensor_outputs(
    model: torch.nn.Module, sample: dict[str, torch.Tensor]
) -> tuple[type, list[str]]:
    """The model's output class and the names of the tensors it returns for ``sample``."""
    with torch.inference_mode():
        out = model(**sample)
    return type(out), [k for k, v in out.items() if isinstance(v, torch.Tensor)]


def export_onnx(
    model: torch.nn.Module, sample: dict[str, torch.Tensor], outputs: list[str], folder: Path
) -> None:
    """Write ``model`` as ``folder/model.onnx`` (weights beside it) with dynamic batch and
    sequence axes, then its manifest."""
    inputs = list(sample)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    wrapped = _Outputs(model, inputs, outputs).eval()
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            tuple(sample.values()),
            str(folder / GRAPH),
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in inputs),),  # for *tensors
            dynamo=True,
            optimize=True,
            external_data=True,
        )
    (folder / MANIFEST).write_text(json.dumps(_manifest(folder, inputs, outputs), indent=1))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter prints its progress to stdout, logs warnings about packages a text model
    never needs (torchvision's operators) and its optimiser logs each pass: keep the worker's
    log to our own lines."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnx_ir", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    try:
        with contextlib.redirect_stdout(devnull):
            yield
    finally:
        devnull.close()
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def publish(staging: Path, folder: Path) -> None:
    """Move a finished export into place, unless another process (a worker of the same
    weights starting beside this one) put a verified one there meanwhile: that one is kept, as
    it may already be loading. A broken folder is replaced whole, never patched."""
    if verified(folder) is not None:
        return
    shutil.rmtree(folder, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:
        if verified(folder) is None:  # not a verified export that won the race meanwhile
            raise


def ensure_export(
    name: str,
    model: torch.nn.Module,
    tokenizer: Any,
    fingerprint: str,
    root: Path,
) -> tuple[Path, dict[str, Any]]:
    """The verified export folder for these weights, exported first when missing or broken."""
    folder = root / name / export_key(fingerprint, model)
    manifest = verified(folder)
    if manifest is not None:
        log.info("using the ONNX export in %s", folder)
        return folder, manifest
    if folder.exists():
        log.warning("the ONNX export in %s is incomplete or changed: exporting again", folder)
    sample = sample_inputs(tokenizer)
    _, outputs = tensor_outputs(model, sample)
    started = time.perf_counter()
    log.info("exporting %s to ONNX (once; cached in %s)", name, folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide it from workers of other users
    except OSError as err:
        raise ExportError(f"cannot write the export folder {folder.parent}: {err}") from err
    try:
        export_onnx(model, sample, outputs, staging)
        publish(staging, folder)
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"the ONNX export failed: {_root_cause(err)}") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = verified(folder)
    if manifest is None:
        raise ExportError(f"the ONNX export in {folder} does not verify after writing it")
    log.info("exported %s in %.1f s", name, time.perf_counter() - started)
    return folder, manifest


class ExportedModel:
    """An exported graph called like the torch model it came from: keyword tensors in, the
    model's output class (tensors on ``device``) out. A pipeline or an engine that calls
    ``model(**inputs)`` and reads ``[0]``, ``.logits`` or ``["logits"]`` sees no difference."""

    def __init__(
        self,
        runner: Any,
        inputs: list[str],
        outputs: list[str],
        output_class: type,
        config: Any,
        device: str,
        folder: Path,
    ) -> None:
        self._runner = runner
        self.folder = folder
        self.inputs = inputs
        self.outputs = outputs
        self.output_class = output_class
        self.config = config
        self.device = torch.device(device)
        self.dtype = torch.float32

    def forward(self, **inputs: Any) -> Any:
        feed: dict[str, Any] = {}
        ids = inputs["input_ids"]
        for name in self.inputs:
            value = inputs.get(name)
            if value is None:  # what the torch model assumes for a missing one
                fill = torch.ones_like if name == "attention_mask" else torch.zeros_like
                value = fill(ids)
            feed[name] = value.detach().cpu().numpy()
        values = self._runner(feed)
        tensors = {
            name: torch.from_numpy(value).to(self.device)
            for name, value in zip(self.outputs, values, strict=True)
        }
        return self.output_class(**tensors)

    __call__ = forward

    def eval(self) -> ExportedModel:
        return self

    def to(self, *_: Any, **__: Any) -> ExportedModel:
        return self

    def can_generate(self) -> bool:
        return False


def _onnxruntime(path: Path, device: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory patterns plan allocations per input shape; every batch here has new shapes.
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError(
                "engine onnx on a GPU needs onnxruntime's CUDA build (pip install onnxruntime-gpu)"
            )
        index = int(device.partition(":")[2] or 0)
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    session = ort.InferenceSession(str(path), options, providers=providers)
    names = [o.name for o in session.get_outputs()]
    return lambda feed: session.run(names, feed)


def _openvino(path: Path, device: str, threads: int) -> Any:
    if device != "cpu":
        raise ExportError("engine openvino runs on device cpu here")
    try:
        import openvino as ov
    except ImportError as err:
        raise ExportError(
            "engine openvino needs the openvino package (pip install openvino)"
        ) from err
    # No pinning: OpenVINO pins its threads to cores by default, and several single-threaded
    # workers on one machine (replicas: auto) would then all run on the same core. f32: the
    # CPU plugin may otherwise compute in bf16 where the CPU has it, which is not exact.
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "f32",
        "ENABLE_CPU_PINNING": False,
    }
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def run(feed: dict[str, Any]) -> list[Any]:
        result = request.infer(feed)
        return [result[out] for out in compiled.outputs]

    return run


def exported(
    engine: str,
    name: str,
    model: torch.nn.Module,
    tokenizer: Any,
    fingerprint: str,
    device: str,
    root: Path | None = None,
) -> ExportedModel:
    """``model`` as an :class:`ExportedModel` on ``engine`` (``onnx`` or ``openvino``), its
    export taken from the cache or made; intra-op threads as torch's (``--threads``)."""
    if engine not in RUNTIMES:
        raise ExportError(f"unknown engine {engine!r}; expected one of {', '.join(RUNTIMES)}")
    folder, manifest = ensure_export(name, model, tokenizer, fingerprint, root or export_root())
    output_class, _ = tensor_outputs(model, sample_inputs(tokenizer))
    start = _onnxruntime if engine == "onnx" else _openvino
    try:
        runner = start(folder / GRAPH, device, torch.get_num_threads())
    except ExportError:
        raise
    except Exception as err:
        raise ExportError(f"{engine} cannot load the export: {_root_cause(err)}") from err
    inputs, outputs = manifest["inputs"], manifest["outputs"]
    return ExportedModel(runner, inputs, outputs, output_class, model.config, device, folder)
