"""The one place training events become results-store rows: a run's row when it starts, its
iterations and epochs as they arrive, its weights and outcome when it ends. The experiments and
lessons only emit events; the process that owns the store records them (a job's executor wires
`Recorder(store)` in, whichever machine trained the runs).
"""
from __future__ import annotations

from mnist_lab import codec
from mnist_lab.data.datasets import DataConfig
from mnist_lab.i18n import N_, SEPARATOR, Message, from_stored, to_stored
from mnist_lab.nets.model import ModelConfig
from mnist_lab.runs.store import ResultStore, run_row
from mnist_lab.runs.weights import SavedRun
from mnist_lab.training.events import EpochEnded, Event, Iterations, RunEnded, RunStarted
from mnist_lab.training.loop import TrainConfig


class Recorder:
    """An `on_event` callback that writes each event to `store` as it arrives, so an interrupted
    run keeps what it finished. Runs started inside `store.context(...)` belong to that job."""

    def __init__(self, store: ResultStore):
        self.store = store
        self._started: dict[str, tuple[RunStarted, ModelConfig, TrainConfig, DataConfig]] = {}  # runs not yet ended

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._start(event)
        elif isinstance(event, Iterations):
            started = self._started.get(event.run_id)
            if started is not None:  # a run this recorder has no row for gets no orphan rows
                self.store.add_iterations(event.run_id, event.first_iteration, event.losses,
                                          started[0].steps_per_epoch)
        elif isinstance(event, EpochEnded):
            self.store.add_epoch(event.run_id, event.metrics)
        elif isinstance(event, RunEnded):
            self._end(event)

    def _start(self, event: RunStarted) -> None:
        model_cfg = codec.from_dict(ModelConfig, event.model, "model")
        train_cfg = codec.from_dict(TrainConfig, event.train, "train")
        data_cfg = codec.from_dict(DataConfig, event.data, "data")
        self.store.start_run(run_row(event.run_id, model_cfg, train_cfg, data_cfg, experiment=event.experiment,
                                     group_id=event.group_id, label=from_stored(event.label_msg) or event.label,
                                     started_at=event.started_at,
                                     device=event.device, engine=event.engine, params=event.params,
                                     data_source=event.data_source, data_source_msg=event.data_source_msg,
                                     steps_per_epoch=event.steps_per_epoch))
        self._started[event.run_id] = (event, model_cfg, train_cfg, data_cfg)

    def _end(self, event: RunEnded) -> None:
        started = self._started.pop(event.run_id, None)
        saved = False
        if started is not None and event.weights is not None and event.status != "failed":  # kept before 'finished'
            _, model_cfg, train_cfg, data_cfg = started
            self.store.save_weights(SavedRun(event.run_id, model_cfg, train_cfg, data_cfg, event.weights,
                                             event.permutation, event.status, event.final_test_acc))
            saved = True
        # what the run knows of itself; a run that failed part-way keeps the epochs it recorded
        known = dict(epochs_done=event.epochs_done, final_test_acc=event.final_test_acc,
                     diverged_at=event.diverged_at)
        if event.status in ("failed", "interrupted"):  # why it ended early (a full disk, an error, a second Ctrl-C)
            why = from_stored(event.message_msg) or ([Message.verbatim(event.message)] if event.message else [])
            if not why and event.status == "failed":  # a failed run's reason is never empty
                why = [Message(N_("the run failed; no reason was given"))]
            # every part, in each reader's language; none: the job's end gives its reason (end_job_runs)
            said = dict(stop_reason=SEPARATOR.join(str(m) for m in why),
                        stop_reason_msg=to_stored(why if len(why) > 1 else why[0])) if why else {}
        else:
            said = dict(message=event.message, message_msg=event.message_msg or None)
        try:
            self.store.finish_run(event.run_id, event.status, event.seconds, **said,
                                  **{k: v for k, v in known.items() if v is not None})
        except BaseException:
            if saved:  # a run whose end was not recorded is ended 'failed' (or by the next open): no weights
                self.store.delete_weights([event.run_id])
            raise
        if event.status == "failed":  # a failed run is not inspectable, whatever an earlier end kept
            self.store.delete_weights([event.run_id])
