"""The substituting sampler's order (integrations/window.py): a permutation, cached samples
first within the window, each sample at most window-1 places from its permutation place;
and a model trained in that order converges like one trained in the plain order."""
from __future__ import annotations

import random

import pytest

from fluidcache.integrations.window import Window, simulate


def _perm(n: int, seed: int) -> list[int]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


@pytest.mark.parametrize("size", [1, 2, 7, 64, 500])
@pytest.mark.parametrize("pattern", ["none", "all", "half", "random", "late"])
def test_each_sample_once_and_the_bound_holds(size, pattern):
    n = 400
    order = _perm(n, size)
    rnd = random.Random(size)
    cached = {i for i in range(n) if i % 2} if pattern == "half" else set()

    def ready(i: int, step: int) -> bool:
        return {"none": False, "all": True, "half": i in cached,
                "random": rnd.random() < 0.3, "late": step > 300}[pattern]

    out = list(simulate(order, size, ready))
    assert sorted(out) == list(range(n))                       # a permutation
    place = {s: p for p, s in enumerate(order)}
    assert max(abs(q - place[s]) for q, s in enumerate(out)) <= size - 1
    if pattern in ("none", "all") or size == 1:
        assert out == order                                    # nothing to choose: as is


def test_cached_samples_come_first_within_the_window():
    order = list(range(20))
    cached = {5, 6, 7}
    out = list(simulate(order, 8, lambda i, step: i in cached))
    assert out[:3] == [5, 6, 7]               # pulled ahead, by at most 7 places
    assert out[3:] == [i for i in order if i not in cached]


def test_the_head_goes_when_overdue_however_much_else_is_ready():
    order = list(range(30))
    out = list(simulate(order, 4, lambda i, step: i != 0))   # 0 never lands
    assert out.index(0) == 3                  # 3 = window - 1 places late, no more


def test_window_take_returns_none_when_nothing_is_ready():
    w = Window([3, 1, 2], 2)
    assert w.fill() == [3, 1]
    assert w.take(lambda i: False) is None
    assert w.take(lambda i: i == 1) == 1
    assert w.fill() == [2] and w.waiting() == [3, 2]
    with pytest.raises(ValueError):
        Window([1], 0)


def test_a_model_converges_in_the_substituted_order():
    """A tiny CNN, 4 epochs on generated images of 4 classes, once in the seeded order
    and once in the window's order with half the samples "cached": final losses within
    10% of each other (and both far below the start)."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    n, classes = 512, 4
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 1, 12, 12, generator=g) * 0.5
    for c in range(classes):                  # each class a bright quadrant
        r, k = divmod(c, 2)
        x[labels == c, 0, r * 6:(r + 1) * 6, k * 6:(k + 1) * 6] += 1.0

    def train(substitute: bool) -> tuple[float, float]:
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                                    torch.nn.Linear(16, classes))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loss_fn = torch.nn.CrossEntropyLoss()
        first = last = 0.0
        for epoch in range(4):
            order = _perm(n, epoch)
            if substitute:
                cached = set(_perm(n, 100 + epoch)[: n // 2])
                order = list(simulate(order, 64, lambda i, step, c=cached: i in c))
            losses = []
            for b in range(0, n, 32):
                idx = torch.tensor(order[b:b + 32])
                loss = loss_fn(model(x[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            if epoch == 0:
                first = sum(losses[:4]) / 4
            last = sum(losses) / len(losses)
        return first, last

    (p0, plain), (s0, subst) = train(False), train(True)
    assert plain < 0.5 * p0 and subst < 0.5 * s0              # both learned
    assert abs(subst - plain) <= 0.10 * plain, (plain, subst)


def test_seeds_and_epochs_give_different_orders_and_ranks_split_the_permutation():
    from fluidcache.integrations.sampler import SubstitutingSampler

    class Data:
        paths = [f"d/{i}" for i in range(101)]

        def __len__(self):
            return len(self.paths)

    one = SubstitutingSampler(Data(), seed=1)
    two = SubstitutingSampler(Data(), seed=2)
    assert one.order() != two.order() and sorted(one.order()) == list(range(101))
    one.set_epoch(1)
    assert one.order() != SubstitutingSampler(Data(), seed=1).order()
    ranks = [SubstitutingSampler(Data(), seed=3, num_replicas=4, rank=r) for r in range(4)]
    got = sorted(i for s in ranks for i in s.order())
    assert len(got) == 4 * 26 and set(got) == set(range(101))   # padded as torch pads
