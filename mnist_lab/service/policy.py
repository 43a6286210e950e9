"""How a server shares itself: the mode (local: one user; shared: a class or a hosted demo, each
browser its own workspace), the teacher token, the queue and per-job limits (checked against
service/estimate.py's idle-machine estimate). Read from the environment (or `--mode` after
`streamlit run streamlit_app.py --`). No streamlit here.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mnist_lab.data.datasets import DATASETS
from mnist_lab.i18n import N_, duration, integer
from mnist_lab.service.access import Asker
from mnist_lab.service.estimate import estimate_seconds

MODES = ("local", "shared")
ENV = dict(mode="MNIST_LAB_MODE", teacher_token="MNIST_LAB_TEACHER_TOKEN", class_view="MNIST_LAB_CLASS_VIEW",
           queue_limit="MNIST_LAB_QUEUE_LIMIT", workers="MNIST_LAB_WORKERS", max_epochs="MNIST_LAB_MAX_EPOCHS",
           max_train_images="MNIST_LAB_MAX_TRAIN_IMAGES", max_params="MNIST_LAB_MAX_PARAMS",
           max_job_seconds="MNIST_LAB_MAX_JOB_SECONDS")


class LimitError(ValueError):
    """A job larger than this shared server allows: `template` (an English msgid) and its `params`,
    worded in the reader's language by `i18n.render` as the core's other refusals."""

    def __init__(self, template: str, /, **params):
        self.template, self.params = template, params
        super().__init__(template.format(**params))


RUN_LOCALLY = N_("Run bigger jobs on your own machine: `make run` there, or `python -m mnist_lab`.")


@dataclass(frozen=True)
class ServerPolicy:
    mode: str = "local"  # "local" (every run is yours) or "shared" (a workspace per browser)
    teacher_token: str = ""  # shared mode: whoever gives it sees and exports every run
    class_view: bool = False  # shared mode: everyone may see (not stop or delete) every run
    queue_limit: int = 2  # jobs a workspace may have waiting besides the one training
    workers: int | None = None  # training processes; None: one per GPU, one on a CPU machine
    # Shared mode only: the largest job one workspace may start.
    max_epochs: int = 20
    max_train_images: int = max(spec.train_count for spec in DATASETS.values())  # every image of any dataset
    max_params: int = 2_000_000
    max_job_seconds: float = 900.0  # estimated before it starts; enforced by the worker too

    @property
    def shared(self) -> bool:
        return self.mode == "shared"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, argv: Sequence[str] | None = None) -> ServerPolicy:
        env = os.environ if env is None else env
        argv = sys.argv[1:] if argv is None else argv
        mode = env.get(ENV["mode"], "local").strip().lower() or "local"
        if "--mode" in argv[:-1]:
            mode = argv[list(argv).index("--mode") + 1].strip().lower()
        if mode not in MODES:
            raise ValueError(f"{ENV['mode']} (or --mode) must be 'local' or 'shared'; got '{mode}'.")

        def number(name: str, kind, default):
            text = env.get(ENV[name], "").strip()
            if not text:
                return default
            try:
                value = kind(text)
            except ValueError:
                raise ValueError(f"{ENV[name]} must be a number; got '{text}'.") from None
            if not value > 0 and not (name == "queue_limit" and value == 0):
                raise ValueError(f"{ENV[name]} must be above 0; got '{text}'.")
            return value
        return cls(mode=mode, teacher_token=env.get(ENV["teacher_token"], ""),
                   class_view=env.get(ENV["class_view"], "").strip().lower() in ("1", "true", "yes", "on"),
                   queue_limit=number("queue_limit", int, cls.queue_limit), workers=number("workers", int, None),
                   max_epochs=number("max_epochs", int, cls.max_epochs),
                   max_train_images=number("max_train_images", int, cls.max_train_images),
                   max_params=number("max_params", int, cls.max_params),
                   max_job_seconds=number("max_job_seconds", float, cls.max_job_seconds))

    def is_teacher(self, token: str | None) -> bool:
        return bool(self.teacher_token) and token == self.teacher_token

    def asker(self, workspace: str, token: str | None = None) -> Asker:
        """Who a session of this server is, for `access.may`: its workspace, and whether it gave
        the teacher token."""
        return Asker(workspace, shared=self.shared, teacher=self.is_teacher(token), class_view=self.class_view)

    def check(self, spec, device_type: str) -> None:
        """Refuse, in shared mode, a job over this server's limits, saying how to run it locally."""
        if not self.shared:
            return
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


def job_models(spec) -> list[tuple[object, int]]:
    """(model config, parameters) of every run a job trains."""
    from mnist_lab.nets.model import count_params

    return [(cfg, count_params(cfg)) for cfg, _, _ in spec.run_configs() for _ in range(spec.runs_per_config())]
