"""The 'cpu-native' engine: a CNN's conv blocks (conv -> 2x2 max-pool -> ReLU, either order), forward
and backward, in hand-written C++ (conv_blocks.cpp) that the system compiler builds once per
machine; the fully-connected layers, the loss and the optimiser stay PyTorch's. `train` uses it
on the CPU; the plain loop there is the reference, and tests check the two agree.

A freshly built library first proves itself in a subprocess (`python -m mnist_lab.training.native PATH`:
load it, run a tiny forward and backward, compare with PyTorch), so an illegal instruction or a
wrong result ends that subprocess, not the server or worker that wanted the kernels.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

from mnist_lab.i18n import N_, Message, Worded
from mnist_lab.nets.model import ModelConfig, build_model, plain_conv_padding
from mnist_lab.paths import default_cache_dir
from mnist_lab.training.step import (
    Augment,
    Engine,
    PlainStep,
    Prepared,
    cpu_state,
    init_model,
    make_optimizer,
)
from mnist_lab.training.threads import WINDOW_S, ThreadGovernor, one_torch_thread

SOURCE = Path(__file__).with_name("conv_blocks.cpp")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
# bytes of gradient sums (all runs of images together) beyond which a network trains on the plain loop
SCRATCH_LIMIT = 256 * 2**20


class NativeUnavailable(RuntimeError):
    """The kernels cannot be built or loaded here; the message says why."""


_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_error: str | None = None


def _run(argv: list[str]) -> str:
    """A short command's output, or '' where it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def cpu_identity() -> str:
    """What -march=native builds for: the architecture and processor on every platform, plus the
    model name and feature flags from /proc/cpuinfo on Linux, `sysctl machdep.cpu` on macOS."""
    parts = [platform.system(), platform.machine(), platform.processor()]
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        parts += sorted({line for line in lines if line.split(":")[0].strip() in ("model name", "flags", "Features",
                                                                                  "CPU part", "cpu model")})
    except OSError:
        pass
    if platform.system() == "Darwin":
        parts.append(_run(["sysctl", "machdep.cpu"]))
    return "\n".join(parts)


def compiler_identity(compiler: str) -> str:
    return _run([compiler, "--version"]) or compiler


def library_path(compiler: str) -> Path:
    """Where the built kernels are cached: one file per source, compiler (and its version), flags
    and CPU identity, since -march=native code may not run on another CPU."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, compiler_identity(compiler), *FLAGS,
                                    cpu_identity()]).encode()).hexdigest()[:16]
    return default_cache_dir() / "native" / f"conv_blocks-{key}.so"


def load_library() -> ctypes.CDLL:
    """The kernels, built on first use (about 3 s) and cached; raises NativeUnavailable, with the
    reason, where there is no working C++ compiler with OpenMP (then training uses the plain loop)."""
    global _library, _error
    with _lock:
        if _library is None and _error is None:
            try:
                _library = _build_and_load()
            except NativeUnavailable as e:
                _error = str(e)
            except Exception as e:  # noqa: BLE001 - whatever goes wrong here, training must go on
                _error = f"the CPU kernels could not be prepared: {type(e).__name__}: {e}"
        if _library is None:
            raise NativeUnavailable(_error)
        return _library


def kernel_state() -> tuple[str, str | None]:
    """Without waiting for a build: ('ready', None), ('unavailable', why) or ('not built', None)."""
    if _library is not None:
        return "ready", None
    if _error is not None:
        return "unavailable", _error
    return "not built", None


def _build_and_load() -> ctypes.CDLL:
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler or not shutil.which(compiler):
        raise NativeUnavailable(f"no C++ compiler found ({'CXX=' + compiler if compiler else 'g++ or c++'}); "
                                "install g++ for the faster CPU engine")
    path = library_path(compiler)
    if not path.is_file():
        _build(compiler, path)
    proven = path.with_suffix(".proven")
    if not proven.is_file():
        try:
            prove(path)
        except NativeUnavailable:
            path.unlink(missing_ok=True)  # never loaded by anyone; the next process builds afresh
            raise
        try:
            proven.touch()
        except OSError:
            pass  # proved again next time
    try:
        return _bind(ctypes.CDLL(str(path)))  # after torch: its OpenMP runtime is the one the kernels use
    except (OSError, AttributeError) as e:
        path.unlink(missing_ok=True)
        proven.unlink(missing_ok=True)
        raise NativeUnavailable(f"the built CPU kernels do not load: {e}") from None


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    ptrs = ctypes.POINTER(ctypes.c_void_p)
    c_int = ctypes.c_int
    lib.conv_blocks_forward.argtypes = [c_int, c_int, ctypes.POINTER(c_int), ptrs, ptrs, ptrs, ptrs, c_int]
    lib.conv_blocks_backward.argtypes = [c_int, c_int, ctypes.POINTER(c_int), ptrs, ptrs, ptrs, ctypes.c_void_p,
                                         ptrs, ptrs, c_int]
    lib.conv_blocks_forward.restype = lib.conv_blocks_backward.restype = c_int
    lib.conv_blocks_buffer_slack.argtypes = []
    lib.conv_blocks_buffer_slack.restype = c_int
    lib.conv_blocks_gradient_floats.argtypes = [c_int, c_int, c_int]
    lib.conv_blocks_gradient_floats.restype = ctypes.c_int64
    lib.conv_blocks_chunks.argtypes = [c_int]
    lib.conv_blocks_chunks.restype = c_int
    return lib


# The first test: a small network with padding, both block orders' maths and a hidden layer.
FIRST_TEST_NET = ModelConfig(conv_channels=(3, 5), kernel_size=3, padding="same", hidden=(7,))
PROVE_COMMAND = [sys.executable, "-m", "mnist_lab.training.native"]  # + the library's path


def prove(path: Path) -> None:
    """Run the first test of the library at `path` in a subprocess; raise NativeUnavailable, with
    what happened, if it crashes (an illegal instruction kills only the subprocess), hangs or
    computes something other than PyTorch."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run([*PROVE_COMMAND, str(path)], capture_output=True, text=True, timeout=300, env=env,
                              cwd=root)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeUnavailable(f"the built CPU kernels could not be tested: {e}") from None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "a signal"
        raise NativeUnavailable(f"the built CPU kernels crashed in their first test ({name}); they may not suit "
                                "this CPU")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no message"])[-1]
        raise NativeUnavailable(f"the built CPU kernels failed their first test: {last}")


def first_test(lib: ctypes.CDLL, reference: nn.Module | None = None) -> None:
    """Forward and backward of FIRST_TEST_NET through the kernels in `lib`, compared with
    `reference` (default: the same network, same weights, in PyTorch's own layers); raise
    NativeUnavailable where the outputs or the gradients differ."""
    import copy

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = build_model(FIRST_TEST_NET)
        cfg = FIRST_TEST_NET
        x, y = torch.randn(5, cfg.in_channels, cfg.image_size, cfg.image_size), torch.arange(5)
    fast = NativeCNN(copy.deepcopy(plain), FIRST_TEST_NET, lib=lib)
    results = []
    for model, params in ((reference or plain, (reference or plain).parameters()), (fast, fast.model.parameters())):
        out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
        results.append([out.detach(), *(p.grad for p in params)])
    for want, got in zip(*results):
        if got is None or want is None or got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4,
                                                                                         atol=1e-5):
            raise NativeUnavailable("the built CPU kernels compute something other than PyTorch's layers")


def _build(compiler: str, path: Path) -> None:
    """Compile the kernels to `path` as paths.write_file writes a file, though the compiler writes
    the bytes itself (so not through it): a temporary name unique to this call in the same folder,
    flushed to disk, then renamed; a failed or concurrent build never leaves half a library."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise NativeUnavailable(f"{compiler} could not build the CPU kernels: {e}") from None
    try:
        done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no message"])[0]
            raise NativeUnavailable(f"{compiler} could not build the CPU kernels: {first}")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())  # the compiler's bytes on disk before the name says they are there
        os.replace(tmp, path)  # atomic: a process building at the same time never loads half a file
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NativeUnavailable(f"{compiler} could not build the CPU kernels: {e}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _split(model: nn.Sequential) -> tuple[list[nn.Conv2d], list[nn.Module], str | None]:
    """The conv layers of `model`'s blocks and the layers after them, or why the kernels can't run it."""
    children = list(model.children())
    flatten = next((i for i, m in enumerate(children) if isinstance(m, nn.Flatten)), None)
    if flatten is None:
        return [], [], N_("the network has no conv blocks")
    convs, block = [], []
    for m in children[:flatten] + [None]:  # None closes the last block
        if isinstance(m, nn.Conv2d) or m is None:
            if block and sorted(type(b).__name__ for b in block[1:]) != ["MaxPool2d", "ReLU"]:
                found = ", ".join(sorted({type(b).__name__ for b in block[1:]} - {"MaxPool2d", "ReLU"})) or \
                    N_("a block without its pool")
                return [], [], Worded([Message(N_("the kernels run conv -> max-pool -> ReLU blocks only (no "
                                                  "BatchNorm); this net has {found}"), {"found": found})])
            block = [m]
            if m is not None:
                convs.append(m)
        else:
            block.append(m)
    if not convs:
        return [], [], N_("the network has no conv blocks")
    for conv in convs:
        if conv.padding == "same" and conv.kernel_size[0] % 2 == 0:
            return [], [], N_("'same' padding with an even kernel pads unevenly")
        if plain_conv_padding(conv) is None:
            return [], [], N_("the kernels run square stride-1 convolutions with a bias and even zero padding only")
    pools = [m for m in children[:flatten] if isinstance(m, nn.MaxPool2d)]
    if any(p.kernel_size not in (2, (2, 2)) or p.stride not in (2, (2, 2)) or p.padding not in (0, (0, 0))
           or p.ceil_mode or p.dilation not in (1, (1, 1)) for p in pools):
        return [], [], N_("the kernels pool 2x2 with stride 2 only")
    return convs, children[flatten:], None


def native_unsupported(model_cfg: ModelConfig) -> str | None:
    """Why the kernels cannot run this network on this machine's CPU (then `train` uses the plain
    loop), or None."""
    if model_cfg.kind != "cnn":
        return N_("a fully-connected net has no conv blocks")
    with torch.device("meta"):
        convs, _, reason = _split(build_model(model_cfg))
    if reason:
        return reason
    try:
        lib = load_library()
    except NativeUnavailable as e:
        return str(e)
    most_chunks = lib.conv_blocks_chunks(2**30)  # a big batch's separately summed runs of images
    scratch = 4 * most_chunks * sum(lib.conv_blocks_gradient_floats(c.in_channels, c.out_channels, c.kernel_size[0])
                                    for c in convs)
    if scratch > SCRATCH_LIMIT:
        return Worded([Message(N_("the network is too big for the CPU kernels ({mib} MiB of gradient sums per step, "
                                  "more than {limit} MiB)"), {"mib": f"{scratch / 2**20:.0f}",
                                                              "limit": SCRATCH_LIMIT // 2**20})])
    return None


class _Buffers:
    """Every block's input (with its zero border), the last block's output and the pool winners,
    for up to `capacity` images; a smaller batch uses the first images' part."""

    def __init__(self, blocks: list[tuple[int, ...]], capacity: int, slack: int):
        # slack: floats past the end of every buffer, as the kernels say (conv_blocks_buffer_slack)
        self.capacity = capacity
        self.acts = [torch.zeros(capacity * cin * hp * wp + slack) for cin, hp, wp, *_ in blocks]
        _, hp, wp, cout, k, _ = blocks[-1]
        self.last_shape = (cout, (hp - k + 1) // 2, (wp - k + 1) // 2)
        self.acts.append(torch.zeros(capacity * cout * self.last_shape[1] * self.last_shape[2] + slack))
        self.wins = [torch.zeros(capacity * cout * ((hp - k + 1) // 2) * ((wp - k + 1) // 2) + slack, dtype=torch.int32)
                     for _, hp, wp, cout, k, _ in blocks]
        self.act_ptrs = (ctypes.c_void_p * len(self.acts))(*[t.data_ptr() for t in self.acts])
        self.win_ptrs = (ctypes.c_void_p * len(self.wins))(*[t.data_ptr() for t in self.wins])


class ConvBlocks:
    """The C++ kernels bound to one network's conv layers (their parameters are read at every call)."""

    def __init__(self, convs: list[nn.Conv2d], in_channels: int, image_size: int, lib: ctypes.CDLL | None = None):
        self.lib = lib or load_library()
        self.convs = convs
        self.blocks: list[tuple[int, ...]] = []  # per block: cin, hp, wp, cout, k, out_pad
        c, size = in_channels, image_size
        pads = [plain_conv_padding(conv) for conv in convs]
        for i, conv in enumerate(convs):
            k, p = conv.kernel_size[0], pads[i]
            out_pad = pads[i + 1] if i + 1 < len(convs) else 0  # written straight into the next block's border
            self.blocks.append((c, size + 2 * p, size + 2 * p, conv.out_channels, k, out_pad))
            c, size = conv.out_channels, (size + 2 * p - k + 1) // 2
        self.dims = (ctypes.c_int * (6 * len(self.blocks)))(*[d for b in self.blocks for d in b])
        self.buffers: _Buffers | None = None
        self.threads = torch.get_num_threads()  # the kernels' threads: any count gives the same results
        self.generation = 0  # forward calls so far: a backward must belong to the latest

    def set_threads(self, n: int) -> None:
        self.threads = max(1, int(n))

    def _buffers(self, n: int) -> _Buffers:
        if self.buffers is None or self.buffers.capacity < n:
            with torch.inference_mode(False):  # first called while evaluating, the buffers still serve training
                self.buffers = _Buffers(self.blocks, n, self.lib.conv_blocks_buffer_slack())
        return self.buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) images -> (N, C', H', W') output of the last block (a new tensor)."""
        n = len(x)
        cin, hp, wp = self.blocks[0][:3]
        p = plain_conv_padding(self.convs[0])
        if tuple(x.shape[1:]) != (cin, hp - 2 * p, wp - 2 * p):
            raise ValueError(f"This network takes images of shape ({cin}, {hp - 2 * p}, {wp - 2 * p}); "
                             f"got {tuple(x.shape[1:])}.")
        buf = self._buffers(n)
        buf.acts[0][:n * cin * hp * wp].view(n, cin, hp, wp)[:, :, p:hp - p, p:wp - p].copy_(x.detach())
        weights = [conv.weight.detach().contiguous() for conv in self.convs]
        biases = [conv.bias.detach().contiguous() for conv in self.convs]
        _check(self.lib.conv_blocks_forward(n, len(self.blocks), self.dims, _ptrs(weights), _ptrs(biases),
                                            buf.act_ptrs, buf.win_ptrs, self.threads))
        self.generation += 1
        c, h, w = buf.last_shape
        return buf.acts[-1][:n * c * h * w].view(n, c, h, w).clone()

    def backward(self, grad: torch.Tensor, weights: list[torch.Tensor], n: int, generation: int) -> list[torch.Tensor]:
        """Gradients [w1, b1, w2, b2, ...] of the conv layers (`weights` as the forward pass saw
        them), from the gradient of the last block's output."""
        if generation != self.generation:
            raise RuntimeError("cpu-native: a backward pass must follow its own forward pass, with no other in between")
        buf = self.buffers
        weights = [w.detach().contiguous() for w in weights]
        grads_w = [torch.empty_like(w) for w in weights]
        grads_b = [torch.empty(w.shape[0]) for w in weights]
        grad = grad.contiguous()
        _check(self.lib.conv_blocks_backward(n, len(self.blocks), self.dims, _ptrs(weights), buf.act_ptrs,
                                             buf.win_ptrs, grad.data_ptr(), _ptrs(grads_w), _ptrs(grads_b),
                                             self.threads))
        return [g for pair in zip(grads_w, grads_b) for g in pair]


def _check(rc: int) -> None:
    if rc == 2:
        raise MemoryError("cpu-native: not enough memory for the C++ kernels' scratch; use a smaller batch or "
                          "network, or the engine 'plain'")
    if rc != 0:
        raise RuntimeError("cpu-native: the C++ kernels refused the network's sizes")


def _ptrs(tensors: list[torch.Tensor]):
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


class ConvBlocksFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, blocks: ConvBlocks, *params):  # params: w1, b1, w2, b2, ...
        out = blocks.forward(x)
        ctx.save_for_backward(*params[0::2])  # so autograd refuses weights changed in place before backward
        ctx.blocks, ctx.n, ctx.generation = blocks, len(x), blocks.generation
        return out

    @staticmethod
    def backward(ctx, grad):
        return None, None, *ctx.blocks.backward(grad, list(ctx.saved_tensors), ctx.n, ctx.generation)


class NativeCNN(nn.Module):
    """A `build_model` CNN whose conv blocks run in the C++ kernels: the same parameter tensors
    (an optimiser, `count_params` and `state_dict` see the wrapped model's), the same outputs and
    gradients up to float rounding. The layers after the blocks (FC, dropout, softmax) run as they are."""

    def __init__(self, model: nn.Sequential, model_cfg: ModelConfig, lib: ctypes.CDLL | None = None):
        super().__init__()
        convs, head, reason = _split(model)
        if reason:
            raise ValueError(f"cpu-native cannot run this network: {reason}")
        self.model = model.to(memory_format=torch.contiguous_format)  # the kernels read NCHW weights
        self.blocks = ConvBlocks(convs, model_cfg.in_channels, model_cfg.image_size, lib)
        self._head = head  # a plain list: the modules are registered once, under self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = [t for conv in self.blocks.convs for t in (conv.weight, conv.bias)]
        out = ConvBlocksFn.apply(x, self.blocks, *params)
        with one_torch_thread():  # the same results for any thread count (the blocks' are too)
            for layer in self._head:
                out = layer(out)
        return out


class NativeStep(PlainStep):
    """The reference step over the C++ conv blocks (NativeCNN). Their results are the same for any
    number of kernel threads, so a ThreadGovernor picks that number step by step (fewer while
    another program takes cores); PyTorch's part of the step (the FC layers, the loss, SGD) runs on
    one thread, which keeps a run's losses independent of the machine's thread count."""

    def __init__(self, model: NativeCNN, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.governor = ThreadGovernor(model.blocks.set_threads, model.blocks.threads)

    def step(self, i: int) -> None:
        t0 = time.perf_counter()
        with one_torch_thread():
            super().step(i)
        self.governor.after_step(time.perf_counter() - t0)


class NativeEngine(Engine):
    """PlainStep over a CNN whose conv blocks run in the C++ kernels (NativeCNN), on the CPU."""

    devices = ("cpu",)
    wrong_device = N_("runs on the CPU only")
    settle_s = 2 * WINDOW_S + 0.05  # the thread governor's first window and its one-window trial of fewer threads

    def unsupported(self, model_cfg: ModelConfig, train_cfg, device: torch.device) -> str | None:
        return native_unsupported(model_cfg)

    def warm_up(self, device: torch.device) -> None:
        with contextlib.suppress(NativeUnavailable):  # then training uses the plain loop, and says why
            load_library()

    def prepare(self, runs, x_train, y_train, losses) -> Prepared:
        [(model_cfg, train_cfg)] = runs
        model = NativeCNN(init_model(model_cfg, train_cfg.seed, x_train.device), model_cfg)  # the data stays NCHW
        augment = Augment(x_train, train_cfg.seed) if train_cfg.augment else None
        step = NativeStep(model, make_optimizer(model, train_cfg), x_train, y_train, train_cfg.batch_size, losses[0],
                          augment)
        return Prepared(step, [model], [lambda: cpu_state(model.model)])


if __name__ == "__main__":  # the first test, in its own process: python -m mnist_lab.training.native PATH
    try:
        first_test(_bind(ctypes.CDLL(sys.argv[1])))
    except (NativeUnavailable, OSError, AttributeError, RuntimeError, ValueError) as e:
        print(e, file=sys.stderr)
        sys.exit(1)
