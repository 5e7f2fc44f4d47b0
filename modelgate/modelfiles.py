"""Writing model folders from the command line (the sentiment model, distilled and pruned
students): transformers kept quiet while a command prints its own progress, a folder that
appears only when complete, and files a worker running as another user can read. torch and
transformers are imported inside functions."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """No load reports and no bars from transformers inside the block."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A sibling ``.partial`` folder to write into, whose files move into ``out`` (created if
    absent) once the block completes: ``out`` never holds a half-written model. A failed
    block leaves no ``.partial`` behind."""
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out.mkdir(parents=True, exist_ok=True)
    for path in staging.iterdir():
        path.replace(out / path.name)
    staging.rmdir()


def save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` of model and tokenizer, readable by a worker running as anyone."""
    with quiet_transformers():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    # safetensors 0.8 writes model.safetensors as 0600; a worker running as another user (a
    # container mounting models/) must be able to read it.
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o644)
