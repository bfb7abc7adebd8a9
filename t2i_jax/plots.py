"""Training curves from WORKDIR/metrics.jsonl, like the paper's figures 4-5.

One point per epoch and split: the train means over the epoch's steps and the test
evaluation at its end (records with scope 'epoch'). A run that stopped mid-epoch ends with
a 'final' record; it is drawn at its fractional epoch (step / steps per epoch) unless a
later record covers that epoch completely. Figures are drawn with matplotlib's Agg canvas
directly, so no GUI backend or global pyplot state is involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t2i_jax.errors import UserError

PANELS = (("loss", "loss"), ("paper_accuracy", "paper accuracy"), ("psnr", "PSNR (dB)"),
          ("v_mse", "velocity MSE"), ("caption_gain", "caption gain (v_mse_null - v_mse)"),
          ("all_stated_correct", "judge: all stated right"),
          ("r_precision", "judge: R-precision"))
SPLITS = (("train", "C0"), ("test", "C1"))
# The in-loop judge's splits (records 'judge_<split>', t2i_jax.train.judge), in these colours.
JUDGE_COLOURS = ("C2", "C3", "C4", "C5")


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
  """The records of WORKDIR/metrics.jsonl; blank or torn lines (a crash mid-write) are skipped."""
  workdir = Path(workdir).expanduser()
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist; pass the --workdir of a training run.")
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise UserError(f"no metrics.jsonl in {workdir}: train first, or pass the --workdir of "
                    "a training run.")
  out = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and {"step", "epoch", "split"} <= set(record):
      out.append(record)
  return out


def _steps_per_epoch(workdir: Path) -> int | None:
  try:
    return int(json.loads((workdir / "run.json").read_text())["steps_per_epoch"]) or None
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _model_name(workdir: Path) -> str:
  try:
    return f"{json.loads((workdir / 'config.json').read_text())['model']}: "
  except (OSError, ValueError, KeyError, TypeError):
    return ""


def epoch_curves(records: list[dict[str, Any]], spe: int | None = None
                 ) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
  """{split: {metric: (epochs, values)}} from epoch records (and a trailing partial epoch)."""
  by_split: dict[str, dict[int, dict[str, Any]]] = {}
  for r in records:
    if r.get("scope") in ("epoch", "final"):
      by_split.setdefault(r["split"], {})[int(r["step"])] = r  # a rerun's record wins
  curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
  for split, by_step in by_split.items():
    full_epochs = {int(r["epoch"]) for r in by_step.values() if r.get("scope") == "epoch"}
    last_step = max(by_step)
    points = []
    for step, r in sorted(by_step.items()):
      if r.get("scope") == "final" and (int(r["epoch"]) in full_epochs or step != last_step):
        continue  # a stop mid-epoch that a resumed run went past
      x = step / spe if spe and r.get("scope") == "final" else float(r["epoch"])
      points.append((x, r))
    for key, _ in PANELS:
      xs = [x for x, r in points if isinstance(r.get(key), (int, float))]
      ys = [float(r[key]) for x, r in points if isinstance(r.get(key), (int, float))]
      if xs:
        curves.setdefault(split, {})[key] = (xs, ys)
  return curves


def plot_curves(workdir: str | Path, out: str | Path | None = None) -> Path:
  """``t2i plot``: loss and paper accuracy (and PSNR, the in-loop judge's headline when
  logged) per epoch, as one PNG."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  from t2i_jax import sample  # pylint: disable=import-outside-toplevel
  workdir = Path(workdir).expanduser()
  records = read_metrics(workdir)
  curves = epoch_curves(records, _steps_per_epoch(workdir))
  if not curves:
    raise UserError(f"metrics.jsonl in {workdir} has no per-epoch records yet; plot again "
                    "after the first epoch.")
  panels = [(k, t) for k, t in PANELS if any(k in c for c in curves.values())]
  fig = Figure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
  judged = sorted(k for k in curves if k.startswith("judge_"))
  splits = SPLITS + tuple(zip(judged, JUDGE_COLOURS))
  for i, (key, title) in enumerate(panels):
    ax = fig.add_subplot(1, len(panels), i + 1)
    for split, colour in splits:
      if key in curves.get(split, {}):
        xs, ys = curves[split][key]
        ax.plot(xs, ys, marker="o", color=colour, label=split)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(f"{_model_name(workdir)}{workdir.name}")
  path = out or workdir / "plots" / "curves.png"
  return sample.atomic_save(lambda tmp: fig.savefig(tmp, format="png", dpi=100), path)


__all__ = ["epoch_curves", "plot_curves", "read_metrics"]
