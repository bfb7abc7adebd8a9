"""Runs of several stages in one command: each stage a full trainer config, trained in turn.

A two-stage family (a first-stage autoencoder, then a generative model in its latent) is
one experiment: ``config.stages`` names the stages in order and ``config.<name>`` holds each
stage's config. Every other top-level key (the data: ``dataset``, ``manual_dir``, ...) is
shared: it overrides that key in every stage, so ``--config.dataset=folder`` moves both
stages. Stage k trains in ``WORKDIR/<name>`` with ``first_stage_workdir`` set to the stage
before it; rerunning the command resumes whichever stage was in progress (a finished
stage is a no-op). ``WORKDIR/stages.json`` names the final stage, so ``t2i sample``,
``t2i compare`` and ``t2i evaluate`` take ``WORKDIR`` itself (``resolve_run_dir``).
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from t2i_jax import configs
from t2i_jax.errors import UserError

STAGES_FILE = "stages.json"


def stage_configs(config: ml_collections.ConfigDict,
                  workdir: str | Path) -> list[tuple[str, ml_collections.ConfigDict, Path]]:
  """(name, config, workdir) of each stage, each later stage reading the one before it."""
  workdir = Path(workdir).expanduser()
  out = []
  previous = None
  shared = configs.shared_stage_keys(config)  # stage configs are sub-dicts; the rest is shared
  for name in config.stages:
    if name not in config:
      raise UserError(f"config.stages names {name!r}, but the config has no {name!r} entry.")
    stage = ml_collections.ConfigDict(config[name].to_dict())
    for key in shared:
      if key not in stage:
        raise UserError(f"config.{key} is shared by the stages, but stage {name!r} has no "
                        f"such key; set it under config.{name} instead.")
      stage[key] = config[key]
    if previous is not None:
      stage.first_stage_workdir = str(previous)
    out.append((name, stage, workdir / name))
    previous = workdir / name
  return out


def train_stages(config: ml_collections.ConfigDict, workdir: str | Path):
  """Trains every stage of ``config`` in order under ``workdir``; returns the last state."""
  # pylint: disable-next=import-outside-toplevel
  from t2i_jax.train.loop import train_and_evaluate, validate
  workdir = Path(workdir).expanduser()
  stages = stage_configs(config, workdir)
  for _, stage, _ in stages:  # a bad stage-2 setting fails now, not after stage 1's minutes
    validate(stage)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / STAGES_FILE).write_text(json.dumps(
      {"stages": [name for name, _, _ in stages], "final": stages[-1][0]}, indent=2) + "\n")
  state = None
  for i, (name, stage, stage_dir) in enumerate(stages):
    print(f"stage {i + 1}/{len(stages)}: {name} ({stage.model}) in {stage_dir}")
    state = train_and_evaluate(stage, stage_dir)
  return state


def resolve_run_dir(workdir: str | Path) -> Path:
  """The folder of the run to sample from: ``workdir``, or its final stage's folder."""
  path = Path(workdir).expanduser()
  stages = path / STAGES_FILE
  if stages.is_file() and not (path / "checkpoints").is_dir():
    try:
      return path / json.loads(stages.read_text())["final"]
    except (ValueError, KeyError) as e:
      raise UserError(f"{stages} is damaged ({type(e).__name__}); point --workdir at a "
                      f"stage's folder instead, e.g. {path / 'stage2'}.") from None
  if not (path / "checkpoints").is_dir():
    inner = sorted(p.name for p in path.iterdir() if (p / "checkpoints").is_dir())
    if inner:  # a copied run that lost its stages.json: name the stages, not "train first"
      raise UserError(f"{path} holds the runs {', '.join(inner)} but no {STAGES_FILE} "
                      f"naming the final one; point --workdir at one of them, e.g. "
                      f"{path / inner[-1]}.")
  return path


__all__ = ["STAGES_FILE", "resolve_run_dir", "stage_configs", "train_stages"]
