"""The one definition of plain MoCo v2, and how runs and tables name what they train."""

import pytest

from pretrain.method.loss import Loss
from pretrain.method.mixing import Mixing
from pretrain.method.objective import Objective


@pytest.mark.parametrize("N,s,sp,plain,label", [
    (0, 0, 0, True, "MoCo v2"),
    (64, 0, 0, True, "MoCo v2"),  # N alone selects nothing to mix: the step is MoCo v2's
    (64, 8, 0, False, "MoCHi (64, 8, 0)"),
    (64, 0, 4, False, "MoCHi (64, 0, 4)"),
    (1024, 1024, 128, False, "MoCHi (1024, 1024, 128)"),
])
def test_the_one_definition_of_plain_moco_and_its_names(N, s, sp, plain, label):
    o = Objective(mixing=Mixing(N, s, sp))
    assert o.is_plain_moco is plain
    assert o.label == label
    assert o.method == ("mocov2" if plain else "mochi")
    assert o.slug == ("mocov2" if plain else f"mochi-N{N}-s{s}-sp{sp}")


@pytest.mark.parametrize("loss, mixing, method, label, slug", [
    (Loss("debiased", 0.1), Mixing(), "debiased", "debiased (Chuang et al., tau+ 0.1)", "debiased-tp0.1"),
    (Loss("hcl", 0.1, 1.0), Mixing(), "hcl", "HCL (beta 1.0, tau+ 0.1)", "hcl-b1-tp0.1"),
    (Loss("hcl", 0.1, 1.0), Mixing(64, 0, 0), "hcl", "HCL (beta 1.0, tau+ 0.1)", "hcl-b1-tp0.1"),
    (Loss("hcl", 0.05, 0.5), Mixing(1024, 1024, 128), "hcl+mochi",
     "HCL (beta 0.5, tau+ 0.05) + MoCHi (1024, 1024, 128)", "hcl-b0.5-tp0.05_mochi-N1024-s1024-sp128"),
])
def test_other_losses_are_not_plain_moco_and_are_named_in_words(loss, mixing, method, label, slug):
    o = Objective(loss, mixing)
    assert not o.is_plain_moco and (o.method, o.label, o.slug) == (method, label, slug)


@pytest.mark.parametrize("loss, mixing", [
    (Loss("debiased", 0.0), Mixing()), (Loss("hcl", 0.0, 0.0), Mixing(64, 0, 0)), (Loss("ring"), Mixing()),
])
def test_a_loss_that_reduces_to_infonce_without_synthetic_points_is_plain_moco_under_its_own_name(loss, mixing):
    """Debiased at tau+ 0, HCL at beta 0 and tau+ 0, a ring holding every negative: MoCo v2's step
    (one setting with it in a grid), though its label still says what was asked."""
    o = Objective(loss, mixing)
    assert o.is_plain_moco and o.reduced == Objective() and o.label == loss.label
