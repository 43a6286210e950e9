"""Issue 21's campaign on the command line: bad lines across every command, hand-written and
random mutations of good lines (wrong types, huge ints, NaN, negatives, unknown choices,
conflicting flags, paths such as ../, /proc/version, /etc/passwd), each in a fresh temporary
folder (the cwd two levels down, so ../ stays inside it). Counts tracebacks (an exception out of
`main`, or "Traceback" printed), exit codes other than 2 for the lines expected to be refused,
and what a refused line left behind (a file or folder, a row in the database). A mutation may
happen to be a good line: it is trained (tiny) and counted as accepted, not as a failure.

    python bench/bench_cli_fuzz.py --n 200 --subprocess 10
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mnist_lab.cli.main import main  # noqa: E402

HUGE = "99999999999999999999"
# The good line of each command, cheap to run when a mutation happens to leave it good.
GOOD = {
    "presets": "presets",
    "train": "train --preset tiny-fc --train-limit 128 --epochs 1 --batch-size 64 --lr 0.01 --seed 0 --device cpu "
             "--quiet --out {out}",
    "sweep": "sweep --conv-layers 1 --kernel-sizes 3 --hidden-units 0 --seeds 1 --base-channels 4 --train-limit 128 "
             "--epochs 1 --device cpu --quiet --out {out}",
    "compare": "compare --seeds 1 --train-limit 128 --epochs 1 --permutation-seed 0 --device cpu --quiet --out {out}",
    "lesson": "lesson softmax --seeds 1 --train-limit 128 --test-limit 100 --epochs 1 --device cpu --quiet "
              "--out {out}",
    "report": "report --out {out}",
    "worker": "worker --device cpu --slot 0 --idle-exit 0.5 --max-job-seconds 60 --nice 0 --no-warm --max-jobs 1",
    "inspect": "inspect {run} --out {out}",
    "predict": "predict {run} {img}",
    "export": "export {run} --out {out}",
}
NUMBERS = [HUGE, "-" + HUGE, "-1", "0", "nan", "inf", "-inf", "1e999", "x", "", "2.5", "0x10", "1e3", "9" * 400]
CHOICES = ["bogus", "", "../x", "CPU", "sgd;rm", "'"]
PATHS = ["../", "../../x", "/proc/version", "/proc/mnist-lab-x/y", "/etc/passwd", "/dev/null", "{file}", "{empty}",
         "{file}/x", "{passwd}"]  # never a path this process could create outside its folder (it may run as root)
CONFLICTS = {  # a flag the line's run would ignore, or a wrong flag for the command
    "train": ["--preset tiny-fc --kernel-size 3", "--preset tiny-fc --padding same", "--preset tiny-fc --batch-norm",
              "--permutation-seed 5", "--optimizer adam --momentum 0.9", "--kind fc --pool-before-relu",
              "--train-limit 10000000", "--seeds 2", "--bogus"],
    "sweep": ["--seed 3", "--permutation-seed 2", "--optimizer adam --momentum 0.5", "--preset lab5", "--kind fc"],
    "compare": ["--seed 1", "--permute-pixels", "--optimizer adam --momentum 0.9", "--conv-layers 1"],
    "lesson": ["--seed 1", "--dataset cifar10", "--permute-pixels", "--bogus", "--train 5"],
    "worker": ["--seeds 3", "--epochs 1"],
    "report": ["--seed 1", "--db /proc/version"],
    "inspect": ["--seed 1", "--lang xx"],
    "predict": ["--out {out}"],
    "export": ["--run x"],
    "presets": ["--seed 1", "extra"],
}
# Hand-written: each expected to be refused (exit 2).
HAND = [
    "", "fly", "--lang xx presets", "train --lang", "presets --seed 1", "lesson softmax --seed 1",
    "train --train-lim 5", "worker --idle 5",
    "train --preset tiny-fc --kernel-size 3", "train --preset tiny-fc --padding same",
    "train --preset tiny-fc --pool-before-relu", "train --kind fc --kernel-size 5",
    "train --preset tiny-fc --batch-norm",
    "train --permutation-seed 3", "train --optimizer adam --momentum 0.9", "train --preset lab5 --optimizer adam "
    "--momentum 0", "sweep --seed 3", "sweep --permutation-seed 7", "compare --seed 1", "compare --permute-pixels",
    f"train --train-limit {HUGE}", "train --train-limit 10000000", f"train --epochs {HUGE}",
    f"train --batch-size {HUGE}",
    "train --lr 1e999", "train --momentum -inf", "train --dropout inf", f"train --seed {HUGE}",
    f"train --kernel-size {HUGE}", f"train --conv-channels {HUGE}", f"train --hidden {HUGE}",
    f"train --permute-pixels --permutation-seed {HUGE}", f"sweep --seeds {HUGE}", f"sweep --conv-layers {HUGE}",
    f"sweep --base-channels {HUGE}", f"sweep --hidden-units {HUGE}", "sweep --kernel-sizes nan",
    f"compare --seeds {HUGE}",
    "compare --epochs 0", f"lesson softmax --test-limit {HUGE}", f"lesson softmax --train-limit {HUGE}",
    f"lesson softmax --seeds {HUGE}", f"lesson softmax --epochs {HUGE}", "lesson", "lesson nope",
    "lesson shuffle --dataset cifar10", "lesson softmax --device bogus", f"worker --slot {HUGE}", "worker --slot -1",
    "worker --max-job-seconds nan", "worker --max-job-seconds -1", "worker --idle-exit -5", "worker --idle-exit nan",
    f"worker --nice {HUGE}", "worker --max-jobs 0", f"worker --parent-pid {HUGE}", "worker --device bogus",
    "worker --device cuda:7", "train --ray-address 10.0.0.1:6379", "sweep --executor bogus",
    "worker --executor ray --device cpu", "worker --ray-address h:1", "train --executor ray --ray-address nope",
    "train --executor ray --ray-address 127.0.0.1:1", "report", "report --out /etc/passwd",
    "report --out {out} --db /proc/version",
    "report --out {out} --db {empty}", "inspect ../etc --out {out}", "inspect no-such-run --out {out}",
    "inspect {run} --out {file}", "inspect {run} --out /proc/mnist-lab-out", "predict no-such-run {file}",
    "predict {run} {empty}/none.png", "predict {run} {file}", "predict {run} /proc/version", "predict {run} /dev/null",
    "export ../../x --out {out}", "export {run} --out {file}", "export {run} --out /etc/passwd",
    "export {run} --db /proc/version --out {out}", "train --out {file}", "train --out {out}/deeper --db {file}",
    "train --db /proc/version --out {out}", "train --db {passwd} --out {out}", "train --out {out} --data-dir {empty}",
    "train --dataset cifar10 --preset cifar-course --data-dir {empty} --out {out}",
    "sweep --conv-layers 1 --kernel-sizes 3 --data-dir {empty} --out {out}", "compare --data-dir {empty} --out {out}",
    "lesson softmax --out {file}", "lesson cifar-nets --data-dir {empty} --out {out}", "train --data-dir /proc/version",
]
ADJUSTED = [  # accepted with an adjustment: the line must say so on stderr (`note:`)
    "sweep --conv-layers 1 1 --kernel-sizes 3 3 --seeds 1 --base-channels 4 --train-limit 128 --device cpu --quiet",
    "train --preset tiny-fc --sort-by-label --train-limit 128 --device cpu --quiet",
]
TRAINS = ("train", "sweep", "compare", "lesson")


def mutate(rng: random.Random) -> str:
    """One random bad line: a good line with one value, flag or path made bad, or a conflict added."""
    command = rng.choice(list(GOOD))
    words = shlex.split(GOOD[command])
    values = [i for i in range(1, len(words)) if not words[i].startswith("--")]
    op = rng.choice(["number", "choice", "path", "conflict", "drop"])
    if op == "conflict" or not values:
        words += shlex.split(rng.choice(CONFLICTS[command]))
    elif op == "drop":
        del words[rng.choice(values)]
    else:
        i = rng.choice(values)
        pool = {"number": NUMBERS, "choice": CHOICES, "path": PATHS}[op]
        words[i] = rng.choice(pool)
    return shlex.join(words)


def make_template(folder: Path) -> str:
    """r.sqlite with one kept run, an image, a file, an empty folder, a copy of /etc/passwd."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["train", "--preset", "tiny-fc", "--train-limit", "128", "--device", "cpu", "--quiet", "--db",
                     str(folder / "r.sqlite")]) == 0
    with sqlite3.connect(folder / "r.sqlite") as conn:
        run_id = conn.execute("SELECT run_id FROM runs").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all in the file: a later open changes nothing
    from PIL import Image

    Image.new("L", (28, 28), 0).save(folder / "digit.png")
    (folder / "a-file").write_text("not a database, not a folder, not an image")
    (folder / "empty").mkdir()
    shutil.copy("/etc/passwd", folder / "passwd")
    return run_id


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if not p.name.endswith(("-wal", "-shm", "-journal"))}


def rows(db: Path) -> tuple[int, ...]:
    with sqlite3.connect(db) as conn:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runs", "jobs", "workers"))


def argv_of(line: str, top: Path, run_id: str) -> list[str]:
    argv = [w.format(run=run_id, out=top / "out", file=top / "a-file", empty=top / "empty", img=top / "digit.png",
                     passwd=top / "passwd") for w in shlex.split(line)]
    command = next((w for w in argv if w in GOOD), "")
    if command in (*TRAINS, "worker", "report", "inspect", "predict", "export") and "--db" not in argv:
        argv += ["--db", str(top / "r.sqlite")]
    return argv


def run_one(line: str, template: Path, run_id: str, real_process: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="cli-fuzz-") as tmp:
        top = Path(tmp) / "top"
        shutil.copytree(template, top)
        cwd = top / "a" / "b"  # ../ and ../../x stay inside this folder
        cwd.mkdir(parents=True)
        argv = argv_of(line, top, run_id)
        counts, before = rows(top / "r.sqlite"), snapshot(top)
        t0 = time.perf_counter()
        escaped = None
        if real_process:
            proc = subprocess.run([sys.executable, "-m", "mnist_lab", *argv], cwd=cwd, capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            out_buf, err_buf, here = io.StringIO(), io.StringIO(), os.getcwd()
            os.chdir(cwd)
            try:
                with contextlib.redirect_stdout(out_buf), contextlib.redirect_stderr(err_buf):
                    code = main(argv)
            except BaseException as exc:  # noqa: BLE001 - what the campaign counts
                code, escaped = None, f"{type(exc).__name__}: {exc}"
            finally:
                os.chdir(here)
            out, err = out_buf.getvalue(), err_buf.getvalue()
        after = snapshot(top)
        after.pop("a", None), after.pop("a/b", None)
        before.pop("a", None)
        return dict(line=line, code=code, escaped=escaped, traceback=escaped is not None or "Traceback" in out + err,
                    err=err.strip(), left=sorted(set(after) - set(before)),
                    changed=sorted(k for k in set(after) & set(before) if after[k] != before[k]),
                    rows_added=rows(top / "r.sqlite") != counts, seconds=time.perf_counter() - t0,
                    error_lines=err.count("error:"))


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="lines in all (hand-written first, then mutations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--subprocess", type=int, default=10, help="of them, how many also run as a real process")
    parser.add_argument("--show-accepted", action="store_true", help="list the lines accepted, with what they said")
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    lines = [(line, "refused") for line in HAND][:opts.n]
    lines += [(mutate(rng), "mutated") for _ in range(opts.n - len(lines))]
    lines += [(line, "adjusted") for line in ADJUSTED]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cli-fuzz-template-") as tmp:
        template = Path(tmp)
        run_id = make_template(template)
        results = [dict(run_one(line, template, run_id, False), kind=kind) for line, kind in lines]
        for i in rng.sample(range(len(lines)), min(opts.subprocess, len(lines))):
            results.append(dict(run_one(lines[i][0], template, run_id, True), kind=lines[i][1] + " (process)"))
    refused = [r for r in results if r["code"] == 2]
    failures = {
        "tracebacks": [r for r in results if r["traceback"]],
        "exit code not 0/2/3": [r for r in results if r["code"] not in (0, 2, 3)],
        "hand-written line not refused": [r for r in results if r["kind"].startswith("refused") and r["code"] != 2],
        "refused, not one error line": [r for r in refused if r["error_lines"] != 1],
        "refused, left a file or folder": [r for r in refused if r["left"] or r["changed"]],
        "refused, added a row": [r for r in refused if r["rows_added"]],
        "adjusted, said nothing": [r for r in results if r["kind"].startswith("adjusted")
                                   and (r["code"] != 0 or "note:" not in r["err"])],
    }
    commands = {}
    for r in results:
        name = next((w for w in shlex.split(r["line"]) if w in GOOD), "(none)")
        commands[name] = commands.get(name, 0) + 1
    print(f"{len(results)} lines ({sum(r['kind'] == 'refused' for r in results)} hand-written, "
          f"{sum(r['kind'] == 'mutated' for r in results)} mutations, {len(ADJUSTED)} adjusted, "
          f"{sum('process' in r['kind'] for r in results)} also as a real process) in "
          f"{time.perf_counter() - t0:.0f} s")
    print("by command: " + ", ".join(f"{k} {v}" for k, v in sorted(commands.items())))
    print(f"refused (exit 2): {len(refused)}; accepted (exit 0/3): "
          f"{sum(r['code'] in (0, 3) for r in results)}")
    for name, bad in failures.items():
        print(f"{name}: {len(bad)}")
        for r in bad[:5]:
            print(f"    {r['line']!r} -> {r['code']} {r['escaped'] or ''} left={r['left']} changed={r['changed']} "
                  f"err={r['err'][:200]!r}")
    if opts.show_accepted:
        for r in results:
            if r["code"] in (0, 3):
                print(f"accepted: {r['line']!r} -> {r['code']} err={r['err'][-200:]!r}")
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main_bench())
