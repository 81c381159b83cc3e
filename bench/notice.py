"""What a Spot reclaim notice buys, per backbone: does the checkpoint a reclaimed trial
takes on the notice reach the bucket before the node goes?

For each backbone the script builds the classifier at its native resolution, unfreezes
all of it (the largest optimizer state: one SGD momentum slot per trainable weight),
and writes the very checkpoint a trial writes (``trainables.checkpoint.save_checkpoint``:
``model.keras``, ``optimizer.npz``, ``state.json``), measuring its size and this
machine's local write time. The upload time is that size at UPLOAD_MIB_S, a single
stream to Cloud Storage (one file is one stream through pyarrow's GCS filesystem), a
figure from outside this machine (its source below; the GCS emulator here would
measure only this machine's loopback).

The time the notice leaves for the upload: the chart's ``spot.drainSeconds`` (Ray's
drain deadline after the SIGTERM a Spot node's pods get), less Ray Train's preemption
watcher poll (the chart's RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S) and one check interval
(trainables.preemption.CHECK_BUDGET_S, the auto interval). A backbone whose write and
upload fit saves the step it reached; the others lose the steps since their last epoch
checkpoint (up to an epoch).

    python bench/notice.py [--upload-mib-s 200] [--backbones B0 ... Lite2] [--tables-only]

Writes ``bench/results/notice.json`` and ``notice.md``, and the table into README.md
between its ``notice-table`` markers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from searches import commit, machine, write_readme_table  # noqa: E402

# A single stream to Cloud Storage: about 200 MiB/s ("Accelerate large single file GCS
# transfers from 200 MiB/s for a single stream", beginswithdata.com, 2024-02-01:
# https://www.beginswithdata.com/2024/02/01/google-cloud-storage-max-throughput/).
UPLOAD_MIB_S = 200.0
SOURCE = "https://www.beginswithdata.com/2024/02/01/google-cloud-storage-max-throughput/"
POLL_S = 1.0  # the chart's RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S


def chart_drain_s() -> float:
    import yaml

    return float(yaml.safe_load((ROOT / "helm" / "hpsearch" / "values.yaml").read_text())["spot"]["drainSeconds"])


def measure(backbone: str, root: Path) -> dict:
    """The checkpoint a fine-tuning trial of ``backbone`` writes: its bytes and local write time."""
    import keras

    from trainables import backbones
    from trainables.checkpoint import CheckpointState, save_checkpoint
    from trainables.model import ModelSpec, build_model, set_phase
    from trainables.params import Hyperparams
    from trainables.spec import DataConfig, RecipeConfig, TrialSpec

    hp = Hyperparams(backbone=backbone, cutout_fraction=0.25, cutout_count=1, dropout=0.2, warmup_epochs=1,
                     max_lr=0.001, unfreeze_fraction=1.0)
    spec = ModelSpec(hp, 10, weights="none", image_size=None)
    model = build_model(spec)
    set_phase(model, "finetune", spec)
    optimizer = keras.optimizers.SGD(learning_rate=0.001, momentum=0.9)
    optimizer.build(model.trainable_variables)
    trial = TrialSpec(DataConfig(), RecipeConfig(weights="none"), hp)
    directory = root / backbone
    started = time.perf_counter()
    save_checkpoint(directory, model, optimizer, CheckpointState(trial, 3, "finetune", {}, step=100, sums=(1.0, 1.0)))
    seconds = time.perf_counter() - started
    size = sum(f.stat().st_size for f in directory.iterdir())
    shutil.rmtree(directory)
    keras.backend.clear_session()
    return {"backbone": backbone, "resolution": backbones.input_resolution(backbone), "params": model.count_params(),
            "checkpoint_mib": size / 2**20, "local_write_s": seconds}


def table(rows: list[dict], budget_s: float, rate: float) -> str:
    lines = [f"| backbone | px | checkpoint (MiB) | written here (s) | uploaded at {rate:g} MiB/s (s) | "
             f"within {budget_s:g} s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['resolution']} | {r['checkpoint_mib']:.0f} | {r['local_write_s']:.1f} | "
                     f"{r['upload_s']:.1f} | "
                     f"{'yes' if r['fits'] else 'no: loses the steps since its last epoch checkpoint'} |")
    return "\n".join(lines)


def write_tables(md: str) -> None:
    (ROOT / "bench" / "results" / "notice.md").write_text(md + "\n")
    write_readme_table("notice-table", md)


def main() -> None:
    from trainables.backbones import BACKBONES
    from trainables.preemption import CHECK_BUDGET_S

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upload-mib-s", type=float, default=UPLOAD_MIB_S)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--tables-only", action="store_true",
                        help="rewrite notice.md and the README's table from notice.json, measuring nothing")
    args = parser.parse_args()
    results = ROOT / "bench" / "results"
    if args.tables_only:
        saved = json.loads((results / "notice.json").read_text())
        write_tables(table(saved["backbones"], saved["budget_s"], saved["upload_mib_s"]))
        return
    budget_s = chart_drain_s() - POLL_S - CHECK_BUDGET_S
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            row = measure(backbone, Path(tmp))
            row["upload_s"] = row["checkpoint_mib"] / args.upload_mib_s
            row["fits"] = row["local_write_s"] + row["upload_s"] <= budget_s
            print(json.dumps(row), flush=True)
            rows.append(row)
    md = table(rows, budget_s, args.upload_mib_s)
    (results / "notice.json").write_text(json.dumps({
        "commit": commit(), "machine": machine(), "upload_mib_s": args.upload_mib_s, "upload_source": SOURCE,
        "drain_s": chart_drain_s(), "poll_s": POLL_S, "check_s": CHECK_BUDGET_S, "budget_s": budget_s,
        "backbones": rows}, indent=2) + "\n")
    write_tables(md)
    print(md)


if __name__ == "__main__":
    main()
