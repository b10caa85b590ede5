"""Helpers shared by the benchmark scripts (data loading, timing, output)."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import platform
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SST2 = SHARED / "sst2" / "train.tsv"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def require_sst2() -> pathlib.Path:
    if not SST2.exists():
        sys.exit(f"skip: {SST2} is absent (see ../shared/data/README.md)")
    return SST2


def sst2_rows(limit: int | None = None, offset: int = 0) -> list[tuple[str, int]]:
    """(sentence, label) pairs from SST-2 train.tsv, in file order."""
    out = []
    with open(require_sst2(), encoding="utf-8", newline="") as f:
        r = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(r)
        for i, (label, sentence) in enumerate(r):
            if i < offset:
                continue
            out.append((sentence, int(label)))
            if limit and len(out) >= limit:
                break
    return out


def minilm_dir() -> str:
    from kt_pipeline.encoders import default_preset_dir

    return default_preset_dir()


def median(xs):
    return statistics.median(xs)


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def emit(**fields) -> None:
    """Print one JSON line (the benchmark's result)."""
    fields.setdefault("machine", machine())
    print(json.dumps(fields), flush=True)
