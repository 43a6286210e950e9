"""The 'cuda-graph' engine: the whole training step (batch gather by a device-side counter,
PlainStep's body: forward, loss, backward, optimiser update, loss store) captured once as a CUDA
graph and replayed every iteration, so a small network costs one launch per step instead of
dozens. `train` and `train_many` (loop.py) drive it; the plain step is the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.i18n import N_
from mnist_lab.nets.model import ModelConfig, plain_conv_padding
from mnist_lab.training.step import Engine, PlainStep, Prepared, cpu_state, init_model, make_optimizer

# How `fast_convs` rewrites convolution gradients: "" (cuDNN's own), "bias" (two short
# reductions for the bias gradient), "bias+wgrad" (also one GEMM for a 1-channel input's weight
# gradient). bench/bench_gpu_step.py measures each; on an H100 (docs/BENCHMARKS.md) "bias" is
# 8% faster per Lab-5 step and neutral in the side-by-side sweep, "bias+wgrad" 4% faster again
# for one Lab-5 net but 9% slower in the sweep.
FAST_CONV = "bias"


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


class GraphStep(PlainStep):
    """PlainStep's body on batches of `batch_size` images gathered on the device by counters, so that
    on CUDA it is captured once as a CUDA graph and replayed every iteration.

    The batch is gathered from `order` (this epoch's permutation, rewritten in place by
    `start_epoch`; (S, N) for a stack) at the position `pos`, and the loss is written to slot
    `at` of `losses`; the step advances both counters itself, so a replay needs nothing from the
    host. The epoch's short last batch (60,000 = 937 x 64 + 32) runs the same body eagerly, and so
    does every batch on the CPU (no graph there). Everything runs on the stream that is current
    when the object is made; keep that stream current when calling it."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x_train: torch.Tensor,
                 y_train: torch.Tensor, batch_size: int, losses: torch.Tensor, warmup_steps: int = 2):
        super().__init__(model, optimizer, x_train, y_train, batch_size, losses)
        device = x_train.device
        self.full_steps, self.tail = divmod(len(x_train), batch_size)
        n = len(x_train)
        self.order = torch.arange(n, device=device).expand(*losses.shape[:-1], n).clone()  # each run's order
        self.pos = torch.zeros((), dtype=torch.long, device=device)  # where the next batch starts in `order`
        self.at = torch.zeros((), dtype=torch.long, device=device)  # the global iteration: its slot in `losses`
        self.offsets = torch.arange(batch_size, device=device)
        self.graph = self.capture(warmup_steps) if device.type == "cuda" and self.full_steps else None

    def capture(self, warmup_steps: int) -> torch.cuda.CUDAGraph | None:
        return capture_graph(self, warmup_steps)

    def run_batch(self, size: int) -> None:
        """The next `size` images of the epoch through the step body (zero_grad aside: a replay
        overwrites the grads it captured)."""
        self.update(*self.gather(size))

    def gather(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.order.index_select(-1, self.pos + self.offsets[:size])  # (size,), or (S, size) for a stack
        self.pos += size
        x = self.x_train.index_select(0, idx.flatten()).unflatten(0, idx.shape)
        y = self.y_train.index_select(0, idx.flatten()).view(idx.shape)
        return x, y

    def keep(self, loss: torch.Tensor) -> None:
        self.losses.index_copy_(self.losses.dim() - 1, self.at.view(1), loss.unsqueeze(-1))
        self.at += 1

    def start_epoch(self, order: torch.Tensor) -> None:
        """Make `order` (a CPU or device permutation of the training set) this epoch's batch order."""
        if order.device.type == "cpu" and self.order.device.type == "cuda":
            order = order.pin_memory()  # so the copy is asynchronous, ordered on the stream
        self.order.copy_(order, non_blocking=True)
        self.pos.zero_()

    def step(self, i: int) -> None:
        """Iteration `i` of the epoch: a replay, or the batch run eagerly (the short last one, or no graph)."""
        if self.graph is not None and i < self.full_steps:
            self.graph.replay()
        else:
            self.optimizer.zero_grad(set_to_none=True)  # fresh grads, not added to the graph's
            self.run_batch(self.batch_size if i < self.full_steps else self.tail)


def capture_graph(stepper: GraphStep, warmup_steps: int = 2) -> torch.cuda.CUDAGraph:
    """Capture `stepper.run_batch(stepper.batch_size)` as a CUDA graph, after a few eager warm-up
    steps, then put the model, the optimiser state and the counters back where the run starts
    (a GraphStep, or a stacked.StackedStep)."""
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
                stepper.run_batch(stepper.batch_size)
            stepper.pos.zero_()
            stepper.at.zero_()
            optimizer.zero_grad(set_to_none=True)  # backward allocates the grads inside the graph
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                stepper.run_batch(stepper.batch_size)
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


class GraphEngine(Engine):
    """GraphStep over a network whose convolutions have the faster backward (fast_convs), on CUDA."""

    devices = ("cuda",)
    wrong_device = N_("needs a CUDA device")
    side_by_side = True

    def unsupported(self, model_cfg: ModelConfig, train_cfg, device: torch.device) -> str | None:
        if train_cfg.augment:
            return N_("augmentation draws its crops and flips outside the captured step")
        if model_cfg.dropout > 0:
            return N_("dropout inside a graph draws other masks than the plain loop, so the runs would not agree")
        return None

    def prepare(self, runs, x_train, y_train, losses) -> Prepared:
        [(model_cfg, train_cfg)] = runs
        model = fast_convs(init_model(model_cfg, train_cfg.seed, x_train.device))
        optimizer = make_optimizer(model, train_cfg, capturable=True)
        step = GraphStep(model, optimizer, x_train, y_train, train_cfg.batch_size, losses[0])
        return Prepared(step, [model], [lambda: cpu_state(model)])
