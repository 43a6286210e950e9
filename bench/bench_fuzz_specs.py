"""Configs and job specs under fuzzing (issue 21): N random configs and N fuzzed job-spec JSON
documents go through what a worker and the app do with a spec (decode, validate, pre-flight,
count its runs, estimate its time); every refusal must be a ValueError (a ConfigError), nothing
else. A sample of the accepted ones is then trained for real on a tiny subset (64 images, 1
epoch, the CPU), under a wall cap: nothing but a ValueError or DataUnavailableError may escape,
and no run whose loss or accuracy is NaN or infinite may be called finished.

    python bench/bench_fuzz_specs.py                 # 1,000 + 1,000, then every accepted spec trained
    python bench/bench_fuzz_specs.py --n 100 --execute 10
    python bench/bench_fuzz_specs.py --seed 3 --wall 120

Prints, per campaign, the outcomes by exception type, and `non-finite results called finished: 0`.
Exits 1 when anything other than a ValueError escaped, or a non-finite result was called finished.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import random
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_lab.data.datasets import DATASETS, DataConfig, DataUnavailableError  # noqa: E402
from mnist_lab.lab.experiments import CompareConfig, SweepConfig  # noqa: E402
from mnist_lab.lab.lessons import LESSONS, LessonConfig  # noqa: E402
from mnist_lab.nets.presets import PRESETS  # noqa: E402
from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.service.estimate import estimate_seconds  # noqa: E402
from mnist_lab.service.jobs import KINDS, JobSpec, execute, lesson_jobs, lesson_spec  # noqa: E402
from mnist_lab.service.policy import ServerPolicy  # noqa: E402
from mnist_lab.training.loop import TrainConfig  # noqa: E402

# ------------------------------------------------------------------------------------ values

HOSTILE = [
    None, True, False, 0, 1, -1, 2, 3, 7, 64, 2**31, 2**63, 2**70, -2**70, 10**30,
    0.0, -0.0, 1e-30, 0.5, 1.5, 1e30, 1e308, float("nan"), float("inf"), float("-inf"),
    "", "cnn", "fc", "gap", "same", "valid", "mnist", "cifar10", "auto", "cpu", "cuda", "cuda:7", "plain",
    "sgd", "adam", "shuffle", "\x00", "é中文", "../../etc/passwd", "a" * 5000, "1e400", "NaN",
    [], [1], [3, 5], [0], [-1], [2**70], [1.5], ["x"], [None], [[1]], list(range(200)), [1] * 5000,
    {}, {"type": "conv"}, {"a": 1}, {"type": "conv", "channels": 8}, {"kind": "fc"},
]


def hostile(rng: random.Random):
    return copy.deepcopy(rng.choice(HOSTILE))


# Plausible values per field name: most draws are accepted, so the run path is exercised too.
PLAUSIBLE = {
    "kind": ["cnn", "fc"], "conv_channels": [[10, 20], [8], [4, 8, 16], [16, 32, 64, 128]],
    "kernel_size": [1, 3, 5, 7], "padding": ["valid", "same"], "pool_before_relu": [True, False],
    "batch_norm": [True, False], "dropout": [0.0, 0.25, 0.5], "hidden": [[], [50], [32, 16], [256, 256]],
    "softmax_before_loss": [False, True], "in_channels": [1, 3], "image_size": [28, 32], "n_classes": [10],
    "head": ["fc", "gap", "gap-fc"], "blocks": [[], [], [{"type": "conv", "channels": 8}]],
    "epochs": [1, 2], "batch_size": [16, 32, 64], "optimizer": ["sgd", "adam"],
    "lr": [0.01, 0.1, 0.001, 1.0, 10.0, 5.0], "momentum": [0.0, 0.5, 0.9, 0.99], "seed": [0, 1, 2**40],
    "device": ["auto", "cpu"], "shuffle": [True, False], "eval_batch_size": [1000, 7], "progress_every_s": [0.25, 0],
    "engine": ["auto", "plain"], "augment": [False, True], "sort_by_label": [False, True],
    "dataset": ["mnist", "mnist", "mnist", "fashion-mnist", "cifar10"], "normalize": ["dataset", "none", "mnist"],
    "train_limit": [None, 64, 100, 50000], "test_limit": [None, 64, 10000],
    "permute_pixels": [False, True], "permutation_seed": [0, 5], "data_dir": [None],
    "conv_layers": [[1, 2], [1], [3]], "kernel_sizes": [[3, 5], [5]], "hidden_units": [[0], [0, 32]],
    "seeds": [1, 2, 3], "base_channels": [4, 16], "cnn": [None], "fc": [None],
    "name": list(LESSONS), "full": [False, True], "label": ["", "my job"],
}


def field_value(rng: random.Random, name: str, p_hostile: float):
    if name in PLAUSIBLE and rng.random() > p_hostile:
        return copy.deepcopy(rng.choice(PLAUSIBLE[name]))
    return hostile(rng)


def random_config(rng: random.Random, cls, p_hostile: float) -> dict:
    """A dict for `cls` (a config dataclass): each field left out, plausible or hostile; now and
    then an unknown field."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if not f.init or rng.random() < 0.3:
            continue
        out[f.name] = field_value(rng, f.name, p_hostile)
    if rng.random() < 0.03:
        out["surprise"] = 1
    return out


def random_spec_dict(rng: random.Random) -> dict:
    """A job spec as a dict: a kind, and random train, data and per-kind configs (a network
    mostly fitted to the dataset drawn, so that many specs are accepted and go on to train)."""
    from mnist_lab.nets.model import ModelConfig

    kind = rng.choice(KINDS) if rng.random() > 0.03 else hostile(rng)
    p = rng.choice([0.0, 0.0, 0.02, 0.05, 0.15, 0.4])
    spec = {"kind": kind, "train": random_config(rng, TrainConfig, p), "data": random_config(rng, DataConfig, p)}
    dataset = DATASETS.get(spec["data"].get("dataset", "mnist"), DATASETS["mnist"]) \
        if isinstance(spec["data"].get("dataset", "mnist"), str) else DATASETS["mnist"]

    def model() -> dict:
        cfg = random_config(rng, ModelConfig, p)
        if rng.random() < 0.9:
            cfg.update(in_channels=dataset.channels, image_size=dataset.image_size, n_classes=dataset.n_classes)
        return cfg
    parts = {"train": ("model", model), "sweep": ("sweep", lambda: random_config(rng, SweepConfig, p)),
             "compare": ("compare", lambda: random_config(rng, CompareConfig, p)),
             "lesson": ("lesson", lambda: random_config(rng, LessonConfig, p))}
    if isinstance(kind, str) and kind in parts:
        name, make = parts[kind]
        spec[name] = make()
        if name == "compare" and rng.random() < 0.5:
            spec[name]["cnn"] = model() | {"kind": "cnn"}
    lesson = spec.get("lesson")
    if isinstance(lesson, dict) and str(lesson.get("name", "shuffle")) in LESSONS and rng.random() < 0.8:
        try:  # mostly the dataset the lesson runs on, as lesson_spec writes it
            spec["data"]["dataset"] = LessonConfig(name=lesson.get("name", "shuffle"),
                                                   dataset=lesson.get("dataset", "")).resolved_dataset()
        except (TypeError, KeyError, ValueError):
            pass  # a hostile name or dataset: left as drawn
    if rng.random() < 0.03:  # a part another kind uses
        spec[rng.choice(["model", "sweep", "compare", "lesson"])] = {}
    if rng.random() < 0.2:
        spec["label"] = field_value(rng, "label", p)
    return spec


# ------------------------------------------------------------------------------------ real specs, mutated

def real_specs() -> list[JobSpec]:
    train, data = TrainConfig(device="cpu"), DataConfig(train_limit=64, test_limit=64)
    specs = [JobSpec("train", train, data, model=p.model) for p in PRESETS.values()]
    specs.append(JobSpec("sweep", train, data, sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=1)))
    specs.append(JobSpec("compare", train, data, compare=CompareConfig(seeds=1)))
    specs += [lesson_spec(LessonConfig(name=n, seeds=1, epochs=1, train_limit=64, test_limit=64), device="cpu")
              for n in LESSONS]
    return specs


def paths(node, prefix=()):
    """Every (path, value) inside a JSON value."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


def _set(doc, path, value):
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _delete(doc, path):
    if not path:
        return doc
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


def mutate(rng: random.Random, doc):
    """One structural mutation of a JSON value."""
    path, value = rng.choice(list(paths(doc)))
    how = rng.choice(["delete", "replace", "replace", "retype", "nest", "huge", "list", "unknown", "dup"])
    if how == "delete":
        return _delete(doc, path) if path else {}
    if how == "replace":
        return _set(doc, path, hostile(rng))
    if how == "retype":
        swapped = {int: str, float: str, str: lambda v: len(v), bool: int, type(None): lambda v: {},
                   list: lambda v: {str(i): x for i, x in enumerate(v)}, dict: lambda v: list(v.values())}
        return _set(doc, path, swapped[type(value)](value))
    if how == "nest":
        depth = rng.choice([2, 50, 200])  # deeper: text_mutation
        node = value
        for _ in range(depth):
            node = [node]
        return _set(doc, path, node)
    if how == "huge":
        return _set(doc, path, rng.choice([2**64, -2**64, 10**300, 1e308, -1e308, 2**1000]))
    if how == "list":
        return _set(doc, path, [value] * rng.choice([2, 17, 1000]))
    if how == "unknown" and isinstance(value, dict):
        value[rng.choice(["x", "", "\x00", "kind2"])] = hostile(rng)
        return doc
    if how == "dup" and isinstance(value, dict) and value:
        key = rng.choice(list(value))
        value[key] = copy.deepcopy(value)  # an object inside itself
        return doc
    return _set(doc, path, hostile(rng))


def text_mutation(rng: random.Random, text: str) -> str:
    """A mutation of the JSON text itself (truncation, a flipped character, deep nesting, a huge number)."""
    how = rng.choice(["truncate", "flip", "insert", "nest", "number", "bom"])
    i = rng.randrange(len(text) + 1)
    if how == "truncate":
        return text[:i]
    if how == "flip" and text:
        i = min(i, len(text) - 1)
        return text[:i] + chr(rng.randrange(1, 0x3000)) + text[i + 1:]
    if how == "insert":
        return text[:i] + rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "null", ",", "]", "\\u0000"]) + text[i:]
    if how == "nest":
        n = rng.choice([1000, 100_000])
        return "[" * n + text + "]" * n
    if how == "number":
        return text.replace("64", "9" * rng.choice([20, 400, 5000]), 1)
    return "\ufeff" + text


def fuzzed_spec_text(rng: random.Random, bases: list[str]) -> str:
    text = rng.choice(bases)
    if rng.random() < 0.2:
        return text_mutation(rng, text)
    doc = json.loads(text)
    for _ in range(rng.choice([1, 1, 2, 3])):
        doc = mutate(rng, doc)
    return json.dumps(doc)


# ------------------------------------------------------------------------------------ what a spec goes through

SHARED = ServerPolicy(mode="shared")


def accept(spec: JobSpec) -> None:
    """What the app and the worker do with a spec before training it."""
    spec.validate()
    spec.preflight()
    spec.runs_total()
    assert isinstance(spec.title, str)
    estimate_seconds(spec, "cpu")
    if spec.kind == "lesson":
        lesson_jobs(spec)
    if SHARED is not None:
        try:
            SHARED.check(spec, "cpu")
        except ValueError:
            pass  # over a shared server's limits: a refusal, and the spec itself is fine


def tiny(spec: JobSpec) -> JobSpec:
    """The spec cut to a quick run: 64 images, 1 epoch, one seed, the CPU, at most 2 values per sweep axis."""
    # batches of at most 8 (8 steps): enough for lr 10 to blow a wide FC net up, as on full data
    train = replace(spec.train, epochs=1, device="cpu", batch_size=min(spec.train.batch_size, 8),
                    eval_batch_size=min(spec.train.eval_batch_size, 1000))
    data = replace(spec.data, train_limit=64, test_limit=64)
    out = replace(spec, train=train, data=data)
    if spec.sweep is not None:
        s = spec.sweep
        out = replace(out, sweep=replace(s, seeds=1, conv_layers=s.conv_layers[:2], kernel_sizes=s.kernel_sizes[:2],
                                         hidden_units=s.hidden_units[:2]))
    if spec.compare is not None:
        out = replace(out, compare=replace(spec.compare, seeds=1))
    if spec.lesson is not None:
        out = replace(out, lesson=replace(spec.lesson, seeds=1, epochs=1, train_limit=64, test_limit=64))
    return out


def results_of(result) -> list:
    return [result] if hasattr(result, "run_id") else list(getattr(result, "results", []))


def non_finite_finished(result) -> int:
    """Runs called finished whose losses, test loss or accuracy are not finite; summaries whose mean is NaN."""
    bad = 0
    for r in results_of(result):
        numbers = list(r.losses) + [x for e in r.epochs for x in (e.train_loss, e.test_loss, e.test_acc)]
        if r.status == "finished" and not all(math.isfinite(x) for x in numbers):
            bad += 1
    summary = getattr(result, "summary", None)
    if summary is not None and len(summary) and "mean" in summary:
        bad += int(((summary["n"] > 0) & ~summary["mean"].map(lambda v: math.isfinite(v))).sum())
    return bad


REFUSALS: collections.Counter = collections.Counter()  # refusal templates, for --why


def outcome(fn) -> str:
    try:
        fn()
    except ValueError as exc:
        REFUSALS[getattr(exc, "template", str(exc))[:70]] += 1
        return f"refused ({type(exc).__name__})"
    except Exception as exc:  # noqa: BLE001 - what the campaign counts
        return f"ESCAPED {type(exc).__name__}: {str(exc)[:100]}"
    return "accepted"


def campaign(name: str, texts, seen_escapes: list) -> tuple[collections.Counter, list[JobSpec]]:
    counts, accepted = collections.Counter(), []
    for text in texts:
        holder = {}

        def run(text=text, holder=holder):
            holder["spec"] = JobSpec.from_json(text)
            accept(holder["spec"])
        result = outcome(run)
        counts[result.split(":")[0]] += 1
        if result.startswith("ESCAPED"):
            seen_escapes.append((name, result, text[:300]))
        elif result == "accepted":
            accepted.append(holder["spec"])
    return counts, accepted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="documents per campaign (default 1,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--execute", type=int, default=None,
                        help="accepted specs trained for real, a random sample (default: all of them)")
    parser.add_argument("--wall", type=float, default=1200.0, help="seconds for the training part, in all")
    parser.add_argument("--per-job", type=float, default=30.0, help="seconds before one training job is stopped")
    parser.add_argument("--why", action="store_true", help="also print the 15 commonest refusals")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    escapes: list = []

    t0 = time.perf_counter()
    config_texts = [json.dumps(random_spec_dict(rng)) for _ in range(args.n)]
    config_counts, config_ok = campaign("configs", config_texts, escapes)
    t1 = time.perf_counter()
    bases = [s.to_json() for s in real_specs()]
    spec_texts = [fuzzed_spec_text(rng, bases) for _ in range(args.n)]
    spec_counts, spec_ok = campaign("specs", spec_texts, escapes)
    t2 = time.perf_counter()
    print(f"random configs:   {args.n} in {t1 - t0:.1f} s: {dict(sorted(config_counts.items()))}")
    print(f"fuzzed job specs: {args.n} in {t2 - t1:.1f} s: {dict(sorted(spec_counts.items()))}")

    if args.why:
        for template, k in REFUSALS.most_common(15):
            print(f"  {k:5d}  {template}")

    pool = config_ok + spec_ok
    sample = rng.sample(pool, len(pool) if args.execute is None else min(args.execute, len(pool)))
    ran, run_counts, bad_finished, runs = 0, collections.Counter(), 0, 0
    deadline = time.perf_counter() + args.wall
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(Path(tmp) / "fuzz.sqlite")
        for spec in sample:
            if time.perf_counter() > deadline:
                break
            ran += 1
            cancel = threading.Event()
            timer = threading.Timer(args.per_job, cancel.set)
            timer.start()
            holder, small = {}, spec
            try:
                small = tiny(spec)
                small.preflight()  # the cut may refuse (a batch larger than 64 images): not trained
                holder["result"] = execute(small, store, cancel=cancel)
                kind = "trained"
            except (ValueError, DataUnavailableError) as exc:
                kind = f"refused ({type(exc).__name__})"
                if args.why:
                    print(f"  not trained: {str(exc)[:150]}")
            except Exception as exc:  # noqa: BLE001 - what the campaign counts
                kind = f"ESCAPED {type(exc).__name__}"
                escapes.append(("execute", f"{kind}: {str(exc)[:100]}", small.to_json()[:300]))
                traceback.print_exc()
            finally:
                timer.cancel()
            run_counts[kind] += 1
            if "result" in holder:
                runs += len(results_of(holder["result"]))
                bad_finished += non_finite_finished(holder["result"])
                statuses = collections.Counter(r.status for r in results_of(holder["result"]))
                for status, k in statuses.items():
                    run_counts[f"runs {status}"] += k
        store.close()
    t3 = time.perf_counter()
    print(f"trained (tiny, CPU): {ran} of {len(pool)} accepted specs, {runs} runs in {t3 - t2:.1f} s: "
          f"{dict(sorted(run_counts.items()))}")
    print(f"exceptions other than ValueError: {len(escapes)}")
    for where, what, text in escapes[:20]:
        print(f"  [{where}] {what}\n      {text!r}")
    print(f"non-finite results called finished: {bad_finished}")
    return 1 if escapes or bad_finished else 0


if __name__ == "__main__":
    sys.exit(main())
