"""How a server shares itself: the mode (local: one user; shared: a class, each student signed in;
demo: a public page, each visitor an anonymous workspace), the teacher token, the queue, the
per-job limits (checked against service/estimate.py's idle-machine estimate) and what one person
and the whole server may keep (service/quota.py). Read from the environment (or `--mode` after
`streamlit run streamlit_app.py --`). No streamlit here.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mnist_lab.data.datasets import DATA_DIR_ENV, DATASETS
from mnist_lab.errors import ConfigError
from mnist_lab.i18n import N_, Message, duration, integer
from mnist_lab.service.access import LOCAL, Asker
from mnist_lab.service.estimate import estimate_seconds
from mnist_lab.service.identity import Identity
from mnist_lab.service.quota import Standing, job_bytes

MODES = ("local", "shared", "demo")
ENV = dict(mode="MNIST_LAB_MODE", teacher_token="MNIST_LAB_TEACHER_TOKEN", class_view="MNIST_LAB_CLASS_VIEW",
           queue_limit="MNIST_LAB_QUEUE_LIMIT", workers="MNIST_LAB_WORKERS", max_epochs="MNIST_LAB_MAX_EPOCHS",
           max_train_images="MNIST_LAB_MAX_TRAIN_IMAGES", max_params="MNIST_LAB_MAX_PARAMS",
           max_job_seconds="MNIST_LAB_MAX_JOB_SECONDS", max_runs="MNIST_LAB_MAX_RUNS", max_mb="MNIST_LAB_MAX_MB",
           max_total_gb="MNIST_LAB_MAX_TOTAL_GB", max_client_jobs="MNIST_LAB_MAX_CLIENT_JOBS",
           keep_hours="MNIST_LAB_DEMO_KEEP_HOURS")
# 0 allowed: a queue of 0 (nothing waits besides the job that trains); 0 workers (the app starts none:
# they run elsewhere, e.g. compose's worker service)
ZERO_ALLOWED = ("queue_limit", "workers")
# A public demo's own defaults (an environment variable still overrides each): one job at a time per
# visitor and per client IP, a few small runs each, a small total, visitors' runs kept a day.
DEMO_DEFAULTS = dict(queue_limit=0, max_client_jobs=1, max_epochs=5, max_job_seconds=120.0, max_runs=20,
                     max_mb=20.0, max_total_gb=2.0)
class LimitError(ValueError):
    """A job larger than this shared server allows: `template` (an English msgid) and its `params`,
    worded in the reader's language by `i18n.render` as the core's other refusals."""

    def __init__(self, template: str, /, **params):
        self.template, self.params = template, params
        super().__init__(template.format(**params))


RUN_LOCALLY = N_("Run bigger jobs on your own machine: `make run` there, or `python -m mnist_lab`.")
DELETE_OLD = N_("Delete old runs on the Runs page, then start this job again.")
MB = 1_000_000  # MNIST_LAB_MAX_MB and the messages count decimal megabytes, as a disk's size is sold
GB = 1_000 * MB


def size(n_bytes: float) -> Message:
    """Bytes as a person reads them: '38 KB', '12.3 MB', or '4.5 GB' from a gigabyte on."""
    if n_bytes >= GB:
        return Message(N_("{n} GB"), {"n": f"{n_bytes / GB:,.1f}"})
    if n_bytes >= MB:
        return Message(N_("{n} MB"), {"n": f"{n_bytes / MB:,.1f}"})
    return Message(N_("{n} KB"), {"n": f"{max(n_bytes, 0) / 1000:,.0f}"})


def hours(n: float) -> Message:
    """A keep time: '24 hours' ('1 hour'); a time that is not whole hours in minutes and seconds."""
    if n == round(n) and n >= 1:
        return Message.ngettext("{n} hour", "{n} hours", round(n))
    return duration(n * 3600)


@dataclass(frozen=True)
class ServerPolicy:
    mode: str = "local"  # "local" (every run is yours), "shared" (a class: students sign in) or "demo" (public)
    teacher_token: str = ""  # shared mode: whoever gives it signs in as the teacher (identity.Accounts)
    class_view: bool = False  # shared mode: everyone may see (not stop or delete) every run
    queue_limit: int = 2  # jobs a workspace may have waiting besides the one training
    workers: int | None = None  # training processes the app starts; None: one per GPU, one on a CPU machine; 0: none
    # Shared and demo mode only: the largest job one workspace may start.
    max_epochs: int = 20
    max_train_images: int = max(spec.train_count for spec in DATASETS.values())  # every image of any dataset
    max_params: int = 2_000_000
    max_job_seconds: float = 900.0  # estimated before it starts; enforced by the worker too
    # Shared and demo mode only: what one person (a workspace) and the whole server keep. Sized for 60
    # students over a term on a 50 GB disk (bench/bench_bytes.py: a Lab-5 run of 10 epochs keeps
    # 0.77-0.81 MB): 60 x 500 MB = 30 GB of results, the rest for the system, Python and the data.
    max_runs: int = 500  # runs kept per person
    max_mb: float = 500.0  # MB (10^6 bytes) of rows and weights kept per person
    max_total_gb: float = 30.0  # GB of results on the server (the database's pages in use + weights)
    max_client_jobs: int | None = None  # jobs queued or training per client IP (the demo's cap); None: no cap
    keep_hours: float = 24.0  # demo: a visitor's runs are deleted this long after they started

    @property
    def shared(self) -> bool:
        """Every protection of a server that others reach: a class, and the public demo."""
        return self.mode in ("shared", "demo")

    @property
    def demo(self) -> bool:
        return self.mode == "demo"

    @property
    def signin(self) -> bool:
        """Whether a person signs in (a class); a demo's visitors are anonymous."""
        return self.mode == "shared"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, argv: Sequence[str] | None = None) -> ServerPolicy:
        """The policy the environment sets; a bad value is a ValueError naming its variable. Demo mode
        starts from DEMO_DEFAULTS."""
        env = os.environ if env is None else env
        argv = sys.argv[1:] if argv is None else argv
        mode = env.get(ENV["mode"], "local").strip().lower() or "local"
        if "--mode" in argv[:-1]:
            mode = argv[list(argv).index("--mode") + 1].strip().lower()
        if mode not in MODES:
            raise ValueError(f"{ENV['mode']} (or --mode) must be 'local', 'shared' or 'demo'; got '{mode}'.")
        defaults = {**{f: getattr(cls, f) for f in ENV if hasattr(cls, f)}, **(DEMO_DEFAULTS if mode == "demo" else {})}

        def number(name: str, kind):
            text = env.get(ENV[name], "").strip()
            if not text:
                return defaults[name]
            whole = " without decimals" if kind is int else ""
            try:
                value = kind(text)
            except ValueError:
                raise ValueError(f"{ENV[name]} must be a number{whole}; got '{text}'.") from None
            if not math.isfinite(value):
                raise ValueError(f"{ENV[name]} must be a number; got '{text}'.")
            if not (value > 0 or (name in ZERO_ALLOWED and value == 0)):
                raise ValueError(f"{ENV[name]} must be above 0{' (or 0)' if name in ZERO_ALLOWED else ''}; "
                                 f"got '{text}'.")
            return value
        return cls(mode=mode, teacher_token=env.get(ENV["teacher_token"], ""),
                   class_view=env.get(ENV["class_view"], "").strip().lower() in ("1", "true", "yes", "on"),
                   queue_limit=number("queue_limit", int), workers=number("workers", int),
                   max_epochs=number("max_epochs", int), max_train_images=number("max_train_images", int),
                   max_params=number("max_params", int), max_job_seconds=number("max_job_seconds", float),
                   max_runs=number("max_runs", int), max_mb=number("max_mb", float),
                   max_total_gb=number("max_total_gb", float), max_client_jobs=number("max_client_jobs", int),
                   keep_hours=number("keep_hours", float))

    def asker(self, identity: Identity | None) -> Asker:
        """Who a session of this server is, for `access.may`: the signed-in person (or demo visitor)
        `identity`; None, no one signed in, is an asker with no workspace that sees nothing. A local
        install's one user is `access.LOCAL` whatever is given."""
        if not self.shared:
            return LOCAL
        if identity is None:
            return Asker("", shared=True, demo=self.demo)
        return Asker(identity.workspace, shared=True, teacher=identity.role == "teacher", class_view=self.class_view,
                     demo=self.demo, student_id=identity.student_id, name=identity.name)

    def check(self, spec, device_type: str, standing: Standing | None = None) -> None:
        """Refuse, in shared and demo mode, a job over this server's limits (saying how to run it
        locally), one whose data folder is not the server's own, and, given what the asker and the
        server keep (`quota.standing`), one that would pass a per-person or the total cap (saying what
        to delete or whom to ask). Called before anything is queued."""
        if not self.shared:
            return
        own = (None, os.environ.get(DATA_DIR_ENV) or None)
        for *_, data_cfg in spec.run_configs():
            if data_cfg.data_dir not in own:  # a job spec names no folder of the server
                raise ConfigError("data.data_dir", data_cfg.data_dir, N_(
                    "A job on this server reads the server's own copy of the data: leave the data folder out of "
                    "the job."))
        n_images = spec.data.n_train()  # the dataset's own count when there is no limit
        if spec.train.epochs > self.max_epochs:
            raise LimitError(N_("This shared server trains at most {limit} epochs per run; you asked for {epochs}. "
                                "{local}"), limit=self.max_epochs, epochs=spec.train.epochs, local=RUN_LOCALLY)
        if n_images > self.max_train_images:
            raise LimitError(N_("This shared server trains on at most {limit} images; choose fewer training images. "
                                "{local}"), limit=integer(self.max_train_images), local=RUN_LOCALLY)
        params = max(count for _, count in job_models(spec))
        if params > self.max_params:
            raise LimitError(N_("This shared server trains networks of at most {limit} parameters; this one has "
                                "{params}. {local}"), limit=integer(self.max_params), params=integer(params),
                             local=RUN_LOCALLY)
        seconds = estimate_seconds(spec, device_type)
        if seconds > self.max_job_seconds:
            raise LimitError(N_("This job would train for about {time} here, and this shared server allows {limit} "
                                "per job: use fewer epochs, images or seeds. {local}"),
                             time=duration(seconds), limit=duration(self.max_job_seconds), local=RUN_LOCALLY)
        if standing is not None:
            self.check_quota(spec, standing)

    def check_quota(self, spec, standing: Standing) -> None:
        """The per-client, per-person and total caps (quota.py's figures), in that order."""
        if self.max_client_jobs is not None and standing.client_jobs >= self.max_client_jobs:
            raise LimitError(N_("Jobs from your network training or waiting here: {jobs} (at most {limit}). Wait for "
                                "one to finish, then start this one."),
                             jobs=standing.client_jobs, limit=self.max_client_jobs)
        runs, new = standing.usage.runs, spec.runs_total()
        if runs + new > self.max_runs:
            raise LimitError(N_("Runs you keep on this server: {runs}; this job adds {new}, and each person may keep "
                                "at most {limit}. {delete}"), runs=integer(runs), new=integer(new),
                             limit=integer(self.max_runs), delete=DELETE_OLD)
        used, adds = standing.usage.bytes, job_bytes(spec)
        if used + adds > self.max_mb * MB:
            raise LimitError(N_("Your runs take {used} on this server and this job would add about {new}; each "
                                "person may keep at most {limit}. {delete}"), used=size(used), new=size(adds),
                             limit=size(self.max_mb * MB), delete=DELETE_OLD)
        if standing.total_bytes + adds > self.max_total_gb * GB:
            if self.demo:
                raise LimitError(N_("This demo's space for results is full for now ({used} of {limit}); visitors' "
                                    "runs are deleted {hours} after they start: try again later. {local}"),
                                 used=size(standing.total_bytes), limit=size(self.max_total_gb * GB),
                                 hours=hours(self.keep_hours), local=RUN_LOCALLY)
            raise LimitError(N_("The server's disk quota for results is full ({used} of {limit}; this job needs "
                                "about {new}): ask your teacher to make room."), used=size(standing.total_bytes),
                             limit=size(self.max_total_gb * GB), new=size(adds))


def job_models(spec) -> list[tuple[object, int]]:
    """(model config, parameters) of every run a job trains."""
    from mnist_lab.nets.model import count_params

    return [(cfg, count_params(cfg)) for cfg, _, _ in spec.run_configs() for _ in range(spec.runs_per_config())]
