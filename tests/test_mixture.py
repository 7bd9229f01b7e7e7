"""The training-data mixture: family frequencies follow the weights, draws are reproducible, bad records are
skipped and counted, and the full-pass mode visits every record once per epoch."""

import numpy as np
import pytest

from gsva.data.mixture import PAPER_FAMILY_WEIGHTS, FullPassDataset, MixtureDataset, MixtureError


class Records:
    def __init__(self, name, n, bad=()):
        self.name, self.n, self.bad = name, n, set(bad)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.bad:
            raise ValueError(f"corrupt record {i}")
        return (self.name, i)


def _families():
    return {"sem_seg": [Records("ade20k", 50), Records("cocostuff", 70)], "refer_seg": [Records("refcoco", 30)],
            "vqa": [Records("llava", 40)], "reason_seg": [Records("reasonseg", 10)]}


@pytest.mark.slow
def test_family_frequencies_follow_the_paper_weights():
    mix = MixtureDataset(_families(), PAPER_FAMILY_WEIGHTS, length=20000, seed=1)
    counts = {}
    for i in range(len(mix)):
        family, _, _ = mix.draw(i)
        counts[family] = counts.get(family, 0) + 1
    total = sum(PAPER_FAMILY_WEIGHTS.values())
    for family, weight in PAPER_FAMILY_WEIGHTS.items():
        assert counts[family] / len(mix) == pytest.approx(weight / total, abs=0.01), (family, counts)
    sem = [mix.draw(i)[1] for i in range(len(mix)) if mix.draw(i)[0] == "sem_seg"]
    assert np.mean(sem) == pytest.approx(0.5, abs=0.03)  # datasets uniform within a family


def test_draws_are_reproducible_and_seeded():
    a = MixtureDataset(_families(), PAPER_FAMILY_WEIGHTS, length=100, seed=3)
    b = MixtureDataset(_families(), PAPER_FAMILY_WEIGHTS, length=100, seed=3)
    c = MixtureDataset(_families(), PAPER_FAMILY_WEIGHTS, length=100, seed=4)
    order = list(range(100))
    shuffled = list(np.random.default_rng(0).permutation(100))  # another worker/process split asks in another order
    assert [a[i] for i in order] == [dict(zip(shuffled, [b[i] for i in shuffled]))[i] for i in order]
    assert [a[i] for i in order] != [c[i] for i in order]


def test_bad_records_are_skipped_and_counted():
    families = {"vqa": [Records("llava", 5, bad={0, 1, 2})], "refer_seg": [Records("refcoco", 5)]}
    mix = MixtureDataset(families, {"vqa": 1.0, "refer_seg": 1.0}, length=200, seed=0)
    items = [mix[i] for i in range(200)]
    assert all(i not in (0, 1, 2) for name, i in items if name == "llava")
    assert mix.failures > 0
    hopeless = MixtureDataset({"vqa": [Records("llava", 2, bad={0, 1})]}, {"vqa": 1.0}, length=3, max_retries=4)
    with pytest.raises(MixtureError, match="5 consecutive records failed"):
        hopeless[0]


def test_misconfigured_mixtures_are_errors():
    with pytest.raises(MixtureError, match="name different sets"):
        MixtureDataset({"vqa": [Records("a", 1)]}, {"vqa": 1.0, "sem_seg": 2.0}, length=1)
    with pytest.raises(MixtureError, match="needs a weight > 0"):
        MixtureDataset({"vqa": [Records("a", 1)]}, {"vqa": 0.0}, length=1)
    with pytest.raises(MixtureError, match="empty one"):
        MixtureDataset({"vqa": [Records("a", 0)]}, {"vqa": 1.0}, length=1)


def test_full_pass_visits_every_record_once_per_epoch():
    data = FullPassDataset([Records("grefcoco", 7), Records("refcoco", 5)], seed=2)
    first = [data[i] for i in range(len(data))]
    assert sorted(first) == sorted([("grefcoco", i) for i in range(7)] + [("refcoco", i) for i in range(5)])
    data.set_epoch(1)
    second = [data[i] for i in range(len(data))]
    assert sorted(second) == sorted(first) and second != first
    data.set_epoch(0)
    assert [data[i] for i in range(len(data))] == first
