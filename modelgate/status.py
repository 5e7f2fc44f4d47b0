"""``modelgate status``: what a running deployment is doing, read from a gateway's ``GET /status``
(the numbers the dashboard shows): a table on a terminal, JSON otherwise or with ``--json``.

Only the standard library speaks HTTP here, so the command works from the gateway's own install.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class StatusError(Exception):
    """The report could not be read; the message is one line, fit to show a user."""


def fetch(url: str, api_key: str | None, window_s: int, timeout_s: float = 10.0) -> Any:
    """``GET {url}/status?window=...`` as JSON."""
    query = urllib.parse.urlencode({"window": window_s})
    request = urllib.request.Request(f"{url.rstrip('/')}/status?{query}")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.load(response)
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise StatusError(
                f"{url} needs an API key: pass --api-key or set MODELGATE_API_KEY"
            ) from None
        raise StatusError(f"{url}/status answered {err.code}: {_error_text(err)}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise StatusError(f"cannot reach a modelgate gateway at {url}: {reason}") from None


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(err.read())
        return f"{body['error']['code']}: {body['error']['message']}"
    except (ValueError, KeyError, TypeError):
        return str(err.reason)


def _ms(q: dict[str, float | None]) -> str:
    def one(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return f"{one(q['p50'])}/{one(q['p99'])}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]


def render(report: dict[str, Any], url: str) -> str:
    """The report as a person reads it on a terminal."""
    models = report["models"]
    up = sum(1 for m in models if m["ready"])
    mib = report["redis"]["used_bytes"] / 1048576
    lines = [
        f"modelgate at {url}: {up} of {len(models)} models up, Redis {mib:.1f} MiB; "
        f"the last {report['window_s']} s",
        "",
    ]
    header = ["MODEL", "TASK", "DEVICE", "WORKERS", "QUEUE i/b", "REQUESTS", "REQ/S"]
    header += ["LATENCY ms p50/p99", "QUEUE ms", "COMPUTE ms", "BATCH", "CACHE", "BULK/s"]
    header += ["ERRORS"]
    rows = []
    for m in models:
        r = m["recent"]
        ratio = r["cache_hit_ratio"]
        errors = ", ".join(f"{code} {n}" for code, n in r["errors"].items()) or "-"
        rows.append(
            [
                m["name"],
                m["task"],
                m["device"],
                str(m["live_workers"]) if m["ready"] else "down",
                f"{m['queue_depth']}/{m['bulk_queue_depth']}",
                str(r["requests"]),
                f"{r['requests_per_s']:.2f}",
                _ms(r["latency_ms"]),
                _ms(r["queue_ms"]),
                _ms(r["compute_ms"]),
                "-" if r["mean_batch_size"] is None else f"{r['mean_batch_size']:.1f}",
                "-" if ratio is None else f"{100 * ratio:.0f}%",
                f"{r['lanes']['bulk']['items_per_s']:.1f}",
                errors,
            ]
        )
    lines += _table(header, rows)
    broken = [m for m in models if m.get("load_error")]
    if broken:
        lines += ["", "cannot load:"] + [f"  {m['name']}: {m['load_error']}" for m in broken]
    workers = [(m["name"], w) for m in models for w in m["workers"]]
    if workers:
        lines += [
            "",
            *_table(
                ["WORKER", "MODEL", "HOST", "PID", "BATCH SIZE", "LAST BATCH", "LAST BEAT"],
                [
                    [
                        w["name"],
                        name,
                        str(w.get("host") or "-"),
                        str(w.get("pid") or "-"),
                        str(w.get("max_batch_size") or "-"),
                        str(w.get("last_batch") or "-"),
                        str(w.get("last_beat") or "-")[11:19],
                    ]
                    for name, w in workers
                ],
            ),
        ]
    if report["jobs"]:
        rows = []
        for job in report["jobs"]:
            progress = job.get("progress")
            rows.append(
                [
                    job["job_id"],
                    str(job["model"]),
                    job["status"],
                    f"{progress['done']}/{progress['total']}" if progress else "-",
                    str(job.get("created_at") or "-")[:19],
                ]
            )
        lines += ["", *_table(["JOB", "MODEL", "STATUS", "PROGRESS", "CREATED"], rows)]
    return "\n".join(lines)
