"""Search results: a table (CSV + Markdown), plots (PNG) and ``best.yaml``.

Rows come from keras-tuner's ``trial_*/trial.json`` (hyperparameters, score, status,
message) and our attempt records ``trial_*/attempts/*.json`` (seconds, epochs, the
worker that ran it, the failure reason). Everything goes through ``tf.io.gfile``.

Written under ``<search_dir>``::

    results/trials.csv, results/trials.md      trial, status, objective, epochs,
                                               seconds, hyperparameters, worker, reason
    results/objective_vs_learning_rate.png     (and _vs_max_seq_length, _vs_batch_size)
    results/best_so_far.png                    best objective after each finished trial
    best.yaml                                  the best trial and its TrainConfig

For ``task: speaker_clustering`` the objective is ``val_ari``, the budget column is
``steps`` (not epochs), the plots are against learning_rate, lam, sigma and window
(those in the space),
and ``best.yaml`` names the best trial's trained model dir and its ClusterConfig
(:func:`kt_pipeline.speaker_tuning.best_doc`).

Example:

>>> from kt_pipeline import tuning_results
>>> rows = tuning_results.load_rows("runs/tune/demo/kt")                # doctest: +SKIP
>>> print(tuning_results.markdown_table(rows, "val_accuracy")[:60])    # doctest: +SKIP
| trial | status | val_accuracy | epochs | seconds | learning_rate
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Optional

import yaml

from kt_pipeline.search_config import SPEAKER_TASK

PLOT_KEYS = ("learning_rate", "max_seq_length", "batch_size")
LOG_KEYS = ("learning_rate",)


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _read_json(path: str) -> Optional[dict]:
    gf = _gfile()
    if not gf.exists(path):
        return None
    try:
        with gf.GFile(path, "r") as f:
            return json.loads(f.read())
    except ValueError:
        return None  # a record being written right now


def _write(path: str, data: bytes | str) -> None:
    from kt_pipeline.models import clear_for_overwrite

    gf = _gfile()
    parent = path.rsplit("/", 1)[0]
    gf.makedirs(parent)
    clear_for_overwrite(path)
    with gf.GFile(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def load_attempts(trial_dir: str) -> list[dict]:
    """The attempt records of one trial, oldest first."""
    gf = _gfile()
    adir = _join(trial_dir, "attempts")
    if not gf.isdir(adir):
        return []
    recs = [_read_json(_join(adir, n)) for n in gf.listdir(adir) if n.endswith(".json")]
    return sorted((r for r in recs if r), key=lambda r: r.get("started", 0))


def load_rows(project_dir: str) -> list[dict]:
    """One dict per trial, in trial-id order: keras-tuner state + attempt records."""
    from kt_pipeline.tuning import failure_reason

    gf = _gfile()
    if not gf.isdir(project_dir):
        return []
    rows = []
    for name in sorted(n.rstrip("/") for n in gf.listdir(project_dir)):
        if not name.startswith("trial_"):
            continue
        state = _read_json(_join(project_dir, name, "trial.json"))
        if not state:
            continue
        values = dict(state["hyperparameters"].get("values") or {})
        attempts = load_attempts(_join(project_dir, name))
        finished = [a for a in attempts if "ended" in a]
        last = finished[-1] if finished else (attempts[-1] if attempts else {})
        status = state.get("status")
        if status in ("RUNNING", "IDLE") and last.get("status") in ("FAILED", "INVALID",
                                                                     "COMPLETED"):
            status = last["status"]  # the search stopped before keras-tuner saved the trial
        # the epochs it ran: early stopping may end a Hyperband trial before tuner/epochs
        epochs = last.get("final_epoch")
        if epochs is None:
            epochs = values.get("tuner/epochs")
        reason = ""
        if status in ("FAILED", "INVALID"):
            reason = last.get("reason") or failure_reason(state.get("message"))
        rows.append({
            "trial": state["trial_id"],
            "status": status,
            "objective": state.get("score"),
            # a speaker trial records its best training step itself (keras-tuner: 0)
            "best_step": last.get("best_step", state.get("best_step")),
            # keras-tuner counts best_step from the fit's first epoch, this one
            "initial_epoch": values.get("tuner/initial_epoch", last.get("initial_epoch")),
            "epochs": epochs,
            "steps": last.get("steps"),
            "seconds": round(sum(a.get("seconds", 0) for a in finished), 1) if finished else None,
            "worker": ",".join(sorted({a["tuner_id"] for a in attempts if "tuner_id" in a})),
            "attempts": len(attempts),
            "continues": values.get("tuner/trial_id"),
            "hyperparameters": {k: v for k, v in values.items() if not k.startswith("tuner/")},
            "reason": reason,
        })
    # keras-tuner pads ids to len(str(max_trials)): a search continued with a larger
    # max_trials mixes "9" and "10"/"05", which sort wrongly as text
    return sorted(rows, key=lambda r: (0, int(r["trial"]), "") if str(r["trial"]).isdigit()
                  else (1, 0, str(r["trial"])))


def completed(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["status"] == "COMPLETED" and _finite(r["objective"])]


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def best_row(rows: list[dict], direction: str = "max") -> Optional[dict]:
    """The completed trial with the best objective (ties: the earlier trial)."""
    done = completed(rows)
    if not done:
        return None
    sign = 1 if direction == "max" else -1
    return max(done, key=lambda r: (sign * r["objective"], -int(r["trial"])))


def hp_columns(rows: list[dict], order=()) -> list[str]:
    cols = [k for k in order if any(k in r["hyperparameters"] for r in rows)]
    for r in rows:
        cols += [k for k in r["hyperparameters"] if k not in cols]
    return cols


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list[dict], objective: str, order=(),
          budget: str = "epochs") -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells shared by the CSV and Markdown tables.

    ``budget`` is the column trained per trial: ``epochs`` or (speaker task) ``steps``.
    """
    hps = hp_columns(rows, order)
    header = ["trial", "status", objective, budget, "seconds", *hps, "continues", "worker",
              "reason"]
    body = []
    for r in rows:
        body.append([r["trial"], r["status"], _fmt(r["objective"]), _fmt(r.get(budget)),
                     _fmt(r["seconds"]), *[_fmt(r["hyperparameters"].get(k)) for k in hps],
                     r["continues"] or "", r["worker"], r["reason"]])
    return header, body


def csv_table(rows: list[dict], objective: str, order=(), budget: str = "epochs") -> str:
    header, body = table(rows, objective, order, budget)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(header)
    w.writerows(body)
    return out.getvalue()


def markdown_table(rows: list[dict], objective: str, order=(), budget: str = "epochs") -> str:
    header, body = table(rows, objective, order, budget)

    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ plots


def _savefig(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _write(path, buf.getvalue())
    return path


def plot_results(rows: list[dict], objective: str, out_dir: str, direction: str = "max",
                 keys=PLOT_KEYS, log_keys=LOG_KEYS) -> list[str]:
    """Objective vs each of ``keys`` (default learning rate / max_seq_length / batch
    size; log x axis for ``log_keys``), and best-so-far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = completed(rows)
    paths = []
    for key in keys:
        pts = [(r["hyperparameters"][key], r["objective"]) for r in done
               if isinstance(r["hyperparameters"].get(key), (int, float))]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, alpha=0.8)
            if key in log_keys and min(xs) > 0:
                ax.set_xscale("log")
            elif len(set(xs)) <= 8:
                ax.set_xticks(sorted(set(xs)))
        else:
            ax.text(0.5, 0.5, "no completed trials", ha="center", transform=ax.transAxes)
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
        ax.set_title(f"{objective} vs {key}")
        ax.grid(alpha=0.3)
        paths.append(_savefig(fig, _join(out_dir, f"objective_vs_{key}.png")))
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ordered = sorted(done, key=lambda r: int(r["trial"]))
    if ordered:
        pick = max if direction == "max" else min
        best, xs, ys = None, [], []
        for r in ordered:
            best = r["objective"] if best is None else pick(best, r["objective"])
            xs.append(int(r["trial"]))
            ys.append(best)
        ax.step(xs, ys, where="post", label="best so far")
        ax.scatter(xs, [r["objective"] for r in ordered], s=12, alpha=0.6, label="trial")
        ax.legend(loc="lower right" if direction == "max" else "upper right")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"best {objective} so far")
    ax.grid(alpha=0.3)
    paths.append(_savefig(fig, _join(out_dir, "best_so_far.png")))
    plt.close(fig)
    return paths


# --------------------------------------------------------------------- summary


def format_failures(rows: list[dict]) -> str:
    failed = [r for r in rows if r["status"] in ("FAILED", "INVALID")]
    return "\n".join(f"  trial {r['trial']}: {r['reason'] or 'no reason recorded'}"
                     for r in failed) or "  none"


def format_summary(results: dict) -> str:
    """What the search did, the best trial, failed trials and where the files are."""
    rows, obj = results["rows"], results["objective"]
    counts: dict = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    lines = [f"search {results['search_dir']}: {len(rows)} trial(s) ("
             + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) + ")"]
    best = results.get("best")
    if best:
        hps = ", ".join(f"{k}={_fmt(v)}" for k, v in best["hyperparameters"].items())
        when = (f"at step {best.get('best_step')} of {best.get('steps')}"
                if results.get("budget") == "steps" else f"after {best['epochs']} epoch(s)")
        lines.append(f"best: trial {best['trial']} {obj}={best['objective']:.4f} {when}: {hps}")
        if best.get("model_dir"):
            lines.append(f"best model: {best['model_dir']} (kt-pipeline cluster evaluate "
                         f"--model-dir {best['model_dir']})")
    else:
        lines.append("best: no completed trial yet")
    if any(r["status"] in ("FAILED", "INVALID") for r in rows):
        lines.append("failed trials:\n" + format_failures(rows))
    lines.append(f"table: {results['table_md']} (and {results['table_csv']})")
    lines.append("plots: " + ", ".join(results["plots"]))
    if results.get("best_yaml"):
        lines.append(f"best hyperparameters: {results['best_yaml']}")
    return "\n".join(lines)


def best_epochs(row: dict, max_epochs: int) -> int:
    """Epochs up to the best one, counted from the start: keras-tuner's best_step is the
    0-based epoch of this trial's own fit, which a Hyperband continuation starts at
    ``initial_epoch`` (on the weights of the trial it continues)."""
    step = row.get("best_step")
    if isinstance(step, (int, float)) and step >= 0:
        start = int(row.get("initial_epoch") or 0)
        return max(1, min(start + int(step) + 1, int(max_epochs)))
    return int(row.get("epochs") or max_epochs)


def write_results(cfg, project_dir: str) -> dict:
    """Write the table, plots and best.yaml for a search; return paths, rows and best."""
    from kt_pipeline.training import monitor_mode
    from kt_pipeline.tuning import best_train_config

    objective = cfg.tuner.objective
    direction = monitor_mode(objective)
    speaker = cfg.task == SPEAKER_TASK
    budget = "steps" if speaker else "epochs"
    rows = load_rows(project_dir)
    out = _join(cfg.search_dir, "results")
    order = list(cfg.space)
    table_csv, table_md = _join(out, "trials.csv"), _join(out, "trials.md")
    _write(table_csv, csv_table(rows, objective, order, budget))
    _write(table_md, f"# Search {cfg.name}: trials\n\nobjective: {objective} ({direction})\n\n"
           + markdown_table(rows, objective, order, budget))
    if speaker:
        from kt_pipeline import speaker_tuning

        keys = [k for k in speaker_tuning.PLOT_KEYS if k in cfg.space]
        log_keys = [k for k, p in cfg.space.items() if p.sampling == "log"]
        plots = plot_results(rows, objective, out, direction, keys, log_keys)
    else:
        plots = plot_results(rows, objective, out, direction)
    best = best_row(rows, direction)
    best_yaml = _join(cfg.search_dir, "best.yaml")
    if best and speaker:
        doc = speaker_tuning.best_doc(cfg, best, direction)
        best = {**best, "model_dir": doc["model_dir"]}
        _write(best_yaml, yaml.safe_dump(doc, sort_keys=False))
    elif best:
        best = {**best, "epochs": best_epochs(best, cfg.tuner.max_epochs)}
        train_cfg = best_train_config(cfg, best)
        doc = {
            "search": cfg.name,
            "trial": best["trial"],
            "objective": {"name": objective, "direction": direction,
                          "value": float(best["objective"])},
            "epochs": best["epochs"],
            "hyperparameters": best["hyperparameters"],
            "train_config": train_cfg.to_dict(),
        }
        _write(best_yaml, yaml.safe_dump(doc, sort_keys=False))
    return {"search_dir": cfg.search_dir, "objective": objective, "rows": rows,
            "best": best, "table_csv": table_csv, "table_md": table_md, "plots": plots,
            "best_yaml": best_yaml if best else None, "budget": budget}
