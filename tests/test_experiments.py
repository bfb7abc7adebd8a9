"""Every experiment module is runnable as documented: its get_config() builds, and its
docstring gives the command, the measured result and the run time (configs as code)."""

import importlib
import pkgutil
import re

import ml_collections
import pytest

import experiments

# Modules of experiments/ that are command-line tools with their own flags, not configs.
TOOLS = ("relayout_flickr8k_folder",)
MODULES = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__))


def test_every_module_but_the_tools_has_a_config():
  without = [name for name in MODULES
             if not hasattr(importlib.import_module(f"experiments.{name}"), "get_config")]
  assert without == list(TOOLS)


@pytest.mark.parametrize("name", [m for m in MODULES if m not in TOOLS])
def test_config_docstring_gives_command_result_and_time(name):
  get_config = importlib.import_module(f"experiments.{name}").get_config
  assert isinstance(get_config(), ml_collections.ConfigDict)
  doc = get_config.__doc__ or ""
  assert f"python -m experiments.{name}" in doc, "the command"
  assert re.search(r"Measured|Expected result", doc), "the measured result"
  assert re.search(r"\d[\d,.]*\s*(s|min|h)\b", doc), "the run time"
  assert re.search(r"VM", doc), "the machine it was measured on"



def _training_stages(name):
  config = importlib.import_module(f"experiments.{name}").get_config()
  stages = [config[s] for s in config.stages] if "stages" in config else [config]
  return [s for s in stages if "optimizer" in s]


# The modules that train (benchmarks and the Flickr8k judge have no optimizer).
TRAINING = [m for m in MODULES if m not in TOOLS and _training_stages(m)]


def test_the_training_modules_are_found():
  assert {"model1", "cvae_shapes", "flow_shapes", "quickstart"} <= set(TRAINING)


@pytest.mark.parametrize("name", TRAINING)
def test_every_training_config_builds_its_optimizer(name):
  """Each stage passes the trainer's checks (its schedule included), and its optimizer and
  optimizer_kwargs fit together (a Muon-only key left in a stage switched to AdamW fails
  here, not minutes into a run)."""
  from t2i_jax.train import loop, state  # pylint: disable=import-outside-toplevel
  for stage in _training_stages(name):
    loop.validate(stage)  # the schedule and every checked setting: one line if not
    assert state.optimizer(stage) is not None


def test_exit_process_keeps_the_exit_code_and_runs_atexit_handlers(tmp_path):
  """An experiment's __main__ ends through train.exit_process (no final garbage collection):
  its exit code and atexit handlers are those of sys.exit."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  marker = tmp_path / "atexit_ran"
  code = ("import atexit, pathlib\n"
          f"atexit.register(pathlib.Path({str(marker)!r}).write_text, 'yes')\n"
          "from t2i_jax.train import exit_process\n"
          "exit_process(3)\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=120, check=False)
  assert done.returncode == 3, done.stderr
  assert marker.read_text() == "yes"
  for name in TRAINING:
    source = importlib.util.find_spec(f"experiments.{name}").loader.get_source(
        f"experiments.{name}")
    assert "train.exit_process(main(sys.argv[1:]))" in source, name
