"""The 'stacked' engine: runs that differ only in their seed trained as one network, their
parameters stacked along a new first dimension and the step under `torch.func.vmap` (S convs
become one grouped conv). Each member keeps its own init, batch order, optimiser state and
loss: what it would train alone, up to float rounding. `train.train_many` drives it.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from mnist_lab.nets.model import ModelConfig


def stacked_unsupported(model_cfg: ModelConfig, train_cfg=None) -> str | None:
    """Why runs of this network (and training config) cannot be stacked (then they train one by
    one), or None."""
    if train_cfg is not None and train_cfg.augment:
        return "augmentation is drawn per run, not per stack member"
    if model_cfg.dropout > 0:
        return "dropout masks drawn for a stack differ from those of a run alone"
    if model_cfg.has_batch_norm:
        return "BatchNorm's running statistics are not stacked"
    return None


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


class StackedStep:
    """One training step of a `StackedModel`: member s takes its batch from its own epoch order
    `order[s]` at position `pos`, and its loss goes to `losses[s, at]`. On CUDA the step is
    captured once as a graph and replayed (as `fast.GraphStep` does for one run); on the CPU it
    runs eagerly. The epoch's short last batch always runs eagerly."""

    def __init__(self, model: StackedModel, optimizer: torch.optim.Optimizer, x_train: torch.Tensor,
                 y_train: torch.Tensor, batch_size: int, losses: torch.Tensor, warmup_steps: int = 2):
        device = x_train.device
        self.model, self.optimizer = model, optimizer
        self.x_train, self.y_train, self.losses = x_train, y_train, losses
        self.full_steps, self.tail = divmod(len(x_train), batch_size)
        self.batch_size = batch_size
        self.order = torch.arange(len(x_train), device=device).repeat(model.size, 1)  # (S, N), rewritten per epoch
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.at = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = torch.arange(batch_size, device=device)
        self.graph = None
        self.graph_error = ""  # why the step runs eagerly on CUDA, if it does
        if device.type == "cuda" and self.full_steps:
            from mnist_lab.training.cuda_graph import capture_graph

            try:
                self.graph = capture_graph(self, warmup_steps)
            except RuntimeError as error:  # the same step, eagerly: slower, same results
                self.graph_error = f"{type(error).__name__}: {error}".splitlines()[0]
                warnings.warn(f"stacked step not captured as a CUDA graph, running it eagerly ({self.graph_error})",
                              RuntimeWarning, stacklevel=2)

    def _step(self, size: int) -> None:
        idx = self.order.index_select(1, self.pos + self.offsets[:size])  # (S, size)
        x = self.x_train.index_select(0, idx.flatten()).unflatten(0, idx.shape)
        y = self.y_train.index_select(0, idx.flatten()).view(idx.shape)
        loss = stacked_losses(self.model, x, y)
        loss.sum().backward()  # members share no parameter: each gets exactly its own gradient
        self.optimizer.step()
        self.losses.index_copy_(1, self.at.view(1), loss.detach().view(-1, 1))
        self.pos += size
        self.at += 1

    def start_epoch(self, orders: list[torch.Tensor]) -> None:
        """Make orders[s] (CPU permutations) member s's batch order for this epoch."""
        order = torch.stack(orders)
        if self.order.device.type == "cuda":
            order = order.pin_memory()
        self.order.copy_(order, non_blocking=True)
        self.pos.zero_()

    def step(self, i: int) -> None:
        if self.graph is not None and i < self.full_steps:
            self.graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._step(self.batch_size if i < self.full_steps else self.tail)
