"""``modelgate fetch``: download the hub models named in models.yaml into a Hugging Face cache.

The worker image runs it at build time so that hub models are baked in at their pinned revisions;
workers then load them from the same cache (``HF_HOME``/``HF_HUB_CACHE``) without a network.
Models with a ``path`` or ``package`` source are already on disk and are only reported.
``huggingface_hub`` is imported on the first hub model, so a file of local models needs none.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from contract.config import ModelSpec, Registry

Download = Callable[..., str]
"""Has the signature of ``huggingface_hub.snapshot_download``; returns the snapshot folder."""

Say = Callable[[str], None]
"""Prints one progress or error line."""


class FetchError(Exception):
    """One model could not be fetched; the message is one line, fit to show a user."""


@dataclass(frozen=True)
class Fetcher:
    """Fetches every hub model of a registry into ``cache_dir`` (None: the Hub's default)."""

    cache_dir: str | None
    say: Say
    warn: Say
    download: Download | None = None
    bars: bool = True
    """Download progress bars (a terminal); without, one line per model before and after."""

    def run(self, registry: Registry) -> int:
        """Fetch each model in turn; the exit status is 1 when any of them failed."""
        where = self.cache_dir or "the Hugging Face cache (HF_HUB_CACHE or HF_HOME)"
        self.say(f"modelgate fetch: {len(registry.models)} model(s), into {where}")
        failed = [spec.name for spec in registry.models if not self._fetch(spec)]
        if failed:
            self.warn(f"modelgate fetch: failed: {', '.join(failed)}")
            return 1
        self.say("modelgate fetch: done")
        return 0

    def _fetch(self, spec: ModelSpec) -> bool:
        source = spec.source
        if not source.hub:
            self.say(f"  {spec.name}: local ({source.describe()}), nothing to fetch")
            return True
        self.say(f"  {spec.name}: fetching {source.describe()}")
        started = time.monotonic()
        try:
            download = self._download()
            with _bars(self.bars):
                folder = download(
                    repo_id=source.hub, revision=source.revision, cache_dir=self.cache_dir
                )
        except FetchError as err:
            self.warn(f"  {spec.name}: {err}")
            return False
        except Exception as err:  # any failure is reported in one line, never as a traceback
            self.warn(f"  {spec.name}: {describe_error(err, source.hub, source.revision)}")
            return False
        self.say(f"  {spec.name}: ok, {folder} ({time.monotonic() - started:.1f} s)")
        return True

    def _download(self) -> Download:
        if self.download is not None:
            return self.download
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise FetchError(
                "huggingface_hub is not installed; install the worker extra: "
                "pip install 'modelgate[worker]'"
            ) from None
        download: Download = snapshot_download
        return download


@contextlib.contextmanager
def _bars(shown: bool) -> Iterator[None]:
    """huggingface_hub's download bars on or off (they would fill a log line by line)."""
    try:
        from huggingface_hub.utils.tqdm import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )
    except ImportError:  # a fake download in tests, or no hub at all: nothing to switch
        yield
        return
    was_disabled = are_progress_bars_disabled()
    if not shown:
        disable_progress_bars()
    try:
        yield
    finally:
        if not shown and not was_disabled:
            enable_progress_bars()


def describe_error(err: BaseException, repo: str, revision: str | None) -> str:
    """One line saying why ``repo@revision`` could not be downloaded, and what to try."""
    explained = _explain_hub_error(err, repo, revision)
    if explained:
        return explained
    return f"cannot download {repo}@{revision}: {type(err).__name__}: {_first_line(err)}"


def _explain_hub_error(err: BaseException, repo: str, revision: str | None) -> str | None:
    try:
        from huggingface_hub import constants, errors
    except ImportError:
        return None
    if isinstance(err, errors.GatedRepoError):
        return f"{repo} is gated: accept its terms on the Hub and set HF_TOKEN"
    if isinstance(err, errors.RepositoryNotFoundError):
        return f"repository {repo} not found (a private one needs HF_TOKEN)"
    if isinstance(err, errors.RevisionNotFoundError):
        return f"revision {revision} not found in {repo}"
    if isinstance(err, errors.HFValidationError):
        return f"invalid repository id or revision: {_first_line(err)}"
    if isinstance(err, errors.LocalEntryNotFoundError):
        if constants.is_offline_mode():
            return f"{repo}@{revision} is not in the cache and HF_HUB_OFFLINE is set"
        return (
            f"cannot reach the Hugging Face Hub and {repo}@{revision} is not in the cache "
            "(check the network, HF_ENDPOINT or a proxy)"
        )
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
