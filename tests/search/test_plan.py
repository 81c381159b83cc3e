"""Per-backbone shapes, the memory model and `hpsearch plan`."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from search.config import ConfigError, ResourcesConfig, ShapeOverride, load_config
from search.plan import make_plan, unfit
from trainables import memory

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_backbone_override_changes_only_its_fields():
    res = ResourcesConfig(strategy="mwms", workers=2, cpus_per_worker=3,
                          backbones={"B7": ShapeOverride(workers=4)})
    assert res.shape_for("B0").workers == 2
    b7 = res.shape_for("B7")
    assert (b7.workers, b7.cpus_per_worker, b7.strategy) == (4, 3, "mwms")


@pytest.mark.parametrize(("resources", "field"), [
    ("{strategy: mwms, backbones: {B7: {strategy: tpu, workers: 2}}}", "resources.backbones.B7.workers"),
    ("{backbones: {B7: {gpus_per_worker: 1, gpu_type: nvidia-x9}}}", "resources.backbones.B7.gpu_type"),
    ("{backbones: {B7: {workers: 0}}}", "resources.backbones.B7.workers"),
    ("{backbones: {B9: {workers: 2}}}", "resources.backbones.B9"),
    ("{strategy: mwms, backbones: {B3: {workers: 3}}}", "recipe.batch_size"),
])
def test_bad_shapes_name_the_backbone_and_field(tmp_path, resources, field):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"resources: {resources}\n"))
    assert info.value.field == field, str(info.value)
    if field == "recipe.batch_size":
        assert "resources.backbones.B3" in str(info.value)


def test_micro_batches_are_the_fewest_that_fit():
    cost = memory.Cost(fixed_mib=1000, per_image_mib=100)
    assert memory.micro_batches(100, cost, capacity_mib=20000) == 1  # 11,000 <= 18,000
    assert memory.micro_batches(100, cost, capacity_mib=8000) == 2  # 50 images: 6,000 <= 7,200
    assert memory.micro_batches(100, cost, capacity_mib=3000) == 10  # 20 images: 3,000 > 2,700; 10: 2,000
    assert memory.micro_batches(100, cost, capacity_mib=1100) is None  # even 1 image: 1,100 > 990


def test_the_model_reproduces_its_measurements_and_halves_activations_in_mixed_precision():
    for name, fits in memory.table()["backbones"].items():
        for measured in fits.values():
            cost = memory.step_cost(name, measured["side"])
            assert cost.per_image_mib == pytest.approx(measured["per_image_mib"], rel=1e-6, abs=1e-6)
        native = fits["native"]["side"]
        full = memory.step_cost(name, native)
        half = memory.step_cost(name, native, mixed_precision=True)
        assert half.per_image_mib == pytest.approx(full.per_image_mib / 2) and half.fixed_mib == full.fixed_mib
    assert memory.table()["measured"] and "CPUs" in memory.table()["machine"]


def test_the_production_config_fits_every_backbone():
    config = load_config(REPO / "configs" / "cifar10.yaml")
    plans = {p.backbone: p for p in make_plan(config)}
    assert set(plans) == {f"B{i}" for i in range(8)} and not unfit(list(plans.values()))
    assert plans["B0"].replicas == 2 and plans["B0"].per_replica_batch == 100
    assert plans["B7"].shape.strategy == "tpu" and plans["B7"].per_replica_batch == 50
    for p in plans.values():  # the global batch (and so the LR's meaning) is the same for all
        assert p.replicas * p.per_replica_batch == config.recipe.batch_size
        assert p.estimate_mib <= p.capacity_mib * memory.USABLE_FRACTION


def test_micro_batching_is_refused_where_batchnorm_trains(tmp_path):
    text = """
    space: {backbones: [B7]}
    recipe: {weights: none}
    resources: {accelerator_memory_gib: 8}
    """
    config = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match="B7 needs .* micro-batches.*BatchNormalization trains"):
        make_plan(config)


def hpsearch(*args):
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_plan_prints_a_row_per_backbone():
    done = hpsearch("plan", "--config", "configs/cifar10.yaml")
    assert done.returncode == 0, done.stderr
    rows = [l for l in done.stdout.splitlines() if l.startswith("| B")]
    assert [r.split("|")[1].strip() for r in rows] == [f"B{i}" for i in range(8)]
    assert all(r.rstrip().endswith("| yes |") for r in rows)


def test_an_impossible_shape_exits_2_naming_its_backbone(tmp_path):
    path = write(tmp_path, """
    space: {backbones: [B0, B7]}
    resources:
      backbones: {B7: {accelerator_memory_gib: 1}}
    """)
    done = hpsearch("plan", "--config", str(path))
    assert done.returncode == 2
    assert "B7 cannot fit its CPU even at 1 image per micro-batch" in done.stderr
    assert "B0 cannot" not in done.stderr and "Traceback" not in done.stderr
    assert "| B7 |" in done.stdout and "| NO |" in done.stdout  # the table still shows why


def test_a_backbone_with_no_memory_row_is_bad_input_naming_the_remedy(monkeypatch):
    """A backbone family added without its measured memory row: a clear error (exit 2)
    saying how to measure it, not a KeyError traceback."""
    import pytest

    from trainables import memory
    from trainables.errors import InputError

    measured = memory.table()
    monkeypatch.setattr(memory, "table", lambda: {**measured, "backbones": {
        k: v for k, v in measured["backbones"].items() if k != "B0"}})
    with pytest.raises(InputError) as raised:
        memory.step_cost("B0", 32)
    assert raised.value.exit_code == 2
    assert "B0 has no memory measurement" in str(raised.value)
    assert "python bench/memory.py --backbones B0" in str(raised.value)
