"""The 'cuda-graph' engine: the whole training step (batch gather by a device-side counter,
forward, loss, backward, optimiser update, loss store) captured once as a CUDA graph and
replayed every iteration, so a small network costs one launch per step instead of dozens.
`train` and `train_many` (train.py) drive it; the plain loop there is the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.nets.model import ModelConfig, plain_conv_padding

# How `fast_convs` rewrites convolution gradients: "" (cuDNN's own), "bias" (two short
# reductions for the bias gradient), "bias+wgrad" (also one GEMM for a 1-channel input's weight
# gradient). bench/bench_gpu_step.py measures each; on an H100 (docs/BENCHMARKS.md) "bias" is
# 8% faster per Lab-5 step and neutral in the side-by-side sweep, "bias+wgrad" 4% faster again
# for one Lab-5 net but 9% slower in the sweep.
FAST_CONV = "bias"


def cuda_graph_unsupported(model_cfg: ModelConfig, train_cfg, device: torch.device) -> str | None:
    """Why the cuda-graph engine cannot run this config (then `train` falls back to 'plain'),
    or None when it can."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if train_cfg.augment:
        return "augmentation draws its crops and flips outside the captured step"
    if model_cfg.dropout > 0:
        return "dropout inside a graph draws other masks than the plain loop, so the runs would not agree"
    return None


class _ConvFastGrad(torch.autograd.Function):
    """conv2d (stride 1, symmetric zero padding) whose backward avoids two slow cuDNN/ATen
    kernels at batch 64: the bias gradient as one strided reduction of the whole output
    (~15 us), and cuDNN's weight gradient for a 1-channel input (~27 us on the Lab-5 net)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, gemm_wgrad: bool):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.gemm_wgrad = padding, gemm_wgrad
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        out_c, in_c, k, _ = weight.shape
        if ctx.gemm_wgrad and in_c == 1 and not ctx.needs_input_grad[0]:
            xp = F.pad(x, (p, p, p, p)) if p else x
            cols = xp.unfold(2, k, 1).unfold(3, k, 1).reshape(-1, k * k)  # (N*Ho*Wo, k*k)
            grad_rows = grad.permute(0, 2, 3, 1).reshape(-1, out_c)  # (N*Ho*Wo, C_out)
            grad_x, grad_w = None, (grad_rows.t() @ cols).view_as(weight)
        else:
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [p, p], [1, 1], False, [0, 0], 1,
                [ctx.needs_input_grad[0], True, False])
        grad_b = grad.sum(dim=(2, 3)).sum(0)  # (N, C) first: short contiguous rows, then 64 each
        return grad_x, grad_w, grad_b, None, None


class _FastGradConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ConvFastGrad.apply(x, self.weight, self.bias, self.padding[0], "wgrad" in FAST_CONV)


def fast_convs(model: nn.Module) -> nn.Module:
    """Swap every plain Conv2d (stride 1, square kernel, symmetric zero padding, with bias) for one
    with the same parameters whose backward is faster on a GPU at small batches; the forward pass
    and the gradients are the same up to float rounding. Other layers are left as they are."""
    if not FAST_CONV:
        return model
    for name, module in list(model.named_children()):
        if type(module) is not nn.Conv2d:
            fast_convs(module)
            continue
        padding = plain_conv_padding(module)
        if padding is None:
            continue
        fast = _FastGradConv2d(module.in_channels, module.out_channels, module.kernel_size[0], padding=padding,
                               device="meta")
        fast.weight, fast.bias = module.weight, module.bias  # the same Parameters, so optimisers still see them
        setattr(model, name, fast)
    return model


class GraphStep:
    """One training step of `model` on a batch of `batch_size` images, captured as a CUDA graph.

    The batch is gathered on the device from `order` (this epoch's permutation, rewritten in
    place by `start_epoch`) at the position `pos`, and the loss is written to `losses[at]`; the
    graph advances both counters itself, so a replay needs nothing from the host. The epoch's
    short last batch (60,000 = 937 x 64 + 32) runs the same code eagerly. Everything runs on the
    stream that is current when the object is made; keep that stream current when calling it."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x_train: torch.Tensor,
                 y_train: torch.Tensor, batch_size: int, losses: torch.Tensor, warmup_steps: int = 2):
        device = x_train.device
        self.model, self.optimizer = model, optimizer
        self.x_train, self.y_train, self.losses = x_train, y_train, losses
        self.batch_size = batch_size
        self.full_steps, self.tail = divmod(len(x_train), batch_size)
        self.order = torch.arange(len(x_train), device=device)  # the epoch's batch order, rewritten in place
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # where the next batch starts in `order`
        self.at = torch.zeros((), dtype=torch.long, device=device)  # the global iteration: its slot in `losses`
        self.offsets = torch.arange(batch_size, device=device)
        self.graph = capture_graph(self, warmup_steps) if self.full_steps else None

    def _step(self, size: int) -> None:
        """The plain loop's step (zero_grad aside: a replay overwrites the grads it captured)."""
        idx = self.order.index_select(0, self.pos + self.offsets[:size])
        x, y = self.x_train.index_select(0, idx), self.y_train.index_select(0, idx)
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.losses.index_copy_(0, self.at.view(1), loss.detach().view(1))
        self.pos += size
        self.at += 1

    def start_epoch(self, order: torch.Tensor) -> None:
        """Make `order` (a CPU or device permutation of the training set) this epoch's batch order."""
        if order.device.type == "cpu":
            order = order.pin_memory()  # so the copy is asynchronous, ordered on the stream
        self.order.copy_(order, non_blocking=True)
        self.pos.zero_()

    def step(self, i: int) -> None:
        """Iteration `i` of the epoch: a replay, or the short last batch run eagerly."""
        if i < self.full_steps:
            self.graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)  # fresh grads, not added to the graph's
            self._step(self.tail)


def capture_graph(stepper, warmup_steps: int = 2) -> torch.cuda.CUDAGraph:
    """Capture `stepper._step(stepper.batch_size)` as a CUDA graph, after a few eager warm-up steps,
    then put the model, the optimiser state and the counters back where the run starts. `stepper`
    has model, optimizer, pos, at, batch_size, x_train and _step (GraphStep, stacked.StackedStep)."""
    model, optimizer = stepper.model, stepper.optimizer
    start = {k: v.clone() for k, v in model.state_dict().items()}
    device = stepper.x_train.device
    stream = torch.cuda.current_stream(device)
    # Capture needs a stream other than the default one. A run that already has its own
    # (train_many) captures there: PyTorch's pool holds 32 streams, and a second one per run
    # would hand two runs the same stream and serialise them.
    side = stream if stream != torch.cuda.default_stream(device) else torch.cuda.Stream(device)
    side.wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        try:
            # Eager warm-up steps create the optimiser state and let cuDNN/cuBLAS settle.
            for _ in range(warmup_steps):
                stepper.pos.zero_()
                stepper.at.zero_()
                optimizer.zero_grad(set_to_none=True)
                stepper._step(stepper.batch_size)
            stepper.pos.zero_()
            stepper.at.zero_()
            optimizer.zero_grad(set_to_none=True)  # backward allocates the grads inside the graph
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                stepper._step(stepper.batch_size)
            finally:
                graph.capture_end()
        finally:
            # Capturing ran nothing, but the warm-up trained: go back to the run's start, also
            # when capturing failed (the caller may then step eagerly). Zeroed optimiser state
            # is exactly a fresh one (SGD: momentum 0*m + g = g; Adam: step 0).
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(start[k])
            for state in optimizer.state.values():
                for v in state.values():
                    if torch.is_tensor(v):
                        v.zero_()
            stepper.pos.zero_()
            stepper.at.zero_()
    stream.wait_stream(side)
    return graph
