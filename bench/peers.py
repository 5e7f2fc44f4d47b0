"""The servers modelgate is compared with, each in a venv of its own under ``.cache/bench/``,
built on first use (CPU torch 2.13.0 first, then the peer with torch pinned, so no CUDA build
is ever pulled), started on loopback with the benchmark's model, and stopped by PID.

- **LitServe**: ``bench/peer_litserve.py``, a LitAPI written as its docs teach (batch 32, 5 ms
  window, one inference worker with the same torch threads as modelgate's worker).
- **LitServe on ONNX Runtime** (``litserve-onnx``): the same LitAPI running the ONNX export
  modelgate's ``engine: onnx`` made of the same weights, with the same session options.
- **Infinity**: its own CLI (``infinity_emb v2``), torch engine, batch 32, on the same folder
  (its ONNX engine, ``--engine optimum``, does not start beside torch 2.13: with optimum 2.x it
  cannot find a local folder's ONNX file, optimum 1.x imports a torch.onnx function 2.13 removed).

Both serve the same weights, from the same local folder, with the same pooling and
normalisation as modelgate's engine; a peer is driven by the same load generator with the same
distinct sentence per request, in its own request format.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".cache" / "bench"
TORCH = "torch==2.13.0"
"""The CPU wheel on this disk; any other torch requirement pulls a multi-GB CUDA build."""

SENTENCE = "The quick brown fox jumps over the lazy dog %d"
"""The benchmark's sentence, a format with one %d: a 10-digit number unique in the run (see
bench.throughput), so every text has the same token count and no two are equal."""


@dataclass(frozen=True)
class Launch:
    """What a peer's server needs to know."""

    model_dir: Path
    port: int
    threads: int
    max_batch: int
    delay_s: float
    model_name: str
    workers: int = 1
    """Model processes, where the peer has them (LitServe's ``workers_per_device``)."""
    onnx: Path | None = None
    """The model's ONNX export, for a peer that runs it (modelgate's, of the same weights)."""


@dataclass(frozen=True)
class Peer:
    name: str
    version: str
    requirements: tuple[str, ...]
    """pip requirements, installed with torch pinned to the CPU wheel."""
    path: str
    """The route one text is embedded at."""
    body: str
    """The request body, a format with one %d (the sentence's number)."""
    ready_path: str
    command: Callable[[Path, Launch], list[str]]
    """The server's command line, given the venv's python."""
    env: dict[str, str] = field(default_factory=dict)
    needs_onnx: bool = False
    """Runs the model's ONNX export (``Launch.onnx``) rather than its torch weights."""

    @property
    def venv(self) -> Path:
        return VENVS / f"{self.name}-{self.version}"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def installed(self) -> bool:
        stamp = self.venv / ".modelgate-bench-stamp"
        return stamp.exists() and stamp.read_text() == "\n".join(self.requirements)

    def install(self, say: Callable[[str], None]) -> None:
        """Build the venv unless an identical one is there; minutes the first time."""
        if self.installed():
            return
        say(f"building {self.name} {self.version}'s venv in {self.venv} (first use; minutes)")
        shutil.rmtree(self.venv, ignore_errors=True)
        self.venv.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", sys.executable)
        pin = self.venv / "torch-constraint.txt"
        steps = [
            [base, "-m", "venv", str(self.venv)],
            [str(self.python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            [str(self.python), "-m", "pip", "install", "-q", TORCH],
            [str(self.python), "-m", "pip", "install", "-q", "-c", str(pin), *self.requirements],
        ]
        for i, step in enumerate(steps):
            if i == 1:
                pin.write_text(TORCH + "\n")
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step)} failed:\n{done.stdout}\n{done.stderr}")
        (self.venv / ".modelgate-bench-stamp").write_text("\n".join(self.requirements))


def _litserve(python: Path, at: Launch) -> list[str]:
    script = Path(__file__).with_name("peer_litserve.py")
    options = (at.model_dir, at.port, at.threads, at.max_batch, at.delay_s, at.workers)
    return [str(python), str(script), *(str(o) for o in options)]


def _litserve_onnx(python: Path, at: Launch) -> list[str]:
    assert at.onnx is not None, "litserve-onnx runs the model's ONNX export"
    return [*_litserve(python, at), str(at.onnx)]


def _infinity(python: Path, at: Launch) -> list[str]:
    cli = python.parent / "infinity_emb"
    return [
        *(str(cli), "v2", "--model-id", str(at.model_dir)),
        *("--served-model-name", at.model_name, "--engine", "torch", "--device", "cpu"),
        *("--batch-size", str(at.max_batch), "--host", "127.0.0.1", "--port", str(at.port)),
        *("--no-bettertransformer", "--log-level", "warning"),
    ]


TRANSFORMERS = "transformers==5.24.0"
"""LitServe's model code: the same transformers release as modelgate's worker."""

PEERS = {
    "litserve": Peer(
        "litserve",
        "0.2.19",
        ("litserve==0.2.19", TRANSFORMERS),
        "/predict",
        '{"inputs":"' + SENTENCE + '"}',
        "/health",
        _litserve,
    ),
    "litserve-onnx": Peer(
        "litserve-onnx",
        "0.2.19",
        ("litserve==0.2.19", TRANSFORMERS, "onnxruntime==1.32.0"),
        "/predict",
        '{"inputs":"' + SENTENCE + '"}',
        "/health",
        _litserve_onnx,
        needs_onnx=True,
    ),
    "infinity": Peer(
        "infinity",
        "0.0.78",
        ("infinity-emb[server,torch]==0.0.78",),
        "/embeddings",
        '{"model":"minilm","input":["' + SENTENCE + '"]}',
        "/health",
        _infinity,
        {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
    ),
}


class PeerServer:
    """One peer's server, started in its own session and stopped with everything it forked."""

    def __init__(self, peer: Peer, launch: Launch, log: Path) -> None:
        self.peer, self.launch, self.log = peer, launch, log
        self.url = f"http://127.0.0.1:{launch.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **self.peer.env,
        }
        env.pop("VIRTUAL_ENV", None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.peer.command(self.peer.python, self.launch),
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer.name} exited:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.peer.ready_path, timeout=1).status_code == 200:
                    self.check()
                    return
            time.sleep(0.3)
        raise RuntimeError(f"{self.peer.name} not ready after {timeout_s} s:\n{self.tail()}")

    def check(self) -> None:
        """One request, answered 200."""
        post_once(self.url + self.peer.path, self.peer.body % 1, self.peer.name)

    def tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: it and what it forked
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # a forked worker that outlived it


def post_once(url: str, body: str, what: str) -> None:
    """One JSON POST that must answer 200 (a server's first request, before any timing)."""
    reply = httpx.post(
        url, content=body.encode(), headers={"Content-Type": "application/json"}, timeout=60
    )
    if reply.status_code != 200:
        raise RuntimeError(f"{what} answered {reply.status_code}: {reply.text[:500]}")


def chosen(names: str) -> Sequence[Peer]:
    """``--peers`` (comma-separated; "none" for none) as peers."""
    picked = [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]
    unknown = [n for n in picked if n not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer(s) {', '.join(unknown)}; known: {', '.join(PEERS)}")
    return [PEERS[n] for n in picked]
