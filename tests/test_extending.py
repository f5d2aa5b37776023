"""docs/extending.md's worked example, run as written: the strategy file, its config file and its test."""

import re
import shutil
import sys
import types
from pathlib import Path

import pytest

import fedmm.compose
from fedmm.compose import compose_config
from fedmm.experiment import run_experiment
from fedmm.strategies import spec as registry
from fedmm.strategies import strategy_names

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
MODULE = "fedmm.strategies.fedavg_equal"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def example_strategy(tmp_path, monkeypatch):
    """The page's strategy file loaded as `fedmm.strategies.fedavg_equal`, and its config file in a copy of
    configs/; both gone afterwards."""
    strategy_file, _ = code_blocks("python")
    module = types.ModuleType(MODULE)
    module.__file__ = str(DOC)
    monkeypatch.setitem(sys.modules, MODULE, module)
    exec(compile(strategy_file, f"{DOC} (strategy file)", "exec"), module.__dict__)
    configs = tmp_path / "configs"
    shutil.copytree(fedmm.compose.CONFIG_DIR, configs)
    (configs / "strategy" / "fedavg_equal.yaml").write_text(code_blocks("yaml")[0])
    monkeypatch.setattr(fedmm.compose, "CONFIG_DIR", configs)
    yield module
    registry._REGISTRY.pop("fedavg_equal", None)


def test_the_worked_example_registers_composes_passes_its_test_and_runs(example_strategy, smoke_overrides,
                                                                       flower_run_identity, tmp_path):
    assert "fedavg_equal" in strategy_names()
    _, test_file = code_blocks("python")
    namespace: dict = {}
    exec(compile(test_file, f"{DOC} (test file)", "exec"), namespace)
    namespace["test_every_hospital_counts_the_same"](flower_run_identity)
    cfg = compose_config([*smoke_overrides, "strategy=fedavg_equal", f"run_dir={tmp_path / 'run'}"])
    summary = run_experiment(cfg)
    assert summary["strategy"] == "fedavg_equal" and summary["evaluated_round"] == 2
    assert 0.0 <= summary["i2t_recall@10"] <= 1.0
