"""The four lab presets train exactly as before the week-2 refactor (issue 12): same seed, CPU,
plain engine, the first 1,280 MNIST training images -> the same first ten iteration losses and
the same parameter counts as main at 925593f.

The pinned losses were produced on main at commit 925593f with torch 2.14.1 (CPU, one thread):
    prepare_data(DataConfig(train_limit=1280, test_limit=200, normalize=p.normalize))
    train(p.model, TrainConfig(epochs=1, batch_size=p.batch_size, optimizer=p.optimizer, lr=p.lr,
          momentum=p.momentum, seed=0, device="cpu", engine="plain"), data).losses[:10]
printed to 9 significant digits. A change of weight init order, batch order, layer order or the
step itself moves them by far more than the tolerance (1e-6).
"""
from __future__ import annotations

import pytest
import torch

from mnist_lab.data import datasets as data
from mnist_lab.nets.model import build_model, count_params
from mnist_lab.nets.presets import PRESETS
from mnist_lab.training.loop import TrainConfig, train

PINNED = {
    "lab5": (8490, [2.32511687, 2.2764852, 2.29883409, 2.31965852, 2.30724216, 2.30099344, 2.32282662,
                    2.26330543, 2.27318382, 2.26509714]),
    "padded-16-32": (417482, [2.30052423, 2.31018806, 2.30309534, 2.30511785, 2.30735087, 2.2900002, 2.30760074,
                              2.3071208, 2.30133033, 2.30273438]),
    "tiny-fc": (6442, [2.29550433, 2.29123783, 2.34262824, 2.28647184, 2.32645226, 2.30347276, 2.23707104,
                       2.26151776, 2.23862696, 2.24604201]),
    "tiny-cnn": (6422, [2.31949687, 2.30802631, 2.32080674, 2.29449534, 2.30340362, 2.30123496, 2.30900002,
                        2.30235648, 2.29791784, 2.32120228]),
}


@pytest.fixture(scope="module")
def one_thread():
    """The pins were taken on one thread: more threads may add in another order (~5e-7 apart)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", PINNED)
def test_lab_presets_train_exactly_as_before(name, mnist_raw, one_thread):
    params, losses = PINNED[name]
    p = PRESETS[name]
    assert count_params(p.model) == count_params(build_model(p.model)) == params
    prepared = data.prepare_data(data.DataConfig(train_limit=1280, test_limit=200, normalize=p.normalize),
                                 device="cpu", raw=mnist_raw)
    cfg = TrainConfig(epochs=1, batch_size=p.batch_size, optimizer=p.optimizer, lr=p.lr, momentum=p.momentum,
                      seed=0, device="cpu", engine="plain")
    result = train(p.model, cfg, prepared)
    assert result.engine == "plain"
    assert result.losses[:10] == pytest.approx(losses, abs=1e-6, rel=0)
