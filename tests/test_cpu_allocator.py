"""`import kt_pipeline` turns on TensorFlow's pooling CPU allocator: large temporaries stop
page-faulting on every step (what the word embedding's zero gradient did to each training step).
"""

import os
import subprocess
import sys

import pytest

resource = pytest.importorskip("resource")  # getrusage's fault counts: Linux and macOS

# Allocate and free a 48 MB tensor (the size of MiniLM's word embedding) 10 times after a first
# round, and print the minor page faults per round.
_PROBE = """
import resource
{setup}
import tensorflow as tf
def once():
    return float(tf.reduce_sum(tf.fill([12_000_000], 1.0)))
once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    once()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_round(setup: str, **env) -> float:
    child_env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    child_env.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", _PROBE.format(setup=setup)], env=child_env,
                         capture_output=True, text=True, timeout=300, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def test_import_pools_cpu_tensors():
    unpooled = _faults_per_round("")  # TensorFlow's default allocator
    if unpooled < 1000:  # 48 MB is ~11.7k pages of 4 KiB; fewer: this libc reuses big blocks
        pytest.skip(f"the default allocator faults only {unpooled:.0f} times per 48 MB here")
    pooled = _faults_per_round("import kt_pipeline")
    assert pooled < unpooled / 20, (pooled, unpooled)
    # The documented opt-out is honoured.
    opted_out = _faults_per_round("import kt_pipeline", TF_CPU_ALLOCATOR_USE_BFC="false")
    assert opted_out > unpooled / 2, (opted_out, unpooled)
