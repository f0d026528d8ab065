"""The examples in docstrings run, as doctests, and say what the code does."""

import doctest
import re
from importlib import import_module

import pytest
import torch

from tests.conftest import REPO

# Every module with a ``>>>`` example, named here rather than collected with --doctest-modules, which
# would import every module, those needing detectron2 or DALI too.
MODULES = ["pretrain.method.infonce", "pretrain.method.mixing", "pretrain.method.mochi", "pretrain.method.objective", "pretrain.run.config",
           "pretrain.run.sameness", "pretrain.method.registry", "pretrain.method.loss",
           "pretrain.method.synthetic.registry"]


@pytest.mark.parametrize("name", MODULES)
def test_the_examples_run(name):
    with torch.random.fork_rng():  # an example's random inputs leave the other tests' generator alone
        result = doctest.testmod(import_module(name))
    assert result.attempted > 0 and result.failed == 0


def test_every_module_with_an_example_is_listed():
    found = sorted(".".join(p.relative_to(REPO).with_suffix("").parts)
                   for top in ("pretrain", "ablations", "slurm", "transfer") for p in (REPO / top).rglob("*.py")
                   if re.search(r"^\s*>>> ", p.read_text(), re.MULTILINE))
    assert found == sorted(MODULES)
