"""The command line of experiment modules: ``python -m experiments.X --workdir W [--config.k=v]``."""

from __future__ import annotations

import gc
import inspect
import shlex
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

import ml_collections

from t2i_jax import configs
from t2i_jax.errors import UserError
from t2i_jax.train.loop import train_and_evaluate
from t2i_jax.train.signals import TrainingInterrupted
from t2i_jax.train.stages import train_stages


def split_workdir(argv: Sequence[str]) -> tuple[str, list[str]]:
  """(the value of --workdir, the other arguments); a UserError when it is missing."""
  rest, workdir = [], None
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--workdir":
      if i + 1 >= len(argv):
        raise UserError("--workdir needs a folder: --workdir runs/NAME.")
      workdir = argv[i + 1]
      i += 2
      continue
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    else:
      rest.append(arg)
    i += 1
  if not workdir:
    raise UserError("--workdir is required: the folder for checkpoints and metrics "
                    "(rerun with the same one to resume).")
  return workdir, rest


def command_line() -> str:
  """This process's command as typed, for the resume hint."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  head = ["python", "-m", spec.name] if spec is not None else [Path(sys.argv[0]).name]
  return shlex.join(head + sys.argv[1:])


def print_help(get_config: Callable[[], ml_collections.ConfigDict]) -> None:
  module = get_config.__module__
  if module == "__main__":
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name if spec is not None else sys.argv[0]
  print(f"usage: python -m {module} --workdir DIR [--config.KEY=VALUE ...]\n")
  print(inspect.cleandoc(get_config.__doc__ or ""))
  print("\nconfig keys: " + ", ".join(sorted(get_config().keys())))


def run_main(body: Callable[[], object]) -> int:
  """Runs ``body`` and turns the ways a run ends into exit codes and one-line messages:
  0; 2 for a UserError (printed as one ``error:`` line); 128 + the signal number after
  SIGINT (130) or SIGTERM (143), which save a checkpoint first."""
  try:
    body()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except TrainingInterrupted as e:
    print(f"interrupted by {e}, checkpoint saved; resume with the same command: "
          f"{command_line()}", file=sys.stderr)
    return 128 + e.signum
  except KeyboardInterrupt:
    print("interrupted: rerun the same command to resume from the last checkpoint.",
          file=sys.stderr)
    return 130
  return 0


def main_from_module(get_config: Callable[[], ml_collections.ConfigDict],
                     argv: Sequence[str]) -> int:
  """The ``main`` of every experiment module: ``--workdir W [--config.key=value ...]``."""
  argv = list(argv)
  if any(a in ("-h", "--help") for a in argv):
    print_help(get_config)
    return 0

  def body():
    workdir, overrides = split_workdir(argv)
    config = configs.apply_overrides(get_config(), overrides)
    if "stages" in config:  # several stages, each a trainer config (train.stages)
      train_stages(config, workdir)
    else:
      train_and_evaluate(config, workdir)

  return run_main(body)


def exit_process(code: int) -> NoReturn:
  """``sys.exit(code)`` for an experiment's ``__main__``, without the interpreter's final
  garbage collection: over TensorFlow's and JAX's objects it took 1-1.5 s of every command
  on the AMD VM. Run, checkpoints and writers are closed by then; atexit handlers and
  reference-counted finalisers still run, and only cyclic garbage is left to the OS."""
  gc.freeze()
  sys.exit(code)


__all__ = ["command_line", "exit_process", "main_from_module", "print_help", "run_main",
           "split_workdir"]
