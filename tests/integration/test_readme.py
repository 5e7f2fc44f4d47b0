"""Every ``curl`` in the README, run as written against ``modelgate up`` on the repository's own
models.yaml (``minilm`` and the ``sentiment`` model built from the shipped head): each must get
a 2xx, bar the documented 409 of canceling a job that has already ended."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from modelgate.redis_server import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

JOB_PLACEHOLDER = "5f0c..."
"""How the README writes a job id it cannot know."""


def readme_curls(text: str) -> list[str]:
    """The curl commands of the README's ``sh`` blocks, continuation lines joined, comments
    dropped (shlex drops a ``#`` only outside quotes)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if line.strip().startswith("curl "):
                commands.append(shlex.join(shlex.split(line, comments=True)))
    return commands


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """``modelgate up`` on a copy of models.yaml whose sentiment folder is built next to it."""
    where = tmp_path_factory.mktemp("readme")
    shutil.copy(ROOT / "models.yaml", where / "models.yaml")
    build = [sys.executable, "-m", "modelgate", "build-sentiment", "--out"]
    subprocess.run([*build, str(where / "models" / "sentiment")], check=True, timeout=300)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MODELGATE_PREFIX")}
    log = open(where / "up.log", "w")  # noqa: SIM115
    up = [sys.executable, "-m", "modelgate", "up", "--config", str(where / "models.yaml")]
    proc = subprocess.Popen(
        [*up, "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 180
        while "modelgate ready" not in (where / "up.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (
                where / "up.log"
            ).read_text()
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_every_readme_curl_works_as_written(served: int) -> None:
    commands = readme_curls((ROOT / "README.md").read_text())
    assert len(commands) >= 10, commands
    assert any("/predict -H" in c and '"text"' in c for c in commands), "the classic call is shown"
    job_id = None
    for command in commands:
        if JOB_PLACEHOLDER in command:
            assert job_id, f"{command}: no job submitted before it"
            command = command.replace(JOB_PLACEHOLDER, job_id)
        command = command.replace("localhost:8000", f"127.0.0.1:{served}")
        done = subprocess.run(
            [*shlex.split(command), "--write-out", "\n%{http_code}"],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, (command, done.stderr)
        body, _, status = done.stdout.rpartition("\n")
        allowed = {"409"} if "/cancel" in command else set()  # the job has ended by then
        assert status.startswith("2") or status in allowed, (command, status, body[-500:])
        found = re.search(r'"job_id":"([0-9a-f]{32})"', body)
        job_id = found[1] if found else job_id


def test_the_classic_predict_answers_with_the_sentiment_model(served: int) -> None:
    import httpx

    url = f"http://127.0.0.1:{served}"
    one = httpx.post(url + "/predict", json={"text": "this is terrible"}, timeout=30).json()
    assert one["label"] == "negative", one
    info = httpx.get(url + "/models/sentiment", timeout=10).json()
    assert info["task"] == "text-classification" and info["ready"] is True
