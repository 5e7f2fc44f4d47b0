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
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "MODELGATE_REDIS_URL", "MODELGATE_PREFIX")
    }
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


PLACEHOLDERS = {
    "5f0c...": r'"job_id":"([0-9a-f]{32})"',
    "file-7d1e...": r'"id":"(file-[0-9a-f]{32})"',
    "batch_9a2c...": r'"id":"(batch_[0-9a-f]{32})"',
}
"""How the README writes ids it cannot know, and where the answer of an earlier curl gives them."""


def run_curl(command: str) -> tuple[str, str]:
    """The body and the status code of one curl, run from the repository's root."""
    done = subprocess.run(
        [*shlex.split(command), "--write-out", "\n%{http_code}"],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert done.returncode == 0, (command, done.stderr)
    body, _, status = done.stdout.rpartition("\n")
    return body, status


def test_every_readme_curl_works_as_written(served: int) -> None:
    commands = readme_curls((ROOT / "README.md").read_text())
    assert len(commands) >= 10, commands
    assert any("/predict -H" in c and '"text"' in c for c in commands), "the classic call is shown"
    ids: dict[str, str] = {}
    for command in commands:
        for placeholder in PLACEHOLDERS:
            if placeholder in command:
                assert placeholder in ids, f"{command}: nothing before it gave {placeholder}"
                command = command.replace(placeholder, ids[placeholder])
        command = command.replace("localhost:8000", f"127.0.0.1:{served}")
        body, status = run_curl(command)
        deadline = time.monotonic() + 60
        while "/content" in command and status == "404" and time.monotonic() < deadline:
            # A batch's output file is written by the first read of the batch after its last
            # line ended: read the batch (its id is in the file's), then the file again.
            time.sleep(0.5)
            run_curl(command.replace("/files/file-", "/batches/").split("-output")[0])
            body, status = run_curl(command)
        allowed = {"409"} if "/cancel" in command else set()  # the job has ended by then
        assert status.startswith("2") or status in allowed, (command, status, body[-500:])
        for placeholder, pattern in PLACEHOLDERS.items():
            found = re.search(pattern, body)
            if found:
                ids[placeholder] = found[1]


def test_the_classic_predict_answers_with_the_sentiment_model(served: int) -> None:
    import httpx

    url = f"http://127.0.0.1:{served}"
    one = httpx.post(url + "/predict", json={"text": "this is terrible"}, timeout=30).json()
    assert one["label"] == "negative", one
    info = httpx.get(url + "/models/sentiment", timeout=10).json()
    assert info["task"] == "text-classification" and info["ready"] is True


def test_the_readme_status_command_works_as_written(served: int) -> None:
    text = (ROOT / "README.md").read_text()
    commands = [
        shlex.split(line.strip(), comments=True)
        for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)
        for line in block.splitlines()
        if line.strip().startswith("modelgate status")
    ]
    assert commands, "the README shows modelgate status"
    env = {**os.environ, "MODELGATE_URL": f"http://127.0.0.1:{served}"}
    for command in commands:
        done = subprocess.run(
            [sys.executable, "-m", "modelgate", *command[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=env,
        )
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.startswith(f"modelgate at http://127.0.0.1:{served}: 2 of 2 models up")
