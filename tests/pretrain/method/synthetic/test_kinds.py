"""Each synthetic kind (pretrain/method/synthetic/*.py) against its definition: a float64 loop over
queries and points, fed the draws the kind made (recorded), with SynCo's gradient kinds taken by
autograd as their paper writes them; each closed form against the explicit points, values and
gradients; and MoCHi's numbers against the algorithm as it was before the family existed."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pretrain.method import mochi
from pretrain.method.mixing import Mixing
from pretrain.method.synthetic import registry
from pretrain.method.synthetic.hardset import HardSet
from pretrain.run import config

B, K, D, N = 5, 48, 10, 12


class Recording(HardSet):
    """A hard set that keeps every draw it hands out, in order."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.drawn, self._inside = [], False

    def positions(self, size, fewer=0):
        self._inside = True  # under the oracle, positions are drawn through rand
        out = super().positions(size, fewer)
        self._inside = False
        self.drawn.append(out)
        return out

    def rand(self, *shape):
        out = super().rand(*shape)
        if not self._inside:
            self.drawn.append(out)
        return out

    def randn(self, *shape):
        out = super().randn(*shape)
        self.drawn.append(out)
        return out


def setup(seed=0, oracle=False):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, D, generator=g), dim=1)
    queue = F.normalize(torch.randn(K, D, generator=g), dim=1)
    removed = (torch.rand(B, K, generator=g) < 0.8) if oracle else None
    if oracle:
        removed[0] = True  # a query with no negative left: it makes nothing
        removed[1, :] = True
        removed[1, 3] = False  # one kept entry: no pair, one source for the others
    return q, queue, removed


def recording(q, queue, removed, seed=1):
    base = HardSet.of(q, queue, N, torch.Generator().manual_seed(seed), removed=removed)
    return Recording(base.index, base.N, base.count, base.generator)


def grad_n(q, n):
    """d(q . n)/dn at n, by autograd (float64)."""
    n = n.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((q * n).sum(), n)
    return g


def source(queue, hard, b, pos):
    return queue[hard.index[b, pos]].double()


# The kinds' definitions, one point at a time, in float64: (query, queue, hard set, b, k, draws,
# params) -> the point, from the draws in the order the kind's module documents.
def pair_mix(q, queue, hard, b, k, d, p):
    pi, pj, a = d[0][b, k], d[1][b, k], d[2][b, k, 0].double()
    j = pj + (pj >= pi)
    assert j != pi
    return F.normalize(a * source(queue, hard, b, pi) + (1 - a) * source(queue, hard, b, j), dim=0)


def query_mix(q, queue, hard, b, k, d, p):
    bb = 0.5 * d[1][b, k, 0].double()
    assert 0 <= bb < 0.5
    return F.normalize(bb * q[b].double() + (1 - bb) * source(queue, hard, b, d[0][b, k]), dim=0)


def noise(q, queue, hard, b, k, d, p):
    e = p["sigma"] * d[1][b, k].double()
    return F.normalize(source(queue, hard, b, d[0][b, k]) + e, dim=0)


def extrapolate(q, queue, hard, b, k, d, p):
    beta = 1 + d[1][b, k, 0].double() * (p["extrap_max"] - 1)
    assert 1 <= beta < p["extrap_max"] or p["extrap_max"] == 1
    qb = q[b].double()
    return F.normalize(qb + beta * (source(queue, hard, b, d[0][b, k]) - qb), dim=0)


def gradient(q, queue, hard, b, k, d, p):
    n = source(queue, hard, b, d[0][b, k])
    return F.normalize(n + p["delta"] * grad_n(q[b].double(), n), dim=0)


def adversarial(q, queue, hard, b, k, d, p):
    n = source(queue, hard, b, d[0][b, k])
    return F.normalize(n + p["eta"] * grad_n(q[b].double(), n).sign(), dim=0)


def reweight(q, queue, hard, b, k, d, p):
    return source(queue, hard, b, d[0][b, k])


DEFINITIONS = {"s": pair_mix, "s_prime": query_mix, "s_noise": noise, "s_extrap": extrapolate,
               "s_grad": gradient, "s_adv": adversarial, "s_reweight": reweight}
PARAMS = {"sigma": 0.2, "extrap_max": 1.8, "delta": 0.3, "eta": 0.05}  # away from the defaults


def params_of(name):
    return {p.name: PARAMS[p.name] for p in registry.KINDS[name].params}


def test_every_kind_has_a_definition_here():
    assert set(DEFINITIONS) == set(registry.COUNTS)


@pytest.mark.parametrize("oracle", [False, True], ids=["plain", "oracle"])
@pytest.mark.parametrize("name", registry.COUNTS)
def test_each_kind_equals_its_definition(name, oracle):
    """Every point of every query, from the draws the kind made; under the oracle a point the query
    cannot make is zero (a pair needs two kept entries, the others one)."""
    q, queue, removed = setup(oracle=oracle)
    hard = recording(q, queue, removed)
    n = 7
    got = registry.module(name).points(q, queue, hard, n, **params_of(name))
    assert got.shape == (B, n, D) and got.dtype == torch.float32 and not got.requires_grad
    need = registry.KINDS[name].sources
    for b in range(B):
        count = N if hard.count is None else int(hard.count[b])
        for k in range(n):
            if count < need:
                assert torch.equal(got[b, k], torch.zeros(D)), (b, k)
                continue
            want = DEFINITIONS[name](q, queue, hard, b, k, hard.drawn, params_of(name))
            torch.testing.assert_close(got[b, k].double(), want, rtol=0, atol=1e-6)
            # its sources are the query's kept hard set
            assert (hard.drawn[0][b, k] < count).all()


@pytest.mark.parametrize("oracle", [False, True], ids=["plain", "oracle"])
@pytest.mark.parametrize("name", [k for k in registry.COUNTS if hasattr(registry.module(k), "logits")])
def test_each_closed_form_equals_its_points_in_value_and_gradient(name, oracle):
    q, queue, removed = setup(seed=3, oracle=oracle)
    q = q.requires_grad_(True)
    l_neg = q @ queue.T
    mod, n = registry.module(name), 9
    closed = mod.logits(q, queue, l_neg, recording(q.detach(), queue, removed, seed=2), n, **params_of(name))
    explicit = mochi.logits_of(q, mod.points(q.detach(), queue, recording(q.detach(), queue, removed, seed=2), n,
                                             **params_of(name)))
    made = torch.isfinite(explicit)
    assert torch.equal(made, torch.isfinite(closed))
    if oracle:
        assert not made[0].any()
    torch.testing.assert_close(closed[made], explicit[made], rtol=0, atol=1e-5)
    (g_closed,) = torch.autograd.grad(closed[made].sum(), q, retain_graph=True)
    (g_explicit,) = torch.autograd.grad(explicit[made].sum(), q)
    torch.testing.assert_close(g_closed, g_explicit, rtol=0, atol=1e-5)


def test_the_loss_takes_every_kind_in_the_registry_s_order_with_closed_forms_where_it_says():
    """``synthetic_logits`` (what the loss trains on) equals the explicit points' logits for the same
    draws, kind after kind, and leaves the generator where ``synthesize`` leaves it."""
    q, queue, removed = setup(seed=5, oracle=True)
    q = q.requires_grad_(True)
    m = Mixing(N, 3, 4, 5, 6, 7, 8, 9, **PARAMS)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    loss_side = mochi.synthetic_logits(q, queue, m, g1, l_neg=q @ queue.T, removed=removed)
    explicit = mochi.logits_of(q, mochi.synthesize(q, queue, m, g2, removed=removed))
    assert loss_side.shape == (B, m.synthetic) and torch.equal(g1.get_state(), g2.get_state())
    made = torch.isfinite(explicit)
    assert torch.equal(made, torch.isfinite(loss_side))
    torch.testing.assert_close(loss_side[made], explicit[made], rtol=0, atol=1e-5)


def test_the_registry_s_order_puts_mochi_first_and_closed_forms_last():
    """MoCHi's kinds draw first (its runs are what they were), and the kinds the loss builds points
    for come before those it computes in closed form (``synthetic_logits`` appends them after)."""
    kinds = list(registry.KINDS.values())
    assert [k.name for k in kinds[:2]] == ["s", "s_prime"] and registry.MOCHI == ("s", "s_prime")
    closed = [k.closed_form for k in kinds]
    assert closed == sorted(closed)
    for k in kinds:
        assert k.closed_form <= hasattr(registry.module(k.name), "logits"), k.name


def test_the_settings_have_one_field_per_count_and_parameter_in_the_registry_s_order():
    fields = [f.name for f in dataclasses.fields(Mixing)]
    assert fields == ["N", *registry.COUNTS, *(p.name for p in registry.PARAMS)]
    for f in fields:
        assert getattr(config.MochiCfg(), f) == getattr(Mixing(), f), f
    assert {f.name for f in dataclasses.fields(config.MochiCfg)} == {*fields, "mix_start", "mix_stop"}


def test_extrapolation_makes_easier_negatives_than_its_sources():
    """SynCo's type 2 moves a point beyond its source, away from the query: q . h < q . n for every
    source less similar to q than q itself, here 0.60 -> 0.45 at beta 1.25."""
    q = torch.tensor([[1.0, 0.0]])
    n = torch.tensor([[0.6, 0.8]])
    h = F.normalize(q + 1.25 * (n - q), dim=1)
    assert (q * h).sum().item() == pytest.approx(0.447, abs=1e-3)
    q, queue, _ = setup(seed=7)
    hard = recording(q, queue, None)
    points = registry.module("s_extrap").points(q, queue, hard, 20)
    sources = queue[hard.index.gather(1, hard.drawn[0])]
    assert (torch.einsum("bd,bnd->bn", q, points) < torch.einsum("bd,bnd->bn", q, sources) + 1e-6).all()
    # the gradient kinds move toward the query
    for name in ("s_grad", "s_adv"):
        hard = recording(q, queue, None)
        points = registry.module(name).points(q, queue, hard, 20, **params_of(name))
        sources = queue[hard.index.gather(1, hard.drawn[0])]
        assert (torch.einsum("bd,bnd->bn", q, points) > torch.einsum("bd,bnd->bn", q, sources)).all(), name


def before_the_family(q, queue, N, s, s_prime, generator, l_neg, removed):
    """MoCHi's points as ``pretrain.method.mochi.synthesize`` made them before the registry, its
    operations in their order: the reference of the bit-identity check."""
    B_ = q.shape[0]
    q, queue = q.detach().float(), queue.detach().float()
    count = None
    if removed is not None:
        l_neg = (q @ queue.T if l_neg is None else l_neg).masked_fill(removed, float("-inf"))
        count = (~removed).sum(dim=1, keepdim=True).clamp(max=N)
    hard = l_neg.topk(N, dim=1, sorted=False).indices.sort(dim=1).values
    if removed is not None:
        hard = hard.gather(1, removed.gather(1, hard).int().argsort(dim=1, stable=True))

    def positions(size, fewer=0):
        if count is None:
            return torch.randint(0, N - fewer, (B_, size), generator=generator)
        high = (count - fewer).clamp(min=1)
        u = torch.rand(B_, size, generator=generator)
        return torch.minimum((u * high).long(), high - 1)

    def made(points, needed):
        return points if count is None else points.masked_fill((count < needed)[:, :, None], 0.0)

    parts = []
    if s > 0:
        pi = positions(s)
        pj = positions(s, fewer=1)
        pj = pj + (pj >= pi).long()
        ni, nj = queue[hard.gather(1, pi)], queue[hard.gather(1, pj)]
        a = torch.rand(B_, s, 1, generator=generator)
        parts.append(made(F.normalize(a * ni + (1 - a) * nj, dim=-1), 2))
    if s_prime > 0:
        pj = positions(s_prime)
        nj = queue[hard.gather(1, pj)]
        b = 0.5 * torch.rand(B_, s_prime, 1, generator=generator)
        parts.append(made(F.normalize(b * q[:, None, :] + (1 - b) * nj, dim=-1), 1))
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("oracle", [False, True], ids=["plain", "oracle"])
@pytest.mark.parametrize("s,s_prime", [(8, 0), (0, 5), (8, 5)])
def test_mochi_is_bit_identical_to_before_the_family(s, s_prime, oracle):
    """For the same seed, MoCHi's points, the logits the loss trains on and their gradient are the
    same bits as before the kinds became a registry."""
    q, queue, removed = setup(seed=11, oracle=oracle)
    q = q.requires_grad_(True)
    l_neg = q @ queue.T
    m = Mixing(N, s, s_prime)
    want = before_the_family(q, queue, N, s, s_prime, torch.Generator().manual_seed(9), l_neg.detach(), removed)
    want_logits = torch.einsum("bd,bsd->bs", q, want).masked_fill(~want.any(dim=-1), float("-inf"))
    assert torch.equal(mochi.synthesize(q, queue, m, torch.Generator().manual_seed(9), l_neg=l_neg.detach(),
                                        removed=removed), want)
    got_logits = mochi.synthetic_logits(q, queue, m, torch.Generator().manual_seed(9), l_neg=l_neg, removed=removed)
    assert torch.equal(got_logits, want_logits)
    finite = torch.isfinite(want_logits)
    (g_want,) = torch.autograd.grad(want_logits[finite].sum(), q, retain_graph=True)
    (g_got,) = torch.autograd.grad(got_logits[finite].sum(), q)
    assert torch.equal(g_got, g_want)
