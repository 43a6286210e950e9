"""Issue 21's weights campaign: crafted weights files (tests/test_weights_files.py's named variants,
then seeded random mutations of a real file's header, metadata and tensors) pushed through the
CLI's inspect, predict and export (in-process main(); a few also as subprocesses) and the Inspect
page's load (inspection.load_run and the warning it shows). Counted: tracebacks (must be 0), code
executed (a canary file a payload would create: must be 0), refusals that left an --out folder
(must be 0), and NaN/inf files each reader named (must be all).

    python bench/bench_weights_fuzz.py            # 100 files
    python bench/bench_weights_fuzz.py --n 20     # a quick look
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from test_weights_files import MODEL, RUN, VARIANTS, file_bytes, good_file  # noqa: E402

from mnist_lab import i18n  # noqa: E402
from mnist_lab.cli.main import main as cli_main  # noqa: E402
from mnist_lab.data.datasets import DataConfig  # noqa: E402
from mnist_lab.errors import WeightsError  # noqa: E402
from mnist_lab.lab import inspection as ir  # noqa: E402
from mnist_lab.runs.store import ResultStore, run_row  # noqa: E402
from mnist_lab.runs.weights import nonfinite_warning, weights_path  # noqa: E402
from mnist_lab.training.loop import TrainConfig  # noqa: E402

MUTATIONS = ("header bytes", "data bytes", "truncate", "header length", "metadata", "config field", "nan", "inf",
             "tensor dtype", "tensor shape", "drop tensor", "add tensor")


def payload(canary: Path) -> str:
    """Text that creates `canary` if it ever runs as Python (in a docstring, a string or a line)."""
    return f'x"""\nimport pathlib; pathlib.Path({str(canary)!r}).touch()\n"""#\'\'\'\n' \
           f'__import__("pathlib").Path({str(canary)!r}).touch()'


def mutated(rng: random.Random, canary: Path) -> tuple[str, bytes]:
    """One random mutation of a real Lab-5 weights file: (what was done, the file's bytes)."""
    tensors, meta = good_file(permute=rng.random() < 0.3)
    kind = rng.choice(MUTATIONS)
    if kind == "metadata":
        key = rng.choice([*meta, "extra"])
        meta[key] = rng.choice([payload(canary), "", "null", "[]", "{}", "NaN", "-1", "1e999", "[" * 5000,
                                '{"kind": "cnn"}', "finished", json.dumps(payload(canary))])
    elif kind == "config field":
        which = rng.choice(["model", "train", "data"])
        cfg = json.loads(meta[which])
        field = rng.choice(list(cfg))
        cfg[field] = rng.choice([None, -1, 0, 2**70, 1.5, float("nan"), "imagenet", payload(canary), [], {}, True,
                                 [3, 3], "cuda"])
        meta[which] = json.dumps(cfg)
    elif kind in ("nan", "inf"):
        name = rng.choice([k for k in tensors if k != "__permutation__"])
        flat = tensors[name].view(-1)
        flat[rng.randrange(len(flat))] = float("nan") if kind == "nan" else rng.choice([1, -1]) * float("inf")
    elif kind == "tensor dtype":
        name = rng.choice(list(tensors))
        tensors[name] = tensors[name].to(rng.choice([torch.float64, torch.float16, torch.int32, torch.uint8]))
    elif kind == "tensor shape":
        name = rng.choice(list(tensors))
        tensors[name] = tensors[name].reshape(-1)[:-1] if tensors[name].numel() > 1 else torch.zeros(2)
    elif kind == "drop tensor":
        tensors.pop(rng.choice(list(tensors)))
    elif kind == "add tensor":
        tensors[rng.choice(["evil", "conv9.weight", "__main__"])] = torch.zeros(rng.randrange(1, 100))
    blob = bytearray(file_bytes(tensors, meta))
    n = int.from_bytes(blob[:8], "little")
    if kind == "header bytes":
        for _ in range(rng.randrange(1, 6)):
            blob[8 + rng.randrange(n)] = rng.randrange(256)
    elif kind == "data bytes":
        for _ in range(rng.randrange(1, 50)):
            blob[8 + n + rng.randrange(len(blob) - 8 - n)] = rng.randrange(256)
    elif kind == "truncate":
        blob = blob[:rng.randrange(len(blob))]
    elif kind == "header length":
        blob[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, 2**40, 2**64 - 1, rng.randrange(2**63)]))
    return kind, bytes(blob)


def crafted(n: int, seed: int, canary: Path) -> list[tuple[str, bytes]]:
    """The named variants first, then seeded mutations, `n` in all."""
    files = [(name, blob) for name, blob, _ in VARIANTS]
    for name, value, permute in (("nan weights", float("nan"), False), ("inf weights", float("inf"), True),
                                 ("good file", None, True)):
        tensors, meta = good_file(permute)
        if value is not None:
            tensors["fc1.weight"][0, :3] = value
        files.append((name, file_bytes(tensors, meta)))
    files = files[:n]
    rng = random.Random(seed)
    while len(files) < n:
        files.append(mutated(rng, canary))
    return files


def has_nonfinite(blob: bytes) -> bool:
    """Ground truth, read past every check: does any float tensor of the file hold NaN or inf?"""
    from safetensors.torch import load

    try:
        tensors = load(blob)
    except Exception:  # noqa: BLE001 - not a readable file at all
        return False
    return any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors.values())


def run_cli(argv: list[str]) -> tuple[int | None, str, str]:
    """(exit code or None for an escaped exception, stdout, stderr with any traceback)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(argv)
        except BaseException:  # noqa: BLE001 - counted: nothing may escape main()
            traceback.print_exc()
            code = None
    return code, out.getvalue(), err.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="how many crafted files")
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--subprocess", type=int, default=3, help="also run this many files' inspect as a process")
    parser.add_argument("--run-exports", type=int, default=3, help="run this many exported scripts with --help")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="weights_fuzz_"))
    canary = work / "CANARY"
    digit = work / "one.png"
    img = Image.new("L", (64, 64))
    img.paste(255, (28, 10, 36, 54))
    img.save(digit)
    files = crafted(args.n, args.seed, canary)

    c = dict(files=len(files), refused=0, loaded=0, nan_files=0, nan_named=0, tracebacks=0, other_exceptions=0,
             leftovers=0, bad_exit=0, subprocess_tracebacks=0, scripts_run=0)
    kinds: dict[str, int] = {}
    examples: list[str] = []
    exported: list[Path] = []
    for i, (kind, blob) in enumerate(files):
        db = work / f"db{i}" / "r.sqlite"  # one database per file: each holds run RUN, as the files say
        db.parent.mkdir()
        store = ResultStore(db)
        store.start_run(run_row(RUN, MODEL, TrainConfig(), DataConfig(test_limit=100), status="finished"))
        store.close()
        run_id = RUN
        kinds[kind] = kinds.get(kind, 0) + 1
        path = weights_path(db, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
        nan = has_nonfinite(blob)
        # the Inspect page's load, and what it shows
        page_named = False
        try:
            run = ir.load_run(ResultStore(db), run_id)
            warning = nonfinite_warning(run.saved)
            page_named = warning is not None and "NaN/inf" in i18n.word(warning, "en")
            loaded = True
        except WeightsError as exc:
            loaded = False
            if len(examples) < 6:
                examples.append(f"{kind}: {i18n.render(exc, 'en')[:150]}")
        except Exception:  # noqa: BLE001 - counted
            c["other_exceptions"] += 1
            loaded = False
            print(f"[{kind}] load_run: {traceback.format_exc()}", file=sys.stderr)
        c["loaded" if loaded else "refused"] += 1
        named = [page_named] if nan and loaded else []
        for cmd, extra in (("inspect", ["--out", str(work / f"in{i}")]), ("predict", [str(digit)]),
                           ("export", ["--out", str(work / f"ex{i}")])):
            code, out, err = run_cli([cmd, run_id, *extra, "--db", str(db)])
            if code is None or "Traceback" in err:
                c["tracebacks"] += 1
                print(f"[{kind}] {cmd}: {err[-2000:]}", file=sys.stderr)
            if not loaded:
                c["bad_exit"] += code != 2
                c["leftovers"] += cmd != "predict" and Path(extra[1]).exists()
            elif nan:
                named.append("NaN/inf" in err and "nan%" not in out)
            if cmd == "export" and code == 0:
                exported.append(Path(extra[1]) / f"run_{run_id}.zip")
        if nan and loaded:
            c["nan_files"] += 1
            c["nan_named"] += all(named)
        if i < args.subprocess:
            proc = subprocess.run([sys.executable, "-m", "mnist_lab", "inspect", run_id, "--out",
                                   str(work / f"sub{i}"), "--db", str(db)], capture_output=True, text=True, cwd=ROOT,
                                  timeout=300)
            c["subprocess_tracebacks"] += "Traceback" in proc.stderr
    for zip_path in exported[:args.run_exports]:  # the exported program, run: does any payload execute?
        import zipfile

        folder = zip_path.with_suffix("")
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(folder)
        script = next(folder.glob("train_*.py"))
        subprocess.run([sys.executable, str(script), "--help"], capture_output=True, timeout=300, cwd=folder)
        c["scripts_run"] += 1
    c["code_executed"] = int(canary.exists() or Path("/tmp/PWNED").exists())
    seconds = time.perf_counter() - t0

    print(f"{c['files']} crafted weights files (named variants, then seeded mutations, seed {args.seed}) through"
          f" load_run (the Inspect page's load), inspect, predict, export; {seconds:.0f} s")
    named = len(VARIANTS) + 3
    print(f"  {min(named, len(files))} named variants; mutations: "
          + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()) if k in MUTATIONS))
    rows = [("refused (WeightsError)", c["refused"]), ("loaded", c["loaded"]),
            ("  of them with NaN/inf weights", c["nan_files"]),
            ("  NaN/inf named by the page, inspect, predict and export", c["nan_named"]),
            ("tracebacks (CLI, in-process)", c["tracebacks"]),
            ("other exceptions from load_run", c["other_exceptions"]),
            ("tracebacks (CLI, subprocess sample)", c["subprocess_tracebacks"]),
            ("refusals not exiting 2", c["bad_exit"]), ("refusals leaving an --out folder", c["leftovers"]),
            ("exported scripts run (--help)", c["scripts_run"]), ("code executed (canary)", c["code_executed"])]
    for label, value in rows:
        print(f"  {label:<58} {value:>5}")
    print("  e.g. " + "\n  e.g. ".join(examples))
    ok = (c["tracebacks"] == c["other_exceptions"] == c["subprocess_tracebacks"] == c["code_executed"]
          == c["bad_exit"] == c["leftovers"] == 0 and c["nan_named"] == c["nan_files"])
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
