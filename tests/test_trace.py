"""Tracing one unit (mnist_lab.lab.trace): for every block type and preset, the trace's sum + bias
(+ BatchNorm, + shortcut) is the network's own value at random units (borders and padding too);
the receptive field is the analytic one and nothing outside it moves the unit; the max-pool keeps
exactly the unit torch keeps; top-k is the brute-force top-k and is computed once; and the Inspect
page's "Trace a unit" tab shows the numbers in English and Chinese."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from streamlit.testing.v1 import AppTest

from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.lab import inspection as ir
from mnist_lab.lab import trace as tr
from mnist_lab.nets.blocks.base import BLOCK_TYPES
from mnist_lab.nets.model import ModelConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.weights import SavedRun
from mnist_lab.training.loop import TrainConfig

PAGE = str(Path(__file__).resolve().parents[1] / "app_pages" / "inspect.py")


def loaded(cfg: ModelConfig, seed: int = 0, permutation: torch.Tensor | None = None) -> ir.LoadedRun:
    """A run as the Inspect page loads one, with random weights and BatchNorm statistics far from
    (0, 1), so BatchNorm's scale and shift matter."""
    from mnist_lab.nets.model import build_model

    torch.manual_seed(seed)
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(-2, 2)
            m.bias.data.uniform_(-1, 1)
    data = DataConfig(permute_pixels=permutation is not None)
    return ir.rebuild(SavedRun(f"r{seed}", cfg, TrainConfig(), data, model.state_dict(), permutation, "finished",
                               None))


def small(block) -> ModelConfig:
    return ModelConfig(conv_channels=(), blocks=(block,), in_channels=2, image_size=12)


CONFIGS = {
    **{f"{name}-{i}": small(b) for name, cls in BLOCK_TYPES.items() for i, b in enumerate(cls.examples())},
    **{f"k{k}-{pad}{'-bn' if bn else ''}{'-lab5' if lab5 else ''}":
       ModelConfig(conv_channels=(3, 4), kernel_size=k, padding=pad, batch_norm=bn, pool_before_relu=lab5)
       for k in (3, 5, 7) for pad in ("valid", "same") for bn in (False, True) for lab5 in (False, True)
       if not (bn and lab5 and k != 5)},
    "k4-same": ModelConfig(conv_channels=(3, 4), kernel_size=4, padding="same"),  # torch pads 1 before, 2 after
    "gap-head": ModelConfig(conv_channels=(4,), kernel_size=3, padding="same", head="gap"),
    # every CNN preset but VGG16 (its ConvStages with BatchNorm are above) and plain-small (resnet-small
    # without shortcuts: the residual examples without one are above)
    **{name: p.model for name, p in PRESETS.items() if p.model.kind == "cnn" and name not in ("vgg16-cifar",
                                                                                           "plain-small")},
}


def pre_activation_of(run: ir.LoadedRun, x: torch.Tensor, layer: tr.ConvLayer) -> torch.Tensor:
    """Independently of trace.py's own forward: the unit's value before ReLU (after BatchNorm and a
    residual block's shortcut), from the modules."""
    out = x
    for name, child in run.model.named_children():
        if name != layer.path[0]:
            out = child(out)
            continue
        if len(layer.path) == 1:
            out = child(out)
            nxt = dict(run.model.named_children())[layer.pre_path[0]]
            return nxt(out) if nxt is not child else out
        a = child.bn1(child.conv1(out))
        if layer.path[1] == "conv1":
            return a
        b = child.bn2(child.conv2(F.relu(a)))
        return b + child.shortcut(out[:, :, ::child.stride, ::child.stride]) if child.use_shortcut else b
    raise AssertionError(layer)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's own note on k4-same
@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_traced_sum_is_the_networks_own_value(name):
    cfg = CONFIGS[name]
    run = loaded(cfg)
    rng = np.random.default_rng(1)
    x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    layers = tr.conv_layers(run)
    assert len(layers) == cfg.conv_layers + (cfg.head == "gap")
    with torch.inference_mode():
        for layer in layers:
            pre = pre_activation_of(run, x, layer)[0]
            c, h, w = pre.shape
            units = {(0, 0, 0), (c - 1, h - 1, w - 1), (0, h - 1, 0)}  # corners: padding read there
            units |= {(int(rng.integers(c)), int(rng.integers(h)), int(rng.integers(w))) for _ in range(3)}
            if len(layers) > 4:  # a deep net: fewer units per layer (each trace runs the net up to it)
                units = {(0, 0, 0), (int(rng.integers(c)), int(rng.integers(h)), int(rng.integers(w)))}
            for ch, y, x_ in sorted(units):
                t = tr.trace(run, x, layer.name, ch, y, x_)
                assert t.agrees, (layer.name, t.total, t.network)
                assert t.total == pytest.approx(float(t.products.sum()) + t.bias, abs=1e-4)
                assert t.pre_activation == pytest.approx(float(pre[ch, y, x_]), rel=1e-4, abs=1e-4), layer.name
                assert t.patch.shape == t.kernel.shape == (layer.in_channels, layer.kernel, layer.kernel)
                assert (t.patch[:, t.padded] == 0).all()  # zero padding reads 0
                kinds = [s.kind for s in t.steps]
                assert kinds[:len(layer.after)] == list(layer.after)[:len(kinds)]
                if layer.padding and (y, x_) == (0, 0):
                    assert t.padded[0, 0]
                for step in t.steps:
                    if isinstance(step, tr.BatchNormStep):
                        assert step.after == pytest.approx(step.network, rel=1e-4, abs=1e-4)
                        assert step.after == pytest.approx(step.before * step.scale + step.shift, abs=1e-6)
                    if isinstance(step, tr.ReluStep):
                        assert step.after == pytest.approx(max(step.before, 0.0), rel=1e-4, abs=1e-4)


def test_every_block_type_is_traced():
    traced = {type(b).__name__ for name, cfg in CONFIGS.items() for b in cfg.stages()}
    assert traced == {cls.__name__ for cls in BLOCK_TYPES.values()}
    kinds = {s for cfg in CONFIGS.values() for layer in tr.conv_layers(loaded(cfg)) for s in layer.after}
    assert kinds == {"bn", "shortcut", "relu", "pool"}
    sizes = {layer.kernel for cfg in CONFIGS.values() for layer in tr.conv_layers(loaded(cfg))}
    assert {1, 3, 5, 7} <= sizes


def test_a_residual_blocks_shortcut_is_added_before_its_relu():
    for shortcut_kind, block in (("identity", 0), ("projection", 1)):
        cfg = small(BLOCK_TYPES["residual"](4 if block == 0 else 8, stride=1 + block))
        cfg = dataclasses.replace(cfg, in_channels=4)
        run = loaded(cfg, seed=3)
        x = torch.randn(1, 4, 12, 12)
        t = tr.trace(run, x, "res1.conv2", 1, 2, 3)
        [bn, shortcut, relu] = t.steps
        assert shortcut.projection == (shortcut_kind == "projection")
        assert shortcut.before == pytest.approx(bn.after) and relu.before == pytest.approx(bn.after + shortcut.added)
        with torch.inference_mode():
            assert relu.after == pytest.approx(float(run.model.res1(x)[0, 1, 2, 3]), abs=1e-5)
        if shortcut_kind == "identity":
            assert shortcut.added == pytest.approx(float(x[0, 1, 2, 3]))


def test_the_receptive_field_is_the_analytic_one_and_nothing_outside_it_counts():
    run = loaded(PRESETS["lab5"].model)
    sizes = {layer.name: tr.receptive_size([*layer.before, layer.geometry]) for layer in tr.conv_layers(run)}
    assert sizes == {"conv1": 5, "conv2": 14}  # 5; 5 + (2-1)*1 + (5-1)*2
    assert tr.field_growth([*tr.find_layer(run, "conv2").before, (5, 1, 0)]) == [1, 5, 6, 14]
    res = loaded(PRESETS["resnet-small"].model)
    assert tr.receptive_size([*tr.find_layer(res, "res6.conv2").before, (3, 1, 1)]) == 53
    for name, cfg in (("lab5", PRESETS["lab5"].model), ("k5-same-bn", CONFIGS["k5-same-bn"]),
                      ("residual-1", CONFIGS["residual-1"])):
        run = loaded(cfg)
        for layer in tr.conv_layers(run):
            x = torch.randn(1, cfg.in_channels, cfg.image_size, cfg.image_size, requires_grad=True)
            pre = pre_activation_of(run, x, layer)[0]
            c, h, w = pre.shape
            for y, x_ in ((0, 0), (h // 2, w // 3), (h - 1, w - 1)):
                t = tr.trace(run, x.detach(), layer.name, 0, y, x_)
                top, left, bottom, right = t.box
                assert bottom - top + 1 == right - left + 1 == t.field_size, name
                (grad,) = torch.autograd.grad(pre[0, y, x_], x, retain_graph=True)
                touched = grad[0].abs().amax(dim=0) > 0
                assert not (touched & ~torch.from_numpy(t.field_mask)).any(), (name, layer.name)  # inside the box
                if not layer.before:  # the first convolution: exactly the (clipped) box
                    assert torch.equal(touched, torch.from_numpy(t.field_mask)), (name, layer.name)


def test_the_pool_keeps_the_unit_torch_keeps_and_drops_the_odd_row():
    for preset in ("lab5", "tiny-cnn"):  # pool before ReLU (Lab 5), ReLU then pool
        run = loaded(PRESETS[preset].model, seed=4)
        x = torch.randn(1, 1, 28, 28)
        for layer in tr.conv_layers(run):
            pooled_index = list(layer.after).index("pool")
            before_pool = pre_activation_of(run, x, layer)
            if pooled_index == 1:  # ReLU first
                before_pool = F.relu(before_pool)
            _, idx = F.max_pool2d(before_pool, 2, return_indices=True)
            h, w = before_pool.shape[-2:]
            for ch in range(2):
                for y, x_ in ((0, 0), (0, 1), (1, 0), (1, 1), (h - 1, w - 2)):
                    pool = next(s for s in tr.trace(run, x, layer.name, ch, y, x_).steps
                                if isinstance(s, tr.PoolStep))
                    assert pool.kept == (int(idx[0, ch, y // 2, x_ // 2]) == y * w + x_), (preset, layer.name, y, x_)
                    assert pool.after == pytest.approx(pool.network)
    odd = loaded(ModelConfig(conv_channels=(3,), kernel_size=4), seed=5)  # 28 - 3 = 25: row 24 has no window
    pool = next(s for s in tr.trace(odd, torch.randn(1, 1, 28, 28), "conv1", 0, 24, 3).steps
                if isinstance(s, tr.PoolStep))
    assert pool.window is None and not pool.kept


def test_a_permuted_run_says_so_and_maps_the_field_back_to_the_digit():
    perm = torch.randperm(28 * 28, generator=torch.Generator().manual_seed(0))
    run = loaded(PRESETS["lab5"].model, permutation=perm)
    t = tr.trace(run, torch.randn(1, 1, 28, 28), "conv1", 0, 10, 12)
    assert t.permuted and t.box == (10, 12, 14, 16)
    shuffled = np.zeros(28 * 28, dtype=bool)
    shuffled.reshape(28, 28)[10:15, 12:17] = True
    original = np.zeros(28 * 28, dtype=bool)
    original[perm.numpy()[shuffled]] = True  # shuffled pixel j came from original pixel perm[j]
    assert np.array_equal(t.field_mask.reshape(-1), original) and t.field_mask.sum() == 25


def test_a_unit_outside_the_map_or_a_wrong_layer_is_refused_in_one_line():
    run = loaded(PRESETS["lab5"].model)
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ConfigError, match="'fc1' is not a convolution of this network; choose one of: conv1, conv2"):
        tr.trace(run, x, "fc1", 0, 0, 0)
    with pytest.raises(ConfigError) as refused:
        tr.trace(run, x, "conv2", 0, 8, 0)
    assert str(refused.value) == ("Unit (0, 8, 0) is outside the 20×8×8 feature map of conv2: pick a channel 0 to "
                                  "19, a row 0 to 7 and a column 0 to 7.")
    with pytest.raises(ConfigError, match=r"Unit \(10, 0, 0\) is outside the 10×24×24 feature map of conv1"):
        tr.trace(run, x, "conv1", 10, 0, 0)
    assert tr.conv_layers(loaded(PRESETS["tiny-fc"].model)) == []


@pytest.mark.parametrize("cfg", [ModelConfig(conv_channels=(4, 6), kernel_size=3, batch_norm=True),
                                 ModelConfig(conv_channels=(4, 6), kernel_size=5, pool_before_relu=True)])
def test_top_k_is_the_brute_force_top_k_and_is_computed_once(cfg):
    run = loaded(cfg, seed=6)
    images = torch.randint(0, 256, (24, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    cache = tr.ExcitationCache()
    for layer in tr.conv_layers(run):
        name = layer.pre_path[0]  # the feature maps' own name of the map before ReLU: conv2, or bn2
        brute = np.stack([next(m.maps for m in ir.feature_maps(run, ir.network_input(run, img.numpy()))
                               if m.name == name) for img in images])  # (N, C, H, W)
        best = brute.reshape(len(images), layer.out_channels, -1).max(axis=2)
        for ch in (0, layer.out_channels - 1):
            units = tr.top_units(run, images, layer.name, ch, k=5, cache=cache)
            expected = np.argsort(-best[:, ch], kind="stable")[:5]
            assert [u.index for u in units] == expected.tolist()
            for u in units:
                assert u.value == pytest.approx(best[u.index, ch], rel=1e-4, abs=1e-5)
                assert brute[u.index, ch, u.y, u.x] == pytest.approx(u.value, rel=1e-4, abs=1e-5)
                top, left, bottom, right = u.box
                assert u.patch.shape == (1, min(bottom, 27) - max(top, 0) + 1, min(right, 27) - max(left, 0) + 1)
                assert np.array_equal(u.patch[0], images[u.index, max(top, 0):bottom + 1, max(left, 0):right + 1])
    assert cache.computed == len(tr.conv_layers(run))  # one pass per convolution, whichever channels were asked
    tr.top_units(run, images, "conv1", 1, cache=cache)
    assert cache.computed == len(tr.conv_layers(run))
    with pytest.raises(ConfigError, match="Channel must be 0 to 3 for conv1"):
        tr.top_units(run, images, "conv1", 4, cache=cache)


def test_a_deep_network_searches_the_first_test_images_that_fit_the_budget(monkeypatch):
    """The search's cost is counted (two operations per multiply-add, up to the convolution); a
    network whose 10,000 images would not fit the budget searches the first ones that do, in whole
    steps and never fewer than the minimum, and its top k are the top k among those images."""
    run = loaded(ModelConfig(conv_channels=(4, 6), kernel_size=3), seed=3)
    x = torch.zeros(1, 1, 28, 28)
    conv1, conv2 = tr.conv_layers(run)
    out1, out2 = (tr.pre_activations(run, x, layer) for layer in (conv1, conv2))
    first = 2 * out1.numel() * 1 * 9
    assert tr.flops_to(run, "conv1") == first
    assert tr.flops_to(run, "conv2") == first + 2 * out2.numel() * 4 * 9
    assert tr.searched_images(run, "conv2", 10_000) == 10_000  # the default budget: all of them

    per_image = tr.flops_to(run, "conv2")
    monkeypatch.setattr(tr, "SEARCH_BUDGET_FLOPS", per_image * 1_234)
    assert tr.searched_images(run, "conv2", 10_000) == 1_000  # whole steps of 500
    assert tr.searched_images(run, "conv2", 800) == 800
    monkeypatch.setattr(tr, "SEARCH_BUDGET_FLOPS", per_image * 10)
    assert tr.searched_images(run, "conv2", 10_000) == tr.SEARCH_MIN_IMAGES
    assert tr.searched_images(run, "conv2", tr.SEARCH_MIN_IMAGES - 50) == tr.SEARCH_MIN_IMAGES - 50

    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    some = tr.top_units(run, images, "conv2", 2, k=4, cache=None, searched=25)
    assert [u.index for u in some] == [u.index for u in tr.top_units(run, images[:25], "conv2", 2, k=4, cache=None)]
    assert all(u.index < 25 for u in some)


# ------------------------------------------------------------------------ the page

@pytest.fixture(scope="module")
def stored(tmp_path_factory, mnist_raw):
    """A store with one tiny Lab-5 run (256 training images, 1 epoch, 200 test images)."""
    from mnist_lab.data.datasets import prepare_data
    from mnist_lab.lab.experiments import run_single
    from mnist_lab.runs.recorder import Recorder
    from mnist_lab.runs.store import ResultStore

    db = tmp_path_factory.mktemp("trace") / "results.sqlite"
    ids = {}
    for permuted in (False, True):
        data_cfg = DataConfig(train_limit=256, test_limit=200, permute_pixels=permuted)
        ids[permuted] = run_single(PRESETS["lab5"].model, TrainConfig(epochs=1), data_cfg,
                                   record=Recorder(ResultStore(db)), data=prepare_data(data_cfg, raw=mnist_raw)).run_id
    return db, ids


@pytest.mark.parametrize("lang, permuted", [("en", False), ("zh_CN", True)])
def test_the_trace_tab_shows_the_sum_and_the_networks_value(lang, permuted, stored, monkeypatch):
    from test_i18n import english_left, texts

    db, ids = stored
    run_id = ids[permuted]
    monkeypatch.setenv("MNIST_LAB_DB", str(db))
    searched = None  # en: the Lab-5 net searches all 200 test images; zh_CN: a budget cut to the first 100
    if lang == "zh_CN":
        monkeypatch.setattr(tr, "SEARCH_MIN_IMAGES", 50)
        monkeypatch.setattr(tr, "SEARCH_STEP", 50)
        monkeypatch.setattr(tr, "flops_to", lambda run, layer: 1)  # 1 FLOP an image: 120 fit, 100 in steps of 50
        monkeypatch.setattr(tr, "SEARCH_BUDGET_FLOPS", 120)
        searched = 100
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.query_params.update(run=run_id, lang=lang)
    at.session_state["_lang"] = lang
    at.run()
    assert not at.exception, at.exception
    at.selectbox(key="insp_tr_layer").set_value("conv2").run()
    at.number_input(key="insp_tr_channel").set_value(3).run()
    at.slider(key="insp_tr_y").set_value(2).run()
    at.slider(key="insp_tr_x").set_value(5).run()
    assert not at.exception, at.exception
    from mnist_lab.runs.store import ResultStore

    loaded_run = ir.load_run(ResultStore(db), run_id)
    x_test, _ = ir.evaluated_images(loaded_run)
    t = tr.trace(loaded_run, ir.network_input(loaded_run, x_test[0].numpy()), "conv2", 3, 2, 5)
    shown = "\n".join(m.value for m in at.markdown) + "\n".join(s.value for s in at.success)
    assert f"{t.total:.4f}" in shown and f"{t.network:.4f}" in shown and f"{t.bias:.4f}" in shown
    assert len(at.get("plotly_chart")) >= 6  # the map, the field, patch, kernel, products, the pool's window
    at.button(key="insp_tr_find").click().run()
    assert not at.exception, at.exception
    units = tr.top_units(loaded_run, x_test, "conv2", 3, searched=searched)
    captions = [c for image in at.get("image") for c in image.captions]
    best = f"#{units[0].index}{'：' if lang == 'zh_CN' else ': '}{units[0].value:.4f}"
    assert any(c.startswith(best) for c in captions), (best, captions)
    field_words = " ".join(c.value for c in at.caption)
    assert ("打乱后图像中 14×14 的方框" in field_words) == permuted  # conv2: 5 + 1 + 4 × 2
    said = "查找范围：200 张测试图像中的前 100 张" if lang == "zh_CN" else "Searched: all 200 test images."
    assert any(c.value.startswith(said) for c in at.caption), field_words
    if lang == "zh_CN":
        assert "网络自己算出" in shown
        mine = [(where, text) for where, text in texts(at) if english_left(text)]
        assert not mine, mine
    else:
        assert "The network computed" in shown
