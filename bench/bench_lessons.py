"""Every week-2 lesson at its default (quick) settings, timed (issue 22, "lessons that teach"):
per variant the test accuracy mean ± sd over the lesson's seeds, whether it learned, and the
lesson's wall time. A run learned when its test accuracy is at least chance + 10 points and its
final epoch's training loss is below 0.9 × ln(number of classes) (the findings' rule).

    python bench/bench_lessons.py                       # every lesson, its default dataset
    python bench/bench_lessons.py residual shuffle      # only these
    python bench/bench_lessons.py cifar-nets --dataset mnist
    python bench/bench_lessons.py --epochs 2 --train-limit 4000 residual   # try other settings

Variants meant to hurt ("sorted by label", "softmax before CrossEntropyLoss") are expected not
to learn; every other variant should. Exits 1 if a variant that should learn did not.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_lab.data.datasets import DataUnavailableError, load_raw  # noqa: E402
from mnist_lab.lab.experiments import run_verdict  # noqa: E402
from mnist_lab.lab.lessons import LESSONS, LessonConfig, run_lesson  # noqa: E402
from mnist_lab.service.jobs import lesson_spec  # noqa: E402


def bench(name: str, args) -> bool:
    cfg = LessonConfig(name, dataset=args.dataset if args.dataset in LESSONS[name].datasets else "",
                       seeds=args.seeds, epochs=args.epochs, train_limit=args.train_limit, test_limit=args.test_limit)
    spec = lesson_spec(cfg, device=args.device, engine=args.engine)
    try:
        load_raw(spec.data)  # before timing; a dataset this machine lacks: the lesson's next one
    except DataUnavailableError:
        tried = [*getattr(args, "tried", []), spec.data.dataset]
        others = [d for d in LESSONS[name].datasets if d not in tried]
        if not others:
            print(f"\n{name}: none of its datasets is here ({', '.join(tried)}): not run")
            return False
        print(f"\n{name}: no {spec.data.dataset} here; on {others[0]} instead (the page's fallback)")
        return bench(name, argparse.Namespace(**{**vars(args), "dataset": others[0], "tried": tried}))
    start = time.perf_counter()
    result = run_lesson(cfg, spec.train, spec.data)
    wall = time.perf_counter() - start
    print(f"\n{name} on {spec.data.dataset}: {spec.train.epochs} epoch(s), "
          f"{spec.data.train_limit or 'all'} images, {cfg.n_seeds()} seeds, {wall:.1f} s"
          + (f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""))
    ok = True
    by_label: dict[str, list] = {}
    for r in result.results:
        by_label.setdefault(r.label, []).append(r)
    for label, runs in by_label.items():
        accs = [100 * r.epochs[-1].test_acc for r in runs if r.epochs] or [float("nan")]  # none ended an epoch
        losses = [r.epochs[-1].train_loss for r in runs if r.epochs] or [float("nan")]
        yes = [run_verdict(r) == "learned" for r in runs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        should = not any(c.hurts for c in LESSONS[name].changes if c.label == label)
        verdict = "learned" if all(yes) else ("did not learn" if not any(yes) else f"{sum(yes)}/{len(yes)} learned")
        flag = "" if all(yes) == should else ("  <-- expected to learn" if should else "  (meant to hurt, but learned)")
        ok &= all(yes) or not should
        print(f"  {label:<48} {statistics.mean(accs):6.2f} ± {sd:5.2f} %  loss {statistics.mean(losses):.3f}  "
              f"{statistics.median(r.seconds for r in runs):6.2f} s/run  {verdict}{flag}")
    for line in result.reading.render():
        print("   ", line)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"lessons (default: all of {', '.join(LESSONS)})")
    parser.add_argument("--dataset", default="", help="where the lesson runs on it (default: the lesson's first)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ok = all([bench(name, args) for name in (args.names or list(LESSONS))])
    print(f"\nall lessons: {time.perf_counter() - start:.1f} s; every variant that should learn did: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
