"""A first run from a plain install: the README's "Without make" lines, run as written in a
fresh virtual environment on a copy of the repository, then every served model answers."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
import venv
from pathlib import Path

import httpx
import pytest

from modelgate.redis_server import free_port
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECTION = "### Without make: a plain install"


def readme_lines() -> list[str]:
    """The commands of the section's ``sh`` block, comments dropped."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text[text.index(SECTION) :], flags=re.S)
    assert block, "the section has a sh block"
    return [shlex.join(shlex.split(line, comments=True)) for line in block[1].splitlines()]


def copy_of_repo(where: Path) -> Path:
    """The tracked files only: what a clean clone has."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        target = where / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, target)
    return where


def test_the_readme_plain_install_serves_every_model(tmp_path: Path) -> None:
    lines = readme_lines()
    assert lines[:2] == ["pip install torch==2.13.0", "pip install '.[worker]'"], lines
    assert lines[-1] == "modelgate up", lines
    repo = copy_of_repo(tmp_path / "repo")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MODELGATE_") and k not in ("REDIS_URL", "VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for line in lines[:-1]:
        done = subprocess.run(
            shlex.split(line), cwd=repo, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, (line, done.stderr[-3000:])
    port = free_port()
    log_path = tmp_path / "up.log"
    with open(log_path, "w") as log:
        up = subprocess.Popen(
            [*shlex.split(lines[-1]), "--port", str(port)],
            cwd=repo,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 240
            while "modelgate ready" not in log_path.read_text():
                assert up.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.5)
            text = log_path.read_text()
            assert "no MODELGATE_REDIS_URL given; started redis-server" in text
            assert "Traceback" not in text and "Loading weights" not in text
            url = f"http://127.0.0.1:{port}"
            served = httpx.get(f"{url}/models", timeout=10).json()
            assert {m["name"] for m in served} == {"minilm", "sentiment"}
            for model in served:
                answer = httpx.post(
                    f"{url}/models/{model['name']}/predict",
                    json={"inputs": "a first run from a plain install"},
                    timeout=60,
                )
                assert answer.status_code == 200, answer.text
            interpreter = Path(f"/proc/{up.pid}/cmdline").read_bytes().split(b"\0")[0]
            assert interpreter.decode().startswith(str(env_dir)), "the fresh venv's modelgate"
        finally:
            up.terminate()
            up.wait(timeout=60)
