"""Throughput and latency of modelgate's ``/predict`` against the in-process pipeline limit.

``python -m bench.throughput [--duration S] [--concurrency 1,32] [--model minilm] [--json F]``

One run starts its own stack on loopback (a private redis-server, one worker subprocess, one
gateway subprocess, a temporary models.yaml holding only the model's entry with the response cache
off), and while the stack stands idle measures the engine the worker builds, called in this
process at batch 1 and at the model's ``max_batch_size``. Then it drives ``POST
/models/<model>/predict`` at each concurrency for a fixed time with a distinct sentence per
request (no cache hit is possible), using Debian's ``wrk`` with ``bench/wrk_predict.lua`` (or an
asyncio httpx client when ``wrk`` is missing), and prints one table: each HTTP figure as a ratio
of the in-process figure of the same run, the targets, and the CPU each process used.
Everything it started is stopped on exit, Ctrl-C or SIGTERM included. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import yaml
from redis import Redis

from bench.peers import PEERS, SENTENCE, Launch, PeerServer, chosen, post_once
from contract.config import AUTO_REPLICAS_MAX, ModelSpec, load_registry, resolve_source
from contract.jobs import Keys
from modelgate.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
LUA_SCRIPT = Path(__file__).with_name("wrk_predict.lua")
PREFIX = "mgbench"
"""Key prefix of the bench's private Redis."""


BASE = 1_000_000_000
"""Numbers start here so they all have 10 digits, hence the same token count everywhere."""

PHASE_STEP = 100_000_000
"""Each phase (warm-up or measurement) numbers its texts from its own block."""

THREAD_STEP = 10_000_000
"""Within a phase, each load-generator thread or user numbers from its own block."""

TICK = os.sysconf("SC_CLK_TCK")

ACCESS_LINE = re.compile(r"POST /models/\S+/predict 200 ([0-9.]+) ms")
"""The gateway's access log line for a successful predict, if it writes one."""

NOISY_CORES = 0.2
"""Above this many cores of 'other' or 'steal' CPU in any phase, the report warns of noise."""


@dataclass
class Figure:
    """One row of the table."""

    label: str
    unit: str
    rate: float
    p50_ms: float
    p99_ms: float
    count: int
    errors: int | None = None
    codes: dict[str, int] = field(default_factory=dict)
    cores: dict[str, float] = field(default_factory=dict)
    mean_batch: float | None = None
    ratio: float | None = None
    target: str = "-"
    verdict: str = "-"


REPEAT_STEP = 1_000_000
"""Each repeat of a phase numbers its texts from its own block within the phase's."""


def median_of(figures: list[Figure], by: str = "p99_ms") -> Figure:
    """One row from repeats: the median of each figure, the errors of all, and the CPU (and
    mean batch) of the repeat whose ``by`` is the median."""
    middle = sorted(figures, key=lambda f: float(getattr(f, by)))[len(figures) // 2]
    return replace(
        middle,
        rate=statistics.median(f.rate for f in figures),
        p50_ms=statistics.median(f.p50_ms for f in figures),
        p99_ms=statistics.median(f.p99_ms for f in figures),
        count=sum(f.count for f in figures),
        errors=sum(f.errors or 0 for f in figures),
        codes=dict(sum((Counter(f.codes) for f in figures), Counter())),
    )


def repeated(
    measure: Callable[[int], Figure],
    base: int,
    repeats: int,
    by: str,
    between: Callable[[], None] | None = None,
) -> Figure:
    """``measure(base)`` ``repeats`` times, each from its own block of texts; the median row."""
    runs = []
    for r in range(repeats):
        runs.append(measure(base + r * REPEAT_STEP))
        if between is not None:
            between()
    return median_of(runs, by)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def phase_base(phase: int) -> int:
    return BASE + phase * PHASE_STEP


def texts(base: int, start: int, count: int) -> list[str]:
    return [SENTENCE % (base + start + i) for i in range(count)]


# --- the stack under test -------------------------------------------------------------------


def write_config(source: Path, model: str, dest: Path, engine: str | None = None) -> Path:
    """A models.yaml with only ``model``'s entry, one replica, the response cache on (the
    uncached phases send ``Cache-Control: no-store``, which skips it whole), on ``engine``
    when given."""
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    entry = next((m for m in data["models"] if m.get("name") == model), None)
    if entry is None:
        raise SystemExit(f"{source}: no model named {model!r}")
    entry = {**entry, "replicas": 1}
    if engine is not None:
        entry["engine"] = engine
    entry["cache_ttl_s"] = max(3600, int(entry.get("cache_ttl_s") or 0))
    path = entry.get("source", {}).get("path")
    if path and not Path(path).is_absolute():
        entry["source"] = {**entry["source"], "path": str((source.parent / path).resolve())}
    dest.write_text(yaml.safe_dump({"models": [entry]}), encoding="utf-8")
    return dest


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads) and of its live
    descendants (a server that forks its workers, as LitServe does)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(entry.name)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        fields = _stat(current)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / TICK
        todo += children.get(current, [])
    return total


def machine_cpu_s() -> tuple[float, float]:
    """Busy and stolen CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


class CpuMeter:
    """Cores used during a phase by each named process, by this one, and by everything else."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._sample()

    def _sample(self) -> dict[str, float]:
        sample = {role: proc_cpu_s(pid) for role, pid in self.pids.items()}
        sample["bench"] = time.process_time()
        sample["machine"], sample["steal"] = machine_cpu_s()
        sample["wall"] = time.perf_counter()
        return sample

    def cores(self, **extra_cpu_s: float) -> dict[str, float]:
        """Cores per role; ``other`` is the machine's busy time no process of this run explains."""
        end = self._sample()
        used: dict[str, float] = {}
        for k in end:  # "worker.1" counts as "worker"
            role = k.split(".")[0]
            used[role] = used.get(role, 0.0) + end[k] - self.start[k]
        wall, machine = used.pop("wall"), used.pop("machine")
        used.update(extra_cpu_s)
        ours = sum(v for k, v in used.items() if k != "steal")
        used["other"] = max(0.0, machine - ours)
        return {k: v / wall for k, v in used.items()}


def worker_role(k: int) -> str:
    """The k-th worker's role: its CPU counts in the ``worker`` column (see ``CpuMeter``)."""
    return "worker" if k == 0 else f"worker.{k}"


class Stack:
    """redis-server, the model's worker(s) and the gateway, each in its own session, stopped by
    PID."""

    def __init__(
        self,
        workdir: Path,
        config: Path,
        model: str,
        threads: int,
        gateway_args: Sequence[str] = (),
        workers: int = 1,
    ) -> None:
        self.workdir, self.config, self.model, self.threads = workdir, config, model, threads
        self.gateway_args = list(gateway_args)
        self.workers = workers
        self.redis = RedisServer()
        self.url = f"http://127.0.0.1:{free_port()}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        self.redis.start()
        env = {
            **os.environ,
            "MODELGATE_REDIS_URL": self.redis.url,
            "MODELGATE_CONFIG": str(self.config),
            "MODELGATE_PREFIX": PREFIX,
            "MODELGATE_EXPORT_DIR": str(exports_of(self.workdir)),
        }
        env.pop("MODELGATE_SUPERVISED", None)
        py = sys.executable
        commands = {
            worker_role(k): [
                *(py, "-m", "workers", "--model", self.model, "--name", f"bench-w{k}"),
                *("--threads", str(self.threads)),
            ]
            for k in range(self.workers)
        }
        commands["gateway"] = [
            *(py, "-m", "modelgate", "gateway", "--port", self.url.rsplit(":", 1)[1]),
            *self.gateway_args,
        ]
        for role, cmd in commands.items():
            log = (self.workdir / f"{role}.log").open("ab")
            self.procs[role] = subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            log.close()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{role} exited with {proc.returncode}:\n{self.log(role)}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(self.url + "/readyz", timeout=1).status_code == 200
                if ready and self.present() >= self.workers:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"stack not ready after {timeout_s} s:\n{self.log('worker')}")

    def present(self) -> int:
        """Workers of the model heart-beating now."""
        client = Redis.from_url(self.redis.url)
        try:
            secs, micros = client.time()
            now = secs + micros / 1e6
            return int(client.zcount(Keys(PREFIX).presence(self.model), now, "+inf"))
        finally:
            client.close()

    def log(self, role: str, tail: int = 3000) -> str:
        path = self.workdir / f"{role}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def log_size(self, role: str) -> int:
        path = self.workdir / f"{role}.log"
        return path.stat().st_size if path.exists() else 0

    def access_log_p50(self, offset: int) -> float | None:
        """p50 of the predict times the gateway logged after ``offset``, if it logs them."""
        with (self.workdir / "gateway.log").open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        times = [float(t) for t in ACCESS_LINE.findall(text)]
        return statistics.median(times) if times else None

    def pids(self) -> dict[str, int]:
        pids = {role: p.pid for role, p in self.procs.items()}
        if self.redis.proc is not None:
            pids["redis"] = self.redis.proc.pid
        return pids

    def stop(self) -> None:
        for role in ("gateway", *(worker_role(k) for k in range(self.workers))):
            proc = self.procs.get(role)
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    print(f"{role} ignored SIGTERM for 20 s; killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait()
        self.redis.stop()


# --- in-process limit -------------------------------------------------------------------------


def exports_of(workdir: Path) -> Path:
    """The run's ONNX exports: the stack's workers and the in-process engine share them."""
    return workdir / "exports"


def load_engine(config: Path, model: str, threads: int, exports: Path | None = None) -> Any:
    """The worker's engine: ``build_engine`` if workers.pipelines has it, else PipelineEngine."""
    import torch
    import transformers

    from workers import pipelines

    torch.set_num_threads(threads)
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    registry = load_registry(config)
    spec = registry.get(model)
    assert spec is not None
    build = getattr(pipelines, "build_engine", None)
    if build is not None:
        return build(spec, registry.base_dir, exports)
    return pipelines.PipelineEngine(spec, registry.base_dir)


def measure_engine(
    engine: Any,
    batch: int,
    duration_s: float,
    base: int,
    pids: dict[str, int] | None = None,
    label: str = "in-process",
) -> Figure:
    """Call ``engine`` back to back with ``batch`` fresh texts per call for ``duration_s``."""
    meter = CpuMeter(pids or {})
    for i in range(2):
        engine(texts(base, i * batch, batch), {})
    calls: list[float] = []
    sent = 2 * batch
    started = time.perf_counter()
    while time.perf_counter() - started < duration_s or len(calls) < 5:
        inputs = texts(base, sent, batch)
        sent += batch
        t0 = time.perf_counter()
        engine(inputs, {})
        calls.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return Figure(
        f"{label} b{batch}",
        "texts/s",
        batch * len(calls) / wall,
        1000 * percentile(calls, 50),
        1000 * percentile(calls, 99),
        batch * len(calls),
        cores=meter.cores(),
    )


# --- load generators --------------------------------------------------------------------------


BODY = '{"inputs":"' + SENTENCE + '"}'
"""A predict request's body, a format with one %d (the sentence's number); peers have their own."""


NO_STORE = "no-store"
"""What the uncached phases send as Cache-Control: no lookup, no entry written."""


@dataclass(frozen=True)
class Load:
    """What a load generator sends: where, which body (a format with one %d, or a fixed body),
    which Cache-Control (none: ""), and how long it waits for an answer."""

    url: str
    timeout_s: float
    body: str = BODY
    cache_control: str = ""

    def text(self, n: int) -> str:
        return self.body % n if "%d" in self.body else self.body


def run_wrk(load: Load, concurrency: int, duration_s: float, base: int) -> dict[str, Any]:
    """One wrk run (one thread); its summary from the Lua ``done`` line, plus its CPU seconds."""
    cmd = [
        "wrk",
        "-t",
        "1",
        "-c",
        str(concurrency),
        "-d",
        f"{duration_s:g}s",
        "--timeout",
        f"{load.timeout_s:g}s",
        "-s",
        str(LUA_SCRIPT),
        load.url,
        "--",
        str(base),
        load.body,
        load.cache_control,
    ]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # wait4 gives this child's own rusage: the load generator's CPU, nothing else.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        text = out.read().decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("MGBENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")
    summary: dict[str, Any] = json.loads(line.removeprefix("MGBENCH "))
    summary["cpu_s"] = usage.ru_utime + usage.ru_stime
    return summary


async def _httpx_users(
    load: Load, concurrency: int, duration_s: float, base: int
) -> dict[str, Any]:
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    socket_errors = 0
    end = time.monotonic() + duration_s

    async def user(client: httpx.AsyncClient, tid: int) -> None:
        nonlocal socket_errors
        n = 0
        while time.monotonic() < end:
            n += 1
            t0 = time.perf_counter()
            try:
                reply = await client.post(
                    load.url,
                    content=load.text(base + tid * THREAD_STEP + n).encode(),
                    headers=headers,
                )
            except httpx.HTTPError:
                socket_errors += 1
                continue
            latencies.append(time.perf_counter() - t0)
            if reply.status_code != 200:
                codes[str(reply.status_code)] += 1

    headers = {"Content-Type": "application/json"}
    if load.cache_control:
        headers["Cache-Control"] = load.cache_control
    limits = httpx.Limits(max_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=load.timeout_s) as client:
        await asyncio.gather(*(user(client, t) for t in range(concurrency)))
    duration = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "duration_us": 1e6 * duration,
        "p50_us": 1e6 * percentile(latencies, 50) if latencies else 0.0,
        "p99_us": 1e6 * percentile(latencies, 99) if latencies else 0.0,
        "connect": 0,
        "read": socket_errors,
        "write": 0,
        "timeout": 0,
        "codes": dict(codes),
    }


def run_httpx(load: Load, concurrency: int, duration_s: float, base: int) -> dict[str, Any]:
    """The fallback load generator; its CPU is this whole process's CPU during the run."""
    cpu0 = time.process_time()
    summary = asyncio.run(_httpx_users(load, concurrency, duration_s, base))
    summary["cpu_s"] = time.process_time() - cpu0
    return summary


# --- HTTP phases --------------------------------------------------------------------------------


@dataclass
class Driver:
    """One HTTP endpoint driven by the load generator, every given process's CPU accounted."""

    label: str
    load: Load
    loadgen: str
    pids: dict[str, int]

    @property
    def url(self) -> str:
        return self.load.url

    def drive(self, concurrency: int, duration_s: float, base: int) -> dict[str, Any]:
        run = run_wrk if self.loadgen == "wrk" else run_httpx
        return run(self.load, concurrency, duration_s, base)

    def phases(
        self,
        concurrency: int,
        args: argparse.Namespace,
        phase: int,
        between: Callable[[], None] | None = None,
    ) -> Figure:
        """``--warmup`` s of load (texts of ``phase``), then ``--repeats`` measured phases
        (texts of ``phase + 1``): their median row, by p50 at c=1, by rate above."""
        self.drive(concurrency, args.warmup, phase_base(phase))
        if between is not None:
            between()
        return repeated(
            partial(self.measure, concurrency, args.duration),
            phase_base(phase + 1),
            args.repeats,
            "p50_ms" if concurrency == 1 else "rate",
            between,
        )

    def measure(self, concurrency: int, duration_s: float, base: int) -> Figure:
        meter = CpuMeter(self.pids)
        s = self.drive(concurrency, duration_s, base)
        if self.loadgen == "wrk":
            cores = meter.cores(loadgen=s["cpu_s"])
        else:  # the httpx client is this process: its CPU is the "bench" share
            cores = meter.cores()
            cores["loadgen"] = cores.pop("bench")
        non_200 = sum(s["codes"].values())
        errors = non_200 + s["connect"] + s["read"] + s["write"] + s["timeout"]
        return Figure(
            f"{self.label} c{concurrency}",
            "req/s",
            (s["requests"] - non_200) / (s["duration_us"] / 1e6),
            s["p50_us"] / 1000,
            s["p99_us"] / 1000,
            s["requests"],
            errors,
            s["codes"],
            cores,
        )


class HttpBench(Driver):
    """Drives the stack's predict endpoint; adds the worker's mean batch from its counters."""

    def __init__(
        self, stack: Stack, model: str, loadgen: str, timeout_s: float, label: str = "modelgate"
    ) -> None:
        url = f"{stack.url}/models/{model}/predict"
        super().__init__(label, Load(url, timeout_s, BODY, NO_STORE), loadgen, stack.pids())
        self.stack, self.model = stack, model
        self.redis = Redis.from_url(stack.redis.url, decode_responses=True)

    def measure(self, concurrency: int, duration_s: float, base: int) -> Figure:
        stats0 = self._stats()
        fig = super().measure(concurrency, duration_s, base)
        stats1 = self._stats()
        batches = stats1.get("batches", 0) - stats0.get("batches", 0)
        items = stats1.get("items", 0) - stats0.get("items", 0)
        fig.mean_batch = items / batches if batches else None
        return fig

    def settle(self, timeout_s: float = 15.0) -> None:
        """Wait until no job is queued or running: requests a load generator abandoned when its
        time was up would otherwise still occupy the worker during the next phase."""
        queue = Keys(PREFIX).queue(self.model)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.redis.pipeline(transaction=False) as pipe:
                pipe.llen(f"rq:queue:{queue}")
                pipe.llen(f"rq:queue:{queue}:intermediate")
                pipe.zcard(f"rq:wip:{queue}")
                if not any(pipe.execute()):
                    return
            time.sleep(0.05)

    def _stats(self) -> dict[str, int]:
        raw = self.redis.hgetall(Keys(PREFIX).stats(self.model))
        return {str(k): int(v) for k, v in raw.items() if v.isdigit()}

    def job_ids(self) -> set[str]:
        keys = self.redis.scan_iter(match="rq:job:*", count=1000)
        return {k.removeprefix("rq:job:") for k in keys if k.count(":") == 2}

    def breakdown(self, known: set[str]) -> dict[str, float]:
        """Median milliseconds of each leg of the jobs created since ``known`` was taken."""
        legs: dict[str, list[float]] = {"queued": [], "run": [], "finish": [], "total": []}
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in self.job_ids() - known:
                pipe.hmget(f"rq:job:{job_id}", "enqueued_at", "started_at", "ended_at")
                pipe.xrange(f"rq:results:{job_id}", count=1)
            replies = pipe.execute()
        for raw, result in zip(replies[::2], replies[1::2], strict=True):
            if None in raw or not result:
                continue
            enq, start, end = (datetime.fromisoformat(v).timestamp() for v in raw)
            written = int(result[0][0].split("-")[0]) / 1000  # a stream id is <ms>-<seq>
            for leg, seconds in (
                ("queued", start - enq),
                ("run", end - start),
                ("finish", written - end),
                ("total", written - enq),
            ):
                legs[leg].append(1000 * seconds)
        out = {leg: statistics.median(v) for leg, v in legs.items() if v}
        out["jobs"] = float(len(legs["total"]))
        return out


# --- the report --------------------------------------------------------------------------------


def ratio_to(fig: Figure, b1: Figure, limit: Figure, concurrency: int) -> float:
    """c=1: p50 over the in-process b1 p50; above: rate over the in-process limit's."""
    return fig.p50_ms / b1.p50_ms if concurrency == 1 else fig.rate / limit.rate


def verdict(fig: Figure, target: str, met: bool) -> None:
    """A row's target and whether it holds, errors included."""
    fig.target = target + ", 0 err"
    fig.verdict = "PASS" if met and fig.errors == 0 else "FAIL"


def judge(fig: Figure, b1: Figure, limit: Figure, concurrency: int, max_batch: int) -> None:
    """Fill ratio, target and verdict: c=1 by latency, c>=max_batch by throughput."""
    fig.ratio = ratio_to(fig, b1, limit, concurrency)
    if concurrency == 1:
        verdict(fig, "p50 <= 1.2x b1", fig.ratio <= 1.2)
    elif concurrency >= max_batch:
        verdict(fig, f"rate >= 0.9x b{max_batch}", fig.ratio >= 0.9)


def machine() -> dict[str, Any]:
    import torch

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def grid(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, a rule under the header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table(figs: list[Figure]) -> str:
    rows: list[tuple[str, ...]] = [
        ("row", "rate", "unit", "p50 ms", "p99 ms", "errors", "ratio", "target", "result")
    ]
    for f in figs:
        ratio = "(ref)" if f.ratio is None else f"{f.ratio:.2f}x"
        errors = "-" if f.errors is None else str(f.errors)
        rows.append(
            (
                f.label,
                f"{f.rate:.1f}",
                f.unit,
                f"{f.p50_ms:.1f}",
                f"{f.p99_ms:.1f}",
                errors,
                ratio,
                f.target,
                f.verdict,
            )
        )
    return grid(rows)


CPU_ROLES = ("worker", "gateway", "redis", "peer", "loadgen", "bench", "other", "steal")
"""Columns of the CPU table; ``other`` is busy time of processes this run did not start."""


def cpu_ms_per_item(f: Figure, role: str) -> str:
    """CPU milliseconds ``role`` spent per successful request of an HTTP phase."""
    if f.unit != "req/s" or f.rate <= 0 or role not in f.cores:
        return "-"
    return f"{1000 * f.cores[role] / f.rate:.1f}"


def cpu_table(figs: list[Figure]) -> str:
    head = ("phase", *CPU_ROLES, "gw ms/req", "wk ms/req", "peer ms/req", "worker batch", "non-200")
    rows: list[tuple[str, ...]] = [head]
    for f in figs:
        shares = tuple(f"{f.cores[r]:.2f}" if r in f.cores else "-" for r in CPU_ROLES)
        per_item = tuple(cpu_ms_per_item(f, r) for r in ("gateway", "worker", "peer"))
        batch = f"{f.mean_batch:.1f}" if f.mean_batch else "-"
        rows.append((f.label, *shares, *per_item, batch, json.dumps(f.codes) if f.codes else "-"))
    title = (
        "CPU per phase in cores (1.00 = one core busy all phase; 'other' = processes outside "
        "this run; 'peer' = a peer server and every process it forked), and CPU ms per "
        "successful request:"
    )
    return title + "\n" + grid(rows)


def breakdown_lines(figs: list[Figure], breakdown: dict[str, float] | None) -> list[str]:
    if not breakdown or not breakdown.get("jobs"):
        return []
    b1 = figs[0]  # the first engine's, whose c=1 phase the breakdown is of
    c1 = next(f for f in figs if f.label.startswith("modelgate") and f.label.endswith(" c1"))
    rest = c1.p50_ms - breakdown["total"]
    lines = [
        "",
        f"where a c=1 request's time goes (medians over {breakdown['jobs']:.0f} jobs, from RQ's "
        "job timestamps and result stream ids):",
        f"  enqueued -> worker started   {breakdown['queued']:7.1f} ms",
        f"  started -> ended (model)     {breakdown['run']:7.1f} ms  "
        f"(in-process b1 p50 {b1.p50_ms:.1f} ms)",
        f"  ended -> result written      {breakdown['finish']:7.1f} ms",
        f"  enqueued -> result written   {breakdown['total']:7.1f} ms",
        f"  rest of the HTTP p50 {c1.p50_ms:.1f} ms (HTTP, validation, enqueue, wake-up, "
        f"response) ~ {rest:.1f} ms",
    ]
    if breakdown.get("gateway_p50"):
        client = c1.p50_ms - breakdown["gateway_p50"]
        lines.append(
            f"  the gateway's access log: p50 {breakdown['gateway_p50']:.1f} ms inside the app; "
            f"the other ~{max(0.0, client):.1f} ms are uvicorn, loopback and wrk"
        )
    return lines


def report(figs: list[Figure], info: dict[str, Any], breakdown: dict[str, float] | None) -> str:
    out = [
        f"modelgate benchmark: model {info['model']}, {info['loadgen']} load generator, "
        f"{info['duration_s']:g} s per HTTP phase, {info['inproc_s']:g} s per in-process phase",
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"python {info['python']}; load average before {info['loadavg_before']}, "
        f"after {info['loadavg_after']}",
        f"torch threads: in-process {info['inproc_threads']}, {info.get('workers', 1)} "
        f"worker(s) with --threads {info['worker_threads']}; in-process engine "
        f"{info['engine']}, measured with the stack started and idle; "
        f"{info.get('repeats', 1)} repeat(s) a row, medians",
        "",
        table(figs),
        "",
        cpu_table(figs),
    ]
    out += peer_lines(figs)
    out += breakdown_lines(figs, breakdown)
    out += ["", *noise_lines(figs, info), f"command: {info['command']}"]
    return "\n".join(out)


PEER_GOAL = 1.3
"""modelgate's c>=max_batch throughput over the best peer's, in the same run."""


def best_ours(figs: list[Figure]) -> dict[str, Figure]:
    """Each concurrency's best modelgate row, whatever its engine: lowest p50 at c1, highest
    rate above."""
    ours: dict[str, Figure] = {}
    for f in figs:
        if not (f.label.startswith("modelgate") and f.unit == "req/s"):
            continue
        level = f.label.split(" ")[1]
        held = ours.get(level)
        if held is None or (f.p50_ms < held.p50_ms if level == "c1" else f.rate > held.rate):
            ours[level] = f
    return ours


def peer_verdicts(figs: list[Figure]) -> list[tuple[str, float, bool]]:
    """Per concurrency that peers ran at: (concurrency label, modelgate / best peer, met).
    Throughput at c>1, latency (best peer p50 / modelgate p50) at c=1; only c>1 is judged."""
    ours = best_ours(figs)
    out = []
    for level, mine in ours.items():
        theirs = [f for f in figs if f.label in {f"{name} {level}" for name in PEERS}]
        if not theirs:
            continue
        if level == "c1":
            best = min(theirs, key=lambda f: f.p50_ms)
            out.append((level, best.p50_ms / mine.p50_ms, True))
        else:
            best = max(theirs, key=lambda f: f.rate)
            ratio = mine.rate / best.rate if best.rate else float("inf")
            out.append((level, ratio, ratio >= PEER_GOAL and mine.errors == 0))
    return out


def peer_lines(figs: list[Figure]) -> list[str]:
    lines = []
    ours = best_ours(figs)
    for level, ratio, met in peer_verdicts(figs):
        row = ours[level].label
        if level == "c1":
            lines.append(f"{row} vs the best peer at c1: p50 {ratio:.2f}x faster (info)")
        else:
            verdict = "PASS" if met else "FAIL"
            lines.append(
                f"{row} vs the best peer at {level}: {ratio:.2f}x its throughput "
                f"(target >= {PEER_GOAL}x) {verdict}"
            )
    return ["", *lines] if lines else []


def noise_lines(figs: list[Figure], info: dict[str, Any]) -> list[str]:
    b1 = figs[0]
    lines = [
        f"noise check: in-process b1 p50 {b1.p50_ms:.1f} ms before the HTTP phases, "
        f"{info['b1_p50_after_ms']:.1f} ms after (stack idle both times)"
    ]
    worst = max(figs, key=lambda f: f.cores.get("other", 0.0) + f.cores.get("steal", 0.0))
    busy = worst.cores.get("other", 0.0) + worst.cores.get("steal", 0.0)
    if busy > NOISY_CORES:
        lines.append(
            f"WARNING: processes outside this run (or the hypervisor) took {busy:.2f} cores "
            f"during '{worst.label}': the figures and ratios are not trustworthy; re-run on a "
            "quiet machine"
        )
    return lines


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n")[0]
    )
    p.add_argument("--duration", type=float, default=15.0, help="seconds per HTTP phase (15)")
    p.add_argument(
        "--inproc-duration", type=float, default=6.0, help="seconds per in-process phase (6)"
    )
    p.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of HTTP warm-up per concurrency (3)"
    )
    p.add_argument("--concurrency", default="1,32", help="comma-separated concurrencies (1,32)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure each row this many times and report the medians (1; make bench: 3)",
    )
    p.add_argument("--model", default="minilm", help="model name in --config (minilm)")
    p.add_argument(
        "--config", default=str(ROOT / "models.yaml"), help="models.yaml to copy the entry from"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="in-process torch threads (all cores)",
    )
    p.add_argument(
        "--worker-threads",
        type=int,
        default=None,
        help="each worker's --threads (the cores divided among the workers)",
    )
    p.add_argument(
        "--workers",
        default="1",
        help="worker processes of the model (1), or auto: as `replicas: auto` starts them "
        "(one single-threaded worker per core, at most 4); make bench: auto",
    )
    p.add_argument(
        "--loadgen",
        choices=["auto", "wrk", "httpx"],
        default="auto",
        help="load generator (auto: wrk if on PATH)",
    )
    p.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an option for `modelgate gateway`, e.g. --gateway-arg=--http=h11 (repeatable)",
    )
    p.add_argument(
        "--no-cache-hits",
        dest="cache_hits",
        action="store_false",
        help="skip the cache-hit phases (one input asked again and again)",
    )
    p.add_argument(
        "--peers",
        default="none",
        help="peer servers to measure after modelgate, comma-separated: "
        f"{','.join(PEERS)} (each in its own venv under .cache/bench, built on first use); "
        "none (the default) for none",
    )
    p.add_argument(
        "--engines",
        default="torch",
        help="the model's engines to measure, comma-separated, each with its own stack and "
        "in-process references: torch, onnx, openvino (torch; make bench: all three); the "
        "targets are judged on each engine's own references, the peers against the best",
    )
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--keep-logs", action="store_true", help="keep the stack's logs and print where")
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = sorted(set(args.engines) - {"torch", "onnx", "openvino"})
    if unknown or not args.engines:
        p.error(f"--engines: torch, onnx or openvino, not {', '.join(unknown) or 'nothing'}")
    cores = os.cpu_count() or 1
    if args.workers == "auto":
        args.workers = max(1, min(AUTO_REPLICAS_MAX, cores))
    elif not args.workers.isdigit() or int(args.workers) < 1:
        p.error(f"--workers: a positive number or auto, not {args.workers!r}")
    args.workers = int(args.workers)
    if args.worker_threads is None:
        args.worker_threads = max(1, cores // args.workers)
    return args


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def sanity_check(url: str) -> None:
    post_once(url, BODY % (BASE - 1), "first predict")


def run_info(args: argparse.Namespace, loadgen: str) -> dict[str, Any]:
    argv = [Path(sys.executable).name, "-m", "bench.throughput", *sys.argv[1:]]
    return {
        **machine(),
        "model": args.model,
        "loadgen": loadgen,
        "duration_s": args.duration,
        "inproc_s": args.inproc_duration,
        "inproc_threads": args.threads,
        "worker_threads": args.worker_threads,
        "workers": args.workers,
        "repeats": args.repeats,
        "command": " ".join(argv),
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


class Steps:
    """The benchmark's steps: a progress bar on a terminal, one line each otherwise."""

    def __init__(self, total: int) -> None:
        self.bar: Any = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=sys.stderr)

    def step(self, text: str) -> None:
        if self.bar is None:
            print(text, file=sys.stderr)
            return
        if self.bar.n or self.bar.desc:
            self.bar.update(1)
        self.bar.set_description(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def http_phases(
    stack: Stack,
    bench: HttpBench,
    args: argparse.Namespace,
    refs: tuple[Figure, Figure],
    steps: Steps,
) -> tuple[list[Figure], dict[str, float] | None]:
    """Warm-up then measurement at each concurrency; the c=1 breakdown when c=1 is asked for."""
    figs, breakdown = [], None
    max_batch = int(refs[1].label.rsplit(" b", 1)[1])
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    for i, c in enumerate(levels):
        steps.step(f"HTTP at concurrency {c}")
        known, offset = bench.job_ids(), stack.log_size("gateway")
        fig = bench.phases(c, args, 2 + 2 * i, bench.settle)
        judge(fig, refs[0], refs[1], c, max_batch)
        figs.append(fig)
        if c == 1:
            breakdown = bench.breakdown(known)
            breakdown["gateway_p50"] = stack.access_log_p50(offset) or 0.0
    return figs, breakdown


CACHED_BODY = BODY % 1
"""The one body of the cache-hit phases (no %d: every request the same)."""

HIT_P50_MS, HIT_RATE = 1.5, 2000.0
"""Cache-hit targets: p50 at c=1, req/s at the highest concurrency, one gateway process."""


def cache_phases(
    bench: HttpBench, args: argparse.Namespace, levels: list[int], steps: Steps
) -> list[Figure]:
    """One cached input asked again and again: the gateway answers from the cache alone."""
    load = Load(bench.url, bench.load.timeout_s, CACHED_BODY)
    hits = Driver("cache hit", load, bench.loadgen, bench.pids)
    post_once(bench.url, CACHED_BODY, "the cached input's first predict")  # from now on: hits
    figs = []
    for i, c in enumerate(levels):
        steps.step(f"cache hits at concurrency {c}")
        fig = hits.phases(c, args, 40 + 2 * i)
        if c == 1:
            verdict(fig, f"p50 <= {HIT_P50_MS} ms", fig.p50_ms <= HIT_P50_MS)
        else:
            verdict(fig, f"rate >= {HIT_RATE:.0f}/s", fig.rate >= HIT_RATE)
        figs.append(fig)
    return figs


def onnx_export(config: Path, model: str, workdir: Path) -> Path:
    """The run's ONNX export of ``model`` (made by the onnx engine's phases, or now)."""
    on_onnx = write_config(config, model, workdir / "models-export.yaml", "onnx")
    engine = load_engine(on_onnx, model, 1, exports_of(workdir))
    return Path(engine.model.folder) / "model.onnx"


def peer_phases(
    args: argparse.Namespace,
    config: Path,
    loadgen: str,
    refs: tuple[Figure, Figure],
    steps: Steps,
    workdir: Path,
) -> list[Figure]:
    """Each peer in turn, alone on the machine, at the same concurrencies as modelgate."""
    registry = load_registry(config)
    spec = registry.get(args.model)
    assert spec is not None
    model_dir = Path(resolve_source(spec, registry.base_dir))
    if not model_dir.is_dir():
        raise SystemExit(f"peers need the model as a local folder; {args.model} is {model_dir}")
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    figs = []
    for k, peer in enumerate(chosen(args.peers)):
        steps.step(f"{peer.name}: venv")
        peer.install(lambda text: print(text, file=sys.stderr))
        launch = Launch(
            model_dir,
            free_port(),
            args.worker_threads,
            spec.max_batch_size,
            spec.max_batch_delay_ms / 1000,
            args.model,
            args.workers,
            onnx_export(config, args.model, workdir) if peer.needs_onnx else None,
        )
        server = PeerServer(peer, launch, workdir / f"{peer.name}.log")
        try:
            steps.step(f"{peer.name}: starting")
            server.start()
            server.wait_ready(300)
            assert server.proc is not None
            load = Load(server.url + peer.path, spec.timeout_s + 5, peer.body)
            driver = Driver(peer.name, load, loadgen, {"peer": server.proc.pid})
            for i, c in enumerate(levels):
                steps.step(f"{peer.name} at concurrency {c}")
                fig = driver.phases(c, args, 50 + 10 * k + 2 * i)
                fig.ratio = ratio_to(fig, refs[0], refs[1], c)  # the targets are modelgate's
                figs.append(fig)
        finally:
            server.stop()
    return figs


def pick_loadgen(args: argparse.Namespace) -> str:
    """``--loadgen``; auto: wrk if on PATH, else the httpx client."""
    if args.loadgen == "auto":
        return "wrk" if shutil.which("wrk") else "httpx"
    return str(args.loadgen)


def setup(args: argparse.Namespace, workdir: Path) -> tuple[str, Path, ModelSpec]:
    """The load generator, the run's models.yaml and the model's entry."""
    config = write_config(Path(args.config), args.model, workdir / "models.yaml")
    spec = load_registry(config).get(args.model)
    assert spec is not None
    return pick_loadgen(args), config, spec


def labels(engine: str) -> tuple[str, str]:
    """The in-process and HTTP row labels of ``engine``'s phases: plain for torch,
    ``name/engine`` for the others."""
    if engine == "torch":
        return "in-process", "modelgate"
    return f"in-process/{engine}", f"modelgate/{engine}"


def engine_phases(
    args: argparse.Namespace,
    workdir: Path,
    engine_name: str,
    first: bool,
    loadgen: str,
    steps: Steps,
    info: dict[str, Any],
) -> tuple[list[Figure], dict[str, float] | None]:
    """One engine: a stack serving the model on it, the same model in-process on it (its own
    b1 and b{max_batch} references), and the HTTP phases judged against those."""
    config = write_config(
        Path(args.config), args.model, workdir / f"models-{engine_name}.yaml", engine_name
    )
    spec = load_registry(config).get(args.model)
    assert spec is not None
    inproc, http = labels(engine_name)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    stack = Stack(workdir, config, args.model, args.worker_threads, args.gateway_arg, args.workers)
    try:
        steps.step(f"{engine_name}: starting the stack and loading the model in-process")
        stack.start()
        # Loads while the stack starts (an exported engine's export is shared with the stack's).
        engine = load_engine(config, args.model, args.threads, exports_of(workdir))
        stack.wait_ready(300)
        steps.step(f"{engine_name}: stack ready at {stack.url}; measuring in-process")
        b1, limit = (
            repeated(
                partial(
                    measure_engine,
                    engine,
                    n,
                    args.inproc_duration,
                    pids=stack.pids(),
                    label=inproc,
                ),
                phase_base(k),
                args.repeats,
                "p50_ms" if n == 1 else "rate",
            )
            for k, n in enumerate((1, spec.max_batch_size))
        )
        bench = HttpBench(stack, args.model, loadgen, spec.timeout_s + 5, http)
        sanity_check(bench.url)
        figs, breakdown = http_phases(stack, bench, args, (b1, limit), steps)
        if first:
            info["engine"] = type(engine).__name__
            info["refs"] = (b1, limit)
            if args.cache_hits:  # the cache answers alike whatever computed the entry
                figs += cache_phases(bench, args, levels, steps)
            steps.step("in-process batch 1 again")
            recheck = measure_engine(engine, 1, min(3.0, args.inproc_duration), phase_base(89))
            info["b1_p50_after_ms"] = recheck.p50_ms
    finally:
        stack.stop()
    return [b1, limit, *figs], breakdown if first else None


def run(
    args: argparse.Namespace, workdir: Path
) -> tuple[list[Figure], dict[str, Any], dict[str, float] | None]:
    loadgen = pick_loadgen(args)
    info = run_info(args, loadgen)
    levels = [c for c in args.concurrency.split(",") if c.strip()]
    peers = chosen(args.peers)
    hit_phases = len(levels) if args.cache_hits else 0
    per_engine = 2 + len(levels)
    steps = Steps(
        total=per_engine * len(args.engines) + hit_phases + 1 + len(peers) * (2 + len(levels))
    )
    figs: list[Figure] = []
    breakdown = None
    try:
        for k, name in enumerate(args.engines):
            rows, found = engine_phases(args, workdir, name, k == 0, loadgen, steps, info)
            figs += rows
            breakdown = breakdown or found
        # The peers get the machine to themselves, as modelgate had; they run torch.
        peer_config = write_config(Path(args.config), args.model, workdir / "peers.yaml", "torch")
        figs += peer_phases(args, peer_config, loadgen, info.pop("refs"), steps, workdir)
    finally:
        steps.close()
    info["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return figs, info, breakdown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="modelgate-bench-"))
    keep = args.keep_logs
    try:
        figs, info, breakdown = run(args, workdir)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except BaseException:
        keep = True  # the worker's and gateway's logs explain most failures
        raise
    finally:
        if keep:
            print(f"stack logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(figs, info, breakdown))
    if args.json:
        payload = {"info": info, "figures": [asdict(f) for f in figs], "c1_breakdown_ms": breakdown}
        Path(args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    met = all(f.verdict in ("PASS", "-") for f in figs)
    return 0 if met and all(ok for _, _, ok in peer_verdicts(figs)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
