"""The registry of losses (pretrain/method/registry.py), checked for every registered loss alike: a
new loss module is held to the same properties without a line here."""

import dataclasses
import itertools

import pytest
import torch

from ablations import spec
from pretrain.method.loss import INFONCE, Loss
from pretrain.method.registry import KINDS, PARAMS
from pretrain.run import config
from tests.pretrain.method.test_losses import TAU, logits_of


def settings(kind) -> list[Loss]:
    """Every defined loss of ``kind`` over a few values of each of its parameters (neutral included)."""
    values = [sorted({p.neutral, 0.0, 0.1, 0.5, 1.0}) for p in kind.params]
    out = []
    for combo in itertools.product(*values):
        try:
            out.append(Loss(kind.name, **dict(zip([p.name for p in kind.params], combo))))
        except ValueError:
            pass
    return out


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_each_loss_equals_what_it_reduces_to(kind):
    """Where a loss says it is a simpler one (debiased at tau+ 0 is InfoNCE, ...), its values are
    that loss's, in float64, with and without removed negatives and synthetic columns."""
    reducible = [loss for loss in settings(kind) if loss.reduced != loss]
    if kind.name != "infonce":
        assert reducible, f"{kind.name}: no setting reduces to a simpler loss"
    for loss, removed, synthetic in itertools.product(reducible, (0, 3), (0, 2)):
        logits = logits_of(B=6, M=24, seed=5, dtype=torch.float64, removed=removed)
        assert loss(logits, TAU, synthetic).item() == pytest.approx(loss.reduced(logits, TAU, synthetic).item(),
                                                                    rel=1e-9), loss
    assert INFONCE.reduced == INFONCE


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_each_loss_owns_its_parameters_and_their_ranges(kind):
    """A parameter the loss does not take is refused away from its neutral value, one it takes
    outside its range is refused naming the range, and every setting has its own label and slug."""
    for p in PARAMS:
        if p in kind.params:
            for bad in (p.low - 1.0, float("nan")) + ((p.high + 1.0,) if p.high is not None else ()):
                with pytest.raises(ValueError, match=p.name):
                    Loss(kind.name, **{p.name: bad})
        else:
            off = p.neutral + (0.1 if p.high is None or p.neutral + 0.1 <= p.high else -0.1)
            with pytest.raises(ValueError, match=f"{p.name}.*{kind.name}"):
                Loss(kind.name, **{p.name: off})
    distinct = {loss.reduced for loss in settings(kind)}
    assert len({loss.label for loss in distinct}) == len({loss.slug for loss in distinct}) == len(distinct)


def test_config_and_grid_axes_come_from_the_registry():
    """The loss: section of the config, the grid's loss axes and their short names are the
    registry's parameters, each at its neutral value by default."""
    section = {f.name: f.default for f in dataclasses.fields(config.LossCfg)}
    assert section == {"method": "infonce", **{p.name: p.neutral for p in PARAMS}}
    assert config.Config().loss.loss == INFONCE
    for p in PARAMS:
        assert spec.axis(p.name).key == f"loss.{p.name}" and spec.axis(p.name).label(0.5) == f"{p.short}0.5"
    assert spec.PLAIN_LOSS == {"method": "infonce", **{p.name: p.neutral for p in PARAMS}}
