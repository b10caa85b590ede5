"""MultiWorkerMirroredStrategy: two workers on 127.0.0.1 train identical weights."""

import json
import os
import socket
import subprocess
import sys


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_the_same_weights(demo_cache, tmp_path):
    model_dir = str(tmp_path / "run")
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                        "task": {"type": "worker", "index": index}})}
        cmd = [sys.executable, "-m", "kt_pipeline.cli", "train", "--cache", demo_cache,
               "--model-dir", model_dir, "--epochs", "2", "--batch-size", "16", "--max-train-examples", "96",
               "--max-seq-length", "32", "--strategy", "multiworker", "--seed", "3"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    chief = json.loads(open(os.path.join(model_dir, "train_summary.json")).read())
    other = json.loads(open(os.path.join(model_dir, "workers", "1", "train_summary.json")).read())
    assert chief["strategy"].startswith("MultiWorkerMirroredStrategy (worker 0 of 2")
    assert chief["num_replicas"] == 2 and chief["steps_per_epoch"] == 6  # 96 // 16
    assert chief["weights_sha256"] == other["weights_sha256"]
    assert os.path.exists(os.path.join(model_dir, "best.keras"))
    assert chief["final"]["epoch"] == 1
