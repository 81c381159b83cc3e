"""Config loading: every kind of bad file is rejected with its field named, before Ray."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from search.config import Config, ConfigError, config_from_dict, config_to_dict, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert isinstance(config, Config)
    # and round-trip through their plain form
    assert config_from_dict(config_to_dict(config)) == config


def test_an_empty_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write(tmp_path, ""))
    assert load_config(write(tmp_path, "search: {}")) == Config()  # defaults: an explicit empty section


def test_values_are_typed(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
            space:
              backbones: [B0, B3]
              max_lr: {low: 0.01, high: 0.1, log: true}
            recipe: {min_lr: 0}
            """,
        )
    )
    assert config.space.backbones == ("B0", "B3")
    assert config.space.max_lr.log is True
    assert isinstance(config.recipe.min_lr, float)
    with pytest.raises(AttributeError):
        config.search.seed = 3  # frozen


BAD = {
    "unknown top-level key": ("serch: {}", "serch"),
    "unknown nested key": ("search: {num_trails: 4}", "search.num_trails"),
    "wrong type (string for int)": ("search: {num_trials: eight}", "search.num_trials"),
    "wrong type (bool for int)": ("recipe: {batch_size: true}", "recipe.batch_size"),
    "wrong type (list for mapping)": ("data: [digits]", "data"),
    "wrong type (list for range)": ("space: {dropout: [0.1, 0.3]}", "space.dropout"),
    "fixed value out of bounds": ("space: {dropout: 0.99}", "space.dropout"),
    "out of range (negative)": ("recipe: {head_epochs: -1}", "recipe.head_epochs"),
    "out of range (fraction above 1)": ("data: {validation_fraction: 1.5}", "data.validation_fraction"),
    "out of range (range end)": ("space: {dropout: {low: 0.1, high: 0.99}}", "space.dropout.high"),
    "out of range (zero lr)": ("recipe: {head_lr: 0}", "recipe.head_lr"),
    "minimum above maximum": ("space: {cutout_count: {low: 3, high: 1}}", "space.cutout_count"),
    "minimum above maximum (float)": ("space: {max_lr: {low: 0.1, high: 0.01, log: true}}", "space.max_lr"),
    "log range from zero": ("space: {max_lr: {low: 0.0, high: 0.1, log: true}}", "space.max_lr.low"),
    "empty choice": ("space: {backbones: []}", "space.backbones"),
    "unknown choice": ("space: {backbones: [B0, B9]}", "space.backbones[1]"),
    "duplicate choice": ("space: {backbones: [B0, B0]}", "space.backbones"),
    "unknown dataset": ("data: {dataset: mnist}", "data.dataset"),
    "unknown strategy": ("resources: {strategy: horovod}", "resources.strategy"),
    "unknown weights": ("recipe: {weights: imagenet21k}", "recipe.weights"),
    "empty string": ("search: {name: ''}", "search.name"),
    "grace beyond max epochs": ("search: {grace_epochs: 500}", "search.grace_epochs"),
    "min lr above max lr": ("recipe: {min_lr: 0.5}", "recipe.min_lr"),
    "bad storage scheme": ("storage: {path: 's3://bucket/x'}", "storage.path"),
    "infinite number": ("recipe: {momentum: .inf}", "recipe.momentum"),
    "null where required": ("recipe: {batch_size: null}", "recipe.batch_size"),
    "single with many workers": ("resources: {workers: 2}", "resources.workers"),
    "tpu with many workers": ("resources: {strategy: tpu, workers: 2}", "resources.workers"),
    "tpu with gpus": ("resources: {strategy: tpu, gpus_per_worker: 1}", "resources.gpus_per_worker"),
    "unknown tpu": ("resources: {strategy: tpu, tpu_accelerator: TPU-V9}", "resources.tpu_accelerator"),
    "bad topology": ("resources: {strategy: tpu, tpu_topology: 2by2}", "resources.tpu_topology"),
    "multi-host topology": ("resources: {strategy: tpu, tpu_topology: 4x4}", "resources.tpu_topology"),
    "no placement wait": ("resources: {placement_timeout_s: 0}", "resources.placement_timeout_s"),
    "xla on cpu": ("resources: {strategy: mwms, workers: 2, xla: true}", "resources.xla"),
    "no steps per call": ("resources: {steps_per_execution: 0}", "resources.steps_per_execution"),
    "batch not divisible": ("recipe: {batch_size: 33}\nresources: {strategy: mwms, workers: 2}", "recipe.batch_size"),
    "staged data on s3": ("data: {dataset: 's3://bucket/cifar'}", "data.dataset"),
    "unknown key in a range": ("space: {dropout: {low: 0.1, hgh: 0.2}}", "space.dropout.hgh"),
    "unknown key in an override": ("resources: {backbones: {B1: {workerz: 2}}}", "resources.backbones.B1.workerz"),
    "wrong type in an override": ("resources: {backbones: {B1: {workers: two}}}", "resources.backbones.B1.workers"),
    "a date for a name": ("search: {name: 2026-12-01}", "search.name"),
    "a string for a number": ("recipe: {head_lr: '0.01'}", "recipe.head_lr"),
}


def test_distributed_strategies_are_accepted(tmp_path):
    mwms = load_config(write(tmp_path, "resources: {strategy: mwms, workers: 4, gpus_per_worker: 1, gpu_type: nvidia-l4, xla: false}"))
    assert (mwms.resources.strategy, mwms.resources.workers, mwms.resources.xla) == ("mwms", 4, False)
    tpu = load_config(write(tmp_path, "resources: {strategy: tpu, tpu_accelerator: TPU-V5P, tpu_topology: 2x2x1}"))
    assert tpu.resources.tpu_chips_per_worker == 4 and tpu.resources.mixed_precision is None
    staged = load_config(write(tmp_path, "data: {dataset: 'gs://bucket/cifar10'}"))
    assert staged.data.dataset == "gs://bucket/cifar10"


@pytest.mark.parametrize(("text", "field"), BAD.values(), ids=BAD.keys())
def test_bad_values_name_their_field(tmp_path, text, field):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.field == field
    assert str(info.value).startswith(field)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match="YAML syntax error .* line 3"):
        load_config(write(tmp_path, "search:\n  seed: 1\n  name: a: b\n"))


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("search: {num_trails: 4}", "search.num_trails: unknown key"),
        ("space: {backbones: []}", "space.backbones: must not be empty"),
        ("space: {dropout: {low: 0.5, high: 0.1}}", "space.dropout: low (0.5) is above high (0.1)"),
        (None, "config file not found"),
        ("a: [b", "YAML syntax error"),
    ],
)
def test_cli_rejects_bad_config_before_ray(tmp_path, text, needle):
    path = tmp_path / "missing.yaml" if text is None else write(tmp_path, text)
    probe = (
        "import sys; from search.cli import main; "
        f"rc = main(['run', '--config', {str(path)!r}]); "
        "print('ray imported:', 'ray' in sys.modules); sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("hpsearch:")]
    assert len(errors) == 1 and needle in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert "ray imported: False" in done.stdout


def test_config_command_prints_defaults(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "search", "config", "--config", str(write(tmp_path, "search: {seed: 7}"))],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed["search"]["seed"] == 7
    assert printed["recipe"]["batch_size"] == 200


def test_a_single_value_fixes_a_parameter(tmp_path):
    """A number where a range could be fixes the parameter: Tune passes it to every trial
    as a constant and Optuna does not sample it."""
    from search.space import distributions, param_space

    config = load_config(write(tmp_path, "space: {dropout: 0.3, warmup_epochs: 4}"))
    assert config.space.dropout == 0.3 and config.space.warmup_epochs == 4
    assert config.max_epochs == config.recipe.epochs(4)
    assert param_space(config.space)["dropout"] == 0.3
    assert "dropout" not in distributions(config.space) and "max_lr" in distributions(config.space)


def test_unfreeze_fraction_is_fixed_unless_the_space_declares_a_range(tmp_path):
    """The seventh axis comes from its one declaration: fixed at the recipe's 1.0 by
    default, searched (a Tune domain, an Optuna distribution, a trials-table column)
    when the space gives a range."""
    from search.results import rows_table
    from search.space import distributions, param_space

    default = load_config(write(tmp_path, "search: {name: default}"))
    assert default.space.unfreeze_fraction == 1.0
    assert param_space(default.space)["unfreeze_fraction"] == 1.0
    assert "unfreeze_fraction" not in distributions(default.space)
    ranged = load_config(write(tmp_path, "space: {unfreeze_fraction: {low: 0.25, high: 1.0}}"))
    dist = distributions(ranged.space)["unfreeze_fraction"]
    assert (dist.low, dist.high) == (0.25, 1.0)
    assert "unfreeze_fraction" in rows_table([]).column_names
    with pytest.raises(ConfigError, match="space.unfreeze_fraction.low"):
        load_config(write(tmp_path, "space: {unfreeze_fraction: {low: 0.0, high: 1.0}}"))


def test_storage_defaults_to_the_chart_s_bucket_then_a_local_directory(tmp_path, monkeypatch):
    path = write(tmp_path, "search: {name: s}")
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    assert load_config(path).storage.path == "./experiments"
    monkeypatch.setenv("HPSEARCH_STORAGE", "gs://bucket/experiments")
    assert load_config(path).storage.path == "gs://bucket/experiments"
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text("storage: {path: /data/exp}\n")
    assert load_config(explicit).storage.path == "/data/exp"  # the config wins
    monkeypatch.setenv("HPSEARCH_STORAGE", "s3://bucket/x")
    with pytest.raises(ConfigError, match="storage.path"):
        load_config(path)


@pytest.mark.parametrize("raw, message", [
    # a searched axis is a range (a mapping) or one fixed value: the error is the branch's
    # that fits the value's kind, field and words both
    ({"space": {"dropout": "high"}}, "space.dropout: expected a number, got a string"),
    ({"space": {"dropout": [0.1]}}, "space.dropout: expected a number, got a list"),
    ({"space": {"max_lr": True}}, "space.max_lr: expected a number, got a boolean"),
    ({"space": {"dropout": {"low": "x", "high": 0.5}}}, "space.dropout.low: expected a number, got a string"),
])
def test_a_union_fields_error_names_the_kind_its_value_should_have(raw, message):
    with pytest.raises(ConfigError) as raised:
        config_from_dict(raw)
    assert str(raised.value) == message
