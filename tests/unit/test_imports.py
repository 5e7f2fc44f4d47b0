"""The import rule: gateway and contract never import torch, transformers or workers;
workers never import gateway or FastAPI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "gateway": {"workers", "torch", "transformers"},
    "contract": {"workers", "gateway", "torch", "transformers", "fastapi", "starlette"},
    "workers": {"gateway", "fastapi", "starlette", "uvicorn"},
}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_packages_respect_the_import_rule() -> None:
    bad = []
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            hits = imported_roots(path) & forbidden
            if hits:
                bad.append(f"{path.relative_to(ROOT)} imports {sorted(hits)}")
    assert not bad


def test_gateway_app_loads_without_torch() -> None:
    code = (
        "import sys, gateway.app, modelgate.cli; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def test_nothing_uses_pickle() -> None:
    for package in FORBIDDEN:
        for path in (ROOT / package).rglob("*.py"):
            assert not imported_roots(path) & {"pickle", "cloudpickle", "dill"}, path
