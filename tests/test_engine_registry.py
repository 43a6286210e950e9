"""The engine registry (training/engines.py) is the one place that names engines and picks one:
every engine says why it cannot run on a device type it does not support, 'auto' and the
stacking rules are answered by the registry, an engine added there trains with no other change,
no other module compares engine names, and the step body (forward, loss, backward, optimiser
step) is written once: the counter machinery that CUDA graphs and stacks use gives the plain
step's losses bit for bit on the CPU."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from mnist_lab.nets.model import ModelConfig
from mnist_lab.nets.presets import cnn_config, get_preset
from mnist_lab.training import engines, native
from mnist_lab.training.cuda_graph import GraphStep
from mnist_lab.training.loop import TrainConfig, train, train_many
from mnist_lab.training.stacked import StackedModel, StackedStep
from mnist_lab.training.step import PlainEngine, PlainStep, fast_memory_format, init_model, make_optimizer

ROOT = Path(__file__).resolve().parents[1]
LAB5 = get_preset("lab5").model
CPU, CUDA = torch.device("cpu"), torch.device("cuda")
DEVICES = {"cpu": CPU, "cuda": CUDA}


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "lr": 0.01, "momentum": 0.5, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def data500(tiny_data):
    """500 images: 7 batches of 64 and a short one of 52."""
    return dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:500], y_train=tiny_data.y_train[:500])


# ------------------------------------------------------------------------- what each engine says

@pytest.mark.parametrize("name", list(engines.REGISTRY))
def test_every_engine_says_why_it_cannot_run_on_a_device_it_does_not_support(name):
    engine = engines.REGISTRY[name]
    assert engine.name == name and engine.devices and set(engine.devices) <= set(DEVICES)
    for device_type, device in DEVICES.items():
        reason = engine.can_run(LAB5, cfg(), device, alone=False)
        if device_type in engine.devices:
            assert reason != engine.wrong_device  # (cpu-native may still lack its compiler: another reason)
        else:
            assert isinstance(reason, str) and reason and reason == engine.wrong_device


def test_a_stacking_engine_says_a_lone_run_has_nothing_to_stack_with():
    stacking = [e for e in engines.REGISTRY.values() if e.stacks]
    assert [e.name for e in stacking] == ["stacked"]
    for engine in stacking:
        assert "two or more seeds" in engine.can_run(LAB5, cfg(), CPU, alone=True)
        assert engine.can_run(LAB5, cfg(), CPU, alone=False) is None


def test_auto_and_the_lone_stacked_run_are_resolved_by_the_registry():
    assert engines.select(LAB5, cfg(engine="auto"), CUDA) == engines.Choice(engines.REGISTRY["cuda-graph"], None)
    # a lone run asking for a stack replays its own graph on a GPU, and says why it is not stacked
    assert engines.select(LAB5, cfg(engine="stacked"), CUDA).engine.name == "cuda-graph"
    on_cpu = engines.select(LAB5, cfg(engine="stacked"), CPU)
    assert on_cpu.engine is engines.FALLBACK and on_cpu.why_not.startswith("stacked: trains two or more seeds")
    assert "cuda-graph" not in on_cpu.why_not  # an engine for another device is not tried
    assert engines.select(LAB5, cfg(engine="plain"), CUDA) == engines.Choice(engines.FALLBACK, None)
    dropout = ModelConfig(conv_channels=(10, 20), hidden=(50,), dropout=0.5)
    fell_back = engines.select(dropout, cfg(engine="auto"), CUDA)
    assert fell_back.engine is engines.FALLBACK and fell_back.why_not.startswith("cuda-graph: dropout inside a graph")


def test_which_runs_stack_is_the_registrys_answer():
    assert engines.asks_to_stack(cfg(engine="stacked")) and not engines.asks_to_stack(cfg(engine="auto"))
    assert engines.for_stack(LAB5, cfg(engine="stacked"), CPU) is engines.REGISTRY["stacked"]
    assert engines.for_stack(LAB5, cfg(engine="stacked", augment=True), CPU) is None
    assert engines.for_stack(cnn_config(2, 5, batch_norm=True), cfg(engine="stacked"), CPU) is None
    assert engines.for_stack(LAB5, cfg(engine="plain"), CPU) is None


class ToyEngine(PlainEngine):
    """A new engine as a contributor would add one: a class and one line in the registry."""

    devices = ("cpu",)
    wrong_device = "toy engines stay on the CPU"
    prepared: list = []
    warmed: list = []

    def warm_up(self, device):
        self.warmed.append(device.type)

    def unsupported(self, model_cfg, train_cfg, device):
        return "toys skip Adam" if train_cfg.optimizer == "adam" else None

    def prepare(self, runs, x_train, y_train, losses):
        self.prepared.append(len(runs))
        return super().prepare(runs, x_train, y_train, losses)


def test_an_engine_added_to_the_registry_trains_with_no_other_change(monkeypatch, data500):
    toy = ToyEngine("toy", default_on=("cpu",))
    monkeypatch.setattr(engines, "REGISTRY", {"toy": toy, **engines.REGISTRY})
    events = []
    result = train(LAB5, cfg(engine="auto"), data500, on_progress=events.append)
    plain = train(LAB5, cfg(engine="plain"), data500)
    assert (result.engine, events[0].engine, toy.prepared) == ("toy", "toy", [1])
    assert result.losses == plain.losses and result.status == "finished"
    assert engines.select(LAB5, cfg(engine="auto", optimizer="adam"), CPU).engine is not toy  # the next default
    asked = engines.select(LAB5, dataclasses.replace(cfg(optimizer="adam"), engine="toy"), CPU)
    assert (asked.engine, asked.why_not) == (engines.FALLBACK, "toy: toys skip Adam")
    assert engines.select(LAB5, cfg(engine="auto"), CUDA).engine.name == "cuda-graph"  # not a CUDA default
    monkeypatch.setattr(native, "load_library", lambda: None)  # no build in this test
    engines.warm_up(CUDA)
    engines.warm_up(CPU)
    assert toy.warmed == ["cpu"]  # its one-time set-up, only for a device it runs on


# ------------------------------------------------------------------------- names live in the registry only

ENGINE_NAMES = set(engines.REGISTRY)


def _code_files() -> list[Path]:
    files = [ROOT / "streamlit_app.py"]
    for package in ("mnist_lab", "app_lib", "app_pages"):
        files += sorted((ROOT / package).rglob("*.py"))
    return [f for f in files if f.is_file() and f != ROOT / "mnist_lab" / "training" / "engines.py"]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _names_engine(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "engine") or (isinstance(node, ast.Name)
                                                                            and node.id == "engine")


def _strings(node: ast.AST) -> bool:
    """A string, or a tuple, list or set of them."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_strings(element) for element in node.elts)
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def engine_name_uses(path: Path, root: Path = ROOT) -> list[str]:
    """Engine names written into code (not docstrings, not inside a sentence), and any comparison
    of something called `engine` with a string: what choosing an engine by name looks like."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    docstrings = _docstrings(tree)
    where = path.relative_to(root)
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and node.value in ENGINE_NAMES and isinstance(node.value, str)
                and id(node) not in docstrings):
            found.append(f"{where}:{node.lineno} writes the engine name {node.value!r}")
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_names_engine(side) for side in sides) and any(_strings(side) for side in sides):
                found.append(f"{where}:{node.lineno} compares an engine with a string")
    return sorted(found)


def test_no_module_but_the_registry_names_an_engine():
    found = [use for path in _code_files() for use in engine_name_uses(path)]
    assert found == []


def test_the_name_check_catches_a_choice_by_name(tmp_path):
    scratch = tmp_path / "pick.py"
    scratch.write_text('"""stacked"""\nLABEL = "the plain loop"\n\n\ndef pick(cfg, engine):\n'
                       '    return engine == "auto" or cfg.engine in ("cuda-graph",) or cfg.device == "cpu"\n')
    assert engine_name_uses(scratch, tmp_path) == [  # the docstring and the sentence are no choice
        "pick.py:6 compares an engine with a string", "pick.py:6 compares an engine with a string",
        "pick.py:6 writes the engine name 'cuda-graph'"]


# ------------------------------------------------------------------------- the step body, once

def _optimizer_steps(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step"
            and ast.unparse(node.func.value).split(".")[-1] == "optimizer"]


def test_the_step_body_is_written_once():
    calls = {str(path.relative_to(ROOT)): lines for path in sorted((ROOT / "mnist_lab").rglob("*.py"))
             if (lines := _optimizer_steps(path))}
    assert list(calls) == ["mnist_lab/training/step.py"] and len(calls["mnist_lab/training/step.py"]) == 1


def _losses_of(stepper_type, model_cfg, train_cfg, data, epochs=2) -> list[float]:
    device = torch.device("cpu")
    model = init_model(model_cfg, train_cfg.seed, device)
    x_train = data.x_train.contiguous(memory_format=fast_memory_format(model_cfg, device))
    steps = -(-len(x_train) // train_cfg.batch_size)
    losses = torch.zeros(steps * epochs)
    stepper = stepper_type(model, make_optimizer(model, train_cfg), x_train, data.y_train, train_cfg.batch_size,
                           losses)
    generator = torch.Generator().manual_seed(train_cfg.seed)
    for _ in range(epochs):
        stepper.start_epoch(torch.randperm(len(x_train), generator=generator))
        for i in range(steps):
            stepper.step(i)
    return losses.tolist()


@pytest.mark.parametrize("model_cfg,extra", [
    (LAB5, {}),
    (get_preset("tiny-fc").model, {"optimizer": "adam", "lr": 0.003}),
    (cnn_config(2, 3, batch_norm=True, hidden=(16,)), {}),
])
def test_the_graph_steps_counters_give_the_plain_losses_bit_for_bit(data500, model_cfg, extra):
    """On the CPU a GraphStep captures nothing: it runs the shared body eagerly with its batch
    position and loss slot as device counters, which must pick the same batches (the short last
    one included) and store the same losses as the plain step."""
    train_cfg = cfg(**extra)
    assert _losses_of(GraphStep, model_cfg, train_cfg, data500) == _losses_of(PlainStep, model_cfg, train_cfg,
                                                                              data500)


def test_a_stacked_step_of_one_member_gives_the_plain_losses(data500):
    train_cfg = cfg(seed=3)
    model = StackedModel([init_model(LAB5, train_cfg.seed, CPU)])
    losses = torch.zeros(1, 16)
    stepper = StackedStep(model, make_optimizer(model, train_cfg), data500.x_train, data500.y_train, 64, losses)
    assert stepper.graph is None and stepper.graph_error == ""  # nothing to capture on the CPU
    generator = torch.Generator().manual_seed(train_cfg.seed)
    for _ in range(2):
        stepper.start_epoch([torch.randperm(500, generator=generator)])
        for i in range(8):
            stepper.step(i)
    plain = _losses_of(PlainStep, LAB5, train_cfg, data500)
    torch.testing.assert_close(losses[0], torch.tensor(plain), rtol=1e-4, atol=2e-6)  # vmap's conv sums otherwise


def test_train_many_asks_the_registry_which_engine_stacks(monkeypatch, data500):
    asked = []
    for_stack = engines.for_stack

    def spy(model_cfg, train_cfg, device):
        asked.append(train_cfg.seed)
        return for_stack(model_cfg, train_cfg, device)

    monkeypatch.setattr(engines, "for_stack", spy)
    jobs = [(LAB5, cfg(seed=seed, engine="stacked")) for seed in (0, 1)] + [(LAB5, cfg(seed=2, engine="plain"))]
    results = train_many(jobs, data500)
    assert asked == [0, 1, 2] and [r.engine for r in results] == ["stacked", "stacked", "plain"]
