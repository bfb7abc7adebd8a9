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
