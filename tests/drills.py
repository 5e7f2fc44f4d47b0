"""Load and tallies for the drills: concurrent clients of a stack that must lose nothing while
a worker, Redis or a gateway goes away."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

DOCUMENTED = {
    429: {"overloaded"},
    503: {"redis_unavailable", "model_unavailable", "worker_lost"},
    504: {"inference_timeout"},
}
"""The errors a request may meet while Redis or a worker goes away."""

ENDED = {"finished", "failed", "canceled", "stopped"}


def tail_logs(log_dir: Path, chars: int = 3000) -> str:
    """The end of every process log in ``log_dir``, for an assertion message."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}"
        for p in sorted(log_dir.glob("*.log"))
    )


@dataclass
class Tally:
    """What the load loop saw: one entry per HTTP request, one per async job."""

    sent: int = 0
    succeeded: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    jobs: list[str] = field(default_factory=list)
    job_states: Counter[str] = field(default_factory=Counter)
    unended: dict[str, str] = field(default_factory=dict)
    timeline: list[tuple[float, bool]] = field(default_factory=list)
    """When each answer came (``time.monotonic()``) and whether it was the success asked for."""
    started: float = field(default_factory=time.monotonic)
    messages: list[str] = field(default_factory=list)
    """The first failures' error messages (a 504's names its job), for the report."""

    def failing_between(self, start: float) -> tuple[float, float] | None:
        """The first and last failed answer at or after ``start``, if any."""
        failed = [t for t, ok in self.timeline if not ok and t >= start]
        return (failed[0], failed[-1]) if failed else None

    def record(self, response: httpx.Response, ok: int) -> None:
        self.timeline.append((time.monotonic(), response.status_code == ok))
        if response.status_code == ok:
            self.succeeded += 1
            return
        try:
            error = response.json()["error"]
            code = error["code"]
        except (ValueError, KeyError, TypeError):
            error, code = {}, "<no error body>"
        if len(self.messages) < 20 and code != "redis_unavailable":
            at = time.monotonic() - self.started
            self.messages.append(f"{at:5.1f} s  {code}: {error.get('message', '')}")
        label = f"{response.status_code} {code}"
        documented = code in DOCUMENTED.get(response.status_code, ())
        if response.status_code in (429, 503) and "retry-after" not in response.headers:
            documented, label = False, f"{label} without Retry-After"
        bucket = self.failed if documented else self.unexpected
        bucket[label] += 1

    def report(self) -> dict[str, Any]:
        return {
            "requests": {
                "sent": self.sent,
                "succeeded": self.succeeded,
                "failed_by_code": dict(self.failed),
                "unexpected": dict(self.unexpected),
                "lost": sum(self.lost.values()),
                "lost_by_exception": dict(self.lost),
                "messages": self.messages,
            },
            "async_jobs": {
                "submitted": len(self.jobs),
                "finished": self.job_states["finished"],
                "failed_by_code": {k: v for k, v in self.job_states.items() if k != "finished"},
                "unended": len(self.unended),
                "unended_jobs": self.unended,
            },
        }


class Load:
    """Concurrent senders of distinct sync predicts, with an async job every few requests."""

    def __init__(
        self,
        url: str | list[str],
        model: str,
        tally: Tally,
        *,
        senders: int,
        duration_s: float,
        max_requests: int,
        job_every: int = 5,
        client_timeout_s: float = 15.0,
        tag: str = "",
    ) -> None:
        self.tag = tag
        """Part of every input, so that drills sharing one Redis do not answer from the cache."""
        self.client_timeout_s = client_timeout_s
        self.targets = url if isinstance(url, list) else [url]
        """The gateways requests go to in turn; a drill may change the list while it runs
        (what a load balancer does when a gateway leaves or joins)."""
        self.model = model
        self.tally = tally
        self.senders = senders
        self.job_every = job_every
        self.max_requests = max_requests
        self.until = time.monotonic() + duration_s

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.senders * 2)
        client = httpx.AsyncClient(timeout=self.client_timeout_s, limits=limits)
        async with client as http:
            await asyncio.gather(*(self._sender(http, s) for s in range(self.senders)))

    async def _sender(self, http: httpx.AsyncClient, sender: int) -> None:
        i = 0
        while time.monotonic() < self.until and self.tally.sent < self.max_requests:
            i += 1
            self.tally.sent += 1
            as_job = i % self.job_every == 0
            target = self.targets[(sender + i) % len(self.targets)]
            path = f"{target}/models/{self.model}/{'jobs' if as_job else 'predict'}"
            kind = "async" if as_job else "sync"
            body = {"inputs": f"{self.tag}sender {sender} request {i} says something ({kind})"}
            try:
                r = await http.post(path, json=body)
            except httpx.HTTPError as err:
                self.tally.lost[type(err).__name__] += 1
                continue
            self.tally.record(r, 202 if as_job else 200)
            if as_job and r.status_code == 202:
                self.tally.jobs.append(r.json()["job_id"])
            if r.status_code >= 400:
                await asyncio.sleep(0.2)  # a polite client backs off on errors


async def await_jobs(url: str, tally: Tally, bound_s: float) -> None:
    deadline = time.monotonic() + bound_s
    gate = asyncio.Semaphore(64)

    async def settle(http: httpx.AsyncClient, job_id: str) -> None:
        last = "never answered"
        async with gate:
            while time.monotonic() < deadline:
                wait = max(0.0, min(10.0, deadline - time.monotonic() - 1))
                try:
                    r = await http.get(f"/jobs/{job_id}", params={"wait": wait})
                except httpx.HTTPError as err:
                    last = type(err).__name__
                    await asyncio.sleep(0.5)
                    continue
                body = r.json()
                if r.status_code != 200:
                    last = f"{r.status_code} {body.get('error', {}).get('code')}"
                    await asyncio.sleep(0.5)
                    continue
                status = body["status"]
                if status in ENDED:
                    key = status if status != "failed" else f"failed {body['error']['code']}"
                    tally.job_states[key] += 1
                    return
                last = status
        tally.unended[job_id] = last

    async with httpx.AsyncClient(base_url=url, timeout=15) as http:
        await asyncio.gather(*(settle(http, j) for j in tally.jobs))
