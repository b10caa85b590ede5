"""`bench/gpu_train.py --framework kt`: kt-pipeline's own training path, run small on the CPU."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "gpu_train.py"


def test_kt_framework_trains_the_products_model_and_counts_flops_for_its_size():
    pytest.importorskip("keras_hub")
    layers, hidden, seq = 2, 64, 16
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--framework", "kt", "--layers", str(layers),
         "--hidden", str(hidden), "--heads", "2", "--ffn", "128", "--batch", "4",
         "--seq", str(seq), "--steps", "3", "--repeats", "1", "--no-xla", "--no-bf16",
         "--peak-tflops", "1e-6"],
        capture_output=True, text=True, timeout=300, check=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["framework"] == "kt" and got["examples_per_s"] > 0
    assert "FusedAdamW" in got["backend"]
    assert int(re.search(r"(\d+) fast layers", got["backend"]).group(1)) > 0
    # MFU from the model's own size: 3 x (24 L h^2 + 4 L s h) FLOPs a token, s tokens a row.
    flops = 3.0 * (24 * layers * hidden**2 + 4 * layers * seq * hidden) * seq
    assert got["mfu"] == pytest.approx(got["examples_per_s"] * flops / 1e6, rel=0.01)
