"""The 'stacked' engine: runs that differ only in their seed trained as one network, their
parameters stacked along a new first dimension and the step under `torch.func.vmap` (S convs
become one grouped conv). Each member keeps its own init, batch order, optimiser state and
loss: what it would train alone, up to float rounding. `loop.train_many` drives it.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from mnist_lab.i18n import N_
from mnist_lab.nets.model import ModelConfig
from mnist_lab.training.cuda_graph import GraphStep, capture_graph
from mnist_lab.training.step import Engine, Prepared, init_model, make_optimizer


class StackedModel(nn.Module):
    """S copies of one architecture with their own weights, as one module: `forward` takes
    (S, B, ...) inputs, member s seeing x[s], and returns (S, B, classes)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("A stack needs at least one model.")
        params, buffers = stack_module_state(members)
        self.size = len(members)
        self._names = list(params)
        for name, value in params.items():  # registered under safe names, so optimisers and state_dict see them
            self.register_parameter(name.replace(".", "__"), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer("buf__" + name.replace(".", "__"), value.clone())
        self._buffer_names = list(buffers)
        self._state_names = list(members[0].state_dict())  # the members' own order
        skeleton = copy.deepcopy(members[0]).to("meta")  # architecture only; weights come from the stack
        object.__setattr__(self, "_skeleton", skeleton)  # not a submodule: its meta tensors stay out of state_dict

    def train(self, mode: bool = True) -> StackedModel:
        self._skeleton.train(mode)
        return super().train(mode)

    def stacked_params(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name.replace(".", "__")) for name in self._names}

    def stacked_buffers(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, "buf__" + name.replace(".", "__")) for name in self._buffer_names}

    def _call_one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._skeleton, (params, buffers), (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vmap(self._call_one)(self.stacked_params(), self.stacked_buffers(), x)

    def member_state_dict(self, s: int) -> dict[str, torch.Tensor]:
        """Member s's weights on the CPU under the names of the network it was stacked from
        (build_model's), so `build_model(cfg).load_state_dict` takes them."""
        tensors = {**self.stacked_params(), **self.stacked_buffers()}
        return {name: tensors[name][s].detach().to("cpu", copy=True).contiguous() for name in self._state_names}

    def member(self, s: int) -> nn.Module:
        """Member s as an ordinary module over views of the stack (for evaluation)."""
        return _Member(self, s)


class _Member(nn.Module):
    def __init__(self, stack: StackedModel, index: int):
        super().__init__()
        object.__setattr__(self, "_stack", stack)  # not a submodule: no duplicate parameters
        self.index = index

    def train(self, mode: bool = True) -> _Member:
        self._stack.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stack, s = self._stack, self.index
        params = {k: v[s] for k, v in stack.stacked_params().items()}
        buffers = {k: v[s] for k, v in stack.stacked_buffers().items()}
        return stack._call_one(params, buffers, x)


def stacked_losses(model: StackedModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy over its own batch: (S,) from x (S, B, ...), y (S, B)."""
    out = model(x)
    return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)


class StackedStep(GraphStep):
    """GraphStep over a `StackedModel`: member s takes its batch from its own epoch order
    `order[s]` at position `pos`, and its loss goes to `losses[s, at]`. On CUDA the step is
    captured once as a graph and replayed, and runs eagerly where capturing fails (slower, the
    same results); on the CPU it runs eagerly. The epoch's short last batch always runs eagerly."""

    graph_error = ""  # why the step runs eagerly on CUDA, if it does

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return stacked_losses(self.model, x, y)  # members share no parameter: each gets exactly its own gradient

    def capture(self, warmup_steps: int) -> torch.cuda.CUDAGraph | None:
        try:
            return capture_graph(self, warmup_steps)
        except RuntimeError as error:  # the same step, eagerly: slower, same results
            self.graph_error = f"{type(error).__name__}: {error}".splitlines()[0]
            warnings.warn(f"stacked step not captured as a CUDA graph, running it eagerly ({self.graph_error})",
                          RuntimeWarning, stacklevel=3)
            return None

    def start_epoch(self, orders: list[torch.Tensor]) -> None:
        """Make orders[s] (CPU permutations) member s's batch order for this epoch."""
        super().start_epoch(torch.stack(orders))


# A stack keeps its weights in NCHW even on the CPU (where single runs use channels_last): its
# grouped convolutions ran 1.2x faster that way (docs/BENCHMARKS.md, 2026-11-23).
STACK_LAYOUT = torch.contiguous_format


class StackedEngine(Engine):
    """Two or more runs that differ only in their seed, trained as one StackedModel (train_many)."""

    stacks = True

    def unsupported(self, model_cfg: ModelConfig, train_cfg, device: torch.device) -> str | None:
        if train_cfg.augment:
            return N_("augmentation is drawn per run, not per stack member")
        if model_cfg.dropout > 0:
            return N_("dropout masks drawn for a stack differ from those of a run alone")
        if model_cfg.has_batch_norm:
            return N_("BatchNorm's running statistics are not stacked")
        return None

    def prepare(self, runs, x_train, y_train, losses) -> Prepared:
        device = x_train.device
        train_cfg = runs[0][1]  # the runs differ only in their seed
        model = StackedModel([init_model(m, t.seed, device).to(memory_format=STACK_LAYOUT) for m, t in runs])
        optimizer = make_optimizer(model, train_cfg, capturable=device.type == "cuda")
        stepper = StackedStep(model, optimizer, x_train, y_train, train_cfg.batch_size, losses)
        return Prepared(stepper, [model.member(s) for s in range(len(runs))],
                        [lambda s=s: model.member_state_dict(s) for s in range(len(runs))])
