"""A finished search as one self-contained HTML page plus its plots as PNG files.

Contents: every trial's learning curve coloured by backbone, with the epochs where ASHA
stopped trials marked; validation accuracy against each searched parameter; parameter
importance from Optuna's evaluator on a study rebuilt from the trials; the ensemble
table when `hpsearch ensemble` has run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from search.config import SpaceConfig, config_from_dict
from search.layout import CONFIG_JSON, ENSEMBLE_DIR, HISTORY_PARQUET, REPORT_DIR, TRIALS_PARQUET
from search.layout import ENSEMBLE_TABLE_MD as TABLE_MD
from search.results import latest_per_epoch
from search.space import distributions
from trainables import backbones
from trainables.errors import HpsearchError
from trainables.params import PARAMS
from trainables.storage import Location

log = logging.getLogger(__name__)


def backbone_colour(name: str) -> str:
    """A fixed colour per backbone of the registry (matplotlib's tab20 cycle)."""
    import matplotlib

    names = list(backbones.BACKBONES)
    if name not in names:
        return "black"
    return matplotlib.colors.to_hex(matplotlib.colormaps["tab20"](names.index(name) % 20))


class ReportError(HpsearchError):
    """The report cannot be made; the message says why."""


@dataclass
class Experiment:
    trials: list[dict[str, Any]]
    history: Any  # pandas DataFrame
    space: SpaceConfig
    ensemble_table: str | None


def read_experiment(location: Location, experiment: str) -> Experiment:
    fs = location.filesystem
    exists = location.exists
    trials_path = location.join(experiment, TRIALS_PARQUET)
    if not exists(trials_path):
        raise ReportError(
            f"{location.uri}/{experiment} has no {TRIALS_PARQUET}: the search has not finished "
            "(run `hpsearch run --resume`), or this is not an experiment directory"
        )
    trials = pq.read_table(trials_path, filesystem=fs).to_pylist()
    history = pq.read_table(location.join(experiment, HISTORY_PARQUET), filesystem=fs).to_pandas()
    config_path = location.join(experiment, CONFIG_JSON)
    if not exists(config_path):
        raise ReportError(f"{location.uri}/{experiment} has no {CONFIG_JSON}: not an hpsearch experiment directory")
    with fs.open_input_stream(config_path) as handle:
        space = config_from_dict(json.loads(handle.read())).space
    table_path = location.join(experiment, ENSEMBLE_DIR, TABLE_MD)
    table = None
    if exists(table_path):
        with fs.open_input_stream(table_path) as handle:
            table = handle.read().decode()
    return Experiment(trials=trials, history=history, space=space, ensemble_table=table)


# ---------------------------------------------------------------------------- importance


def importances(trials: list[dict[str, Any]], space: SpaceConfig) -> dict[str, float]:
    """Optuna's default importance evaluator (fANOVA) on a study rebuilt from the trials.

    A constant axis (low == high, or one backbone) has no importance and is left out; a
    trial whose values lie outside the declared space (a config changed between resumes)
    is left out with a warning. Importance is a share of the variance of the scores, so it
    is undefined (empty) with fewer than two trials or when every trial scored the same
    (a search whose trials all stayed at chance, say).
    """
    import optuna

    dists = {k: v for k, v in distributions(space).items() if not v.single()}
    study = optuna.create_study(direction="maximize")
    for t in trials:
        value = t["best_val_accuracy"]
        if value is None or value != value:
            continue
        outside = [k for k, d in dists.items() if not d._contains(d.to_internal_repr(t[k]))]
        if outside:
            log.warning("importance: trial %s lies outside the declared space in %s; left out", t["trial_id"], outside)
            continue
        study.add_trial(
            optuna.trial.create_trial(params={k: t[k] for k in dists}, distributions=dists, value=float(value))
        )
    if len({t.value for t in study.trials}) < 2 or not dists:
        return {}
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


# ---------------------------------------------------------------------------- plots


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_learning_curves(exp: Experiment) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    stopped = {t["trial_id"] for t in exp.trials if t["stopped_early"]}
    diverged = {t["trial_id"] for t in exp.trials if t.get("diverged")}  # tables from before the column: none
    seen = set()
    for trial_id, curve in exp.history.groupby("trial_id"):
        curve = latest_per_epoch(curve)  # an epoch trained again after a restart: its last report
        backbone = curve["backbone"].iloc[0]
        colour = backbone_colour(backbone)
        ax.plot(curve["epoch"], curve["val_accuracy"], color=colour, alpha=0.8,
                label=backbone if backbone not in seen else None)
        seen.add(backbone)
        if trial_id in stopped or trial_id in diverged:
            last = curve.iloc[-1]
            ax.scatter([last["epoch"]], [last["val_accuracy"]], marker="x" if trial_id in stopped else "v", s=60,
                       color=colour, zorder=3)
    ax.scatter([], [], marker="x", color="black", label="stopped by ASHA")
    ax.scatter([], [], marker="v", color="black", label="diverged")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    data = _png(fig)
    plt.close(fig)
    return data


def plot_anytime(exp: Experiment) -> bytes:
    """Best validation accuracy so far against the epochs the whole search has trained,
    with the epochs where ASHA stopped a trial marked."""
    import matplotlib.pyplot as plt

    from search.results import anytime_curve

    fig, ax = plt.subplots(figsize=(8, 4))
    if "timestamp" in exp.history:
        curve = anytime_curve(exp.history, {t["trial_id"] for t in exp.trials if t["stopped_early"]})
        ax.step(curve.epochs, curve.best, where="post", color="black", label="best so far")
        for i, stop in enumerate(curve.stops):
            ax.axvline(stop, color="tab:red", alpha=0.4, linewidth=1, label="ASHA stopped a trial" if i == 0 else None)
        ax.legend(loc="lower right")
    else:  # a search written before epochs were timestamped
        ax.text(0.5, 0.5, "no epoch timestamps in history.parquet", ha="center", transform=ax.transAxes)
    ax.set_xlabel("epochs trained by the whole search")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title("What the search bought")
    ax.grid(alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    return data


# How a trial ended, as each panel marks it: (marker, legend label).
ENDINGS = {"finished": ("o", "finished"), "stopped": ("x", "stopped by ASHA (accuracy at its last rung)"),
           "diverged": ("v", "diverged")}


def ending(trial: dict[str, Any]) -> str:
    if trial.get("diverged"):
        return "diverged"
    return "stopped" if trial["stopped_early"] else "finished"


def searched_params(space: SpaceConfig) -> list:
    """The parameters the space searches: those it fixes (low == high, one backbone) are
    not among them."""
    dists = distributions(space)
    return [p for p in PARAMS if p.name in dists and not dists[p.name].single()]


def plot_params(exp: Experiment) -> bytes:
    """Best validation accuracy against every searched parameter, one panel each (a
    parameter the space fixes gets none); the marker says how the trial ended."""
    import matplotlib.pyplot as plt

    searched = searched_params(exp.space)
    columns = 3
    rows = max(1, -(-len(searched) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(11, 3 * rows), squeeze=False)
    for ax in axes.flat[len(searched):]:
        ax.set_visible(False)
    for ax, param in zip(axes.flat, searched):
        for name, (marker, label) in ENDINGS.items():
            shown = [t for t in exp.trials if t.get(param.name) is not None and ending(t) == name]
            ax.scatter([t[param.name] for t in shown], [t["best_val_accuracy"] for t in shown], marker=marker,
                       c=[backbone_colour(t["backbone"]) for t in shown], label=label)
        if getattr(getattr(exp.space, param.config_name), "log", False):
            ax.set_xscale("log")
        ax.set_xlabel(param.name)
        ax.set_ylabel("best val accuracy")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker=m, linestyle="", color="black", label=label) for m, label in ENDINGS.values()]
    fig.legend(handles=handles, loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Validation accuracy against each searched parameter (colour: backbone)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    data = _png(fig)
    plt.close(fig)
    return data


def plot_importance(values: dict[str, float]) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(values)[::-1]
    ax.barh(names, [values[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("Parameter importance" if values else "Parameter importance: undefined (fewer than 2 distinct scores)")
    data = _png(fig)
    plt.close(fig)
    return data


# ---------------------------------------------------------------------------- page


def _trials_html(trials: list[dict[str, Any]]) -> str:
    columns = ["trial_id", *(p.name for p in PARAMS), "epochs_run", "stopped_early", "diverged", "best_val_accuracy"]
    head = "".join(f"<th>{c}</th>" for c in columns)
    rows = []
    for t in sorted(trials, key=lambda t: -(t["best_val_accuracy"] or 0)):
        cells = []
        for c in columns:
            v = t.get(c)
            cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _markdown_table_html(markdown: str) -> str:
    lines = [l for l in markdown.strip().splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    body = [[c.strip() for c in l.strip("|").split("|")] for l in lines[2:]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f'<table id="ensemble-table"><tr>{head}</tr>{rows}</table>'


def render_html(title: str, plots: dict[str, bytes], importance: dict[str, float], exp: Experiment) -> str:
    def img(name: str, alt: str) -> str:
        encoded = base64.b64encode(plots[name]).decode()
        return f'<img id="{name.removesuffix(".png")}" alt="{alt}" src="data:image/png;base64,{encoded}">'

    best = max((t for t in exp.trials if t["best_val_accuracy"] == t["best_val_accuracy"]),
               key=lambda t: t["best_val_accuracy"], default=None)
    summary = (
        f"{len(exp.trials)} trials, {sum(t['stopped_early'] for t in exp.trials)} stopped early by ASHA, "
        f"{sum(bool(t.get('diverged')) for t in exp.trials)} diverged; "
        f"best validation accuracy {best['best_val_accuracy']:.4f} ({best['backbone']}, trial {best['trial_id']})"
        if best else f"{len(exp.trials)} trials"
    )
    importance_list = "".join(f"<li>{html.escape(k)}: {v:.3f}</li>" for k, v in importance.items())
    ensemble = (
        _markdown_table_html(exp.ensemble_table)
        if exp.ensemble_table
        else '<p id="ensemble-table">No ensemble yet: run <code>hpsearch ensemble EXPERIMENT</code>.</p>'
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}img{{max-width:100%}}</style></head>
<body><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>
<h2>What the search bought</h2>{img("anytime.png", "best accuracy so far against epochs spent")}
<h2>Learning curves</h2>{img("learning_curves.png", "learning curves")}
<h2>Accuracy against the searched parameters</h2>{img("accuracy_vs_params.png", "accuracy against parameters")}
<h2>Parameter importance</h2>{img("param_importance.png", "parameter importance")}<ul>{importance_list}</ul>
<h2>Ensemble</h2>{ensemble}
<h2>Trials</h2>{_trials_html(exp.trials)}
</body></html>
"""


def make_report(location: Location, experiment: str) -> dict[str, str]:
    """Write report/index.html and the PNGs into the experiment; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    exp = read_experiment(location, experiment)
    importance = importances(exp.trials, exp.space)
    plots = {
        "anytime.png": plot_anytime(exp),
        "learning_curves.png": plot_learning_curves(exp),
        "accuracy_vs_params.png": plot_params(exp),
        "param_importance.png": plot_importance(importance),
    }
    fs = location.filesystem
    directory = location.join(experiment, REPORT_DIR)
    fs.create_dir(directory, recursive=True)
    written = {}
    for name, data in plots.items():
        with fs.open_output_stream(f"{directory}/{name}") as out:
            out.write(data)
        written[name] = f"{directory}/{name}"
    page = render_html(f"hpsearch: {experiment}", plots, importance, exp)
    with fs.open_output_stream(f"{directory}/index.html") as out:
        out.write(page.encode())
    written["index.html"] = f"{directory}/index.html"
    return written
