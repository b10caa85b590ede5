"""Parallel search with keras-tuner's chief/worker mode: a chief and two workers on
127.0.0.1 share the trials (each trial runs on exactly one worker, none is repeated)."""

import os
import socket
import subprocess
import sys
import time

import yaml

from test_tuning import search_raw, tiny_cache  # noqa: F401  (fixture)

MAX_TRIALS = 4
HANG_GUARD_S = 240  # three processes import TF and train on a 2-core CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_chief_and_two_workers_share_trials(tiny_cache, tiny_preset, tmp_path):  # noqa: F811
    from kt_pipeline import tuning, tuning_results

    raw = search_raw(tiny_cache, tiny_preset, tmp_path / "s",
                     tuner={"max_trials": MAX_TRIALS, "max_epochs": 1})
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(raw))
    address = f"127.0.0.1:{free_port()}"
    base = [sys.executable, "-m", "kt_pipeline.cli", "tune", "--config", str(config), "--quiet",
            "--oracle-address", address]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("chief", "worker0", "worker1")}
    procs = {"chief": subprocess.Popen(base + ["--role", "chief"], env=env, stdout=logs["chief"],
                                       stderr=subprocess.STDOUT)}
    try:
        for wid in ("worker0", "worker1"):
            procs[wid] = subprocess.Popen(base + ["--role", "worker", "--tuner-id", wid], env=env,
                                          stdout=logs[wid], stderr=subprocess.STDOUT)
        deadline = time.time() + HANG_GUARD_S  # a guard against a hang, not a speed check
        for name, p in procs.items():
            try:
                p.wait(timeout=max(1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                logs[name].flush()
                raise AssertionError(f"{name} still running after {HANG_GUARD_S} s: " +
                                     (tmp_path / f"{name}.log").read_text()[-3000:]) from None
        for name, p in procs.items():
            assert p.returncode == 0, f"{name}: " + (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        for f in logs.values():
            f.close()

    project = tuning.project_dir(str(tmp_path / "s"))
    rows = tuning_results.load_rows(project)
    assert len(rows) == MAX_TRIALS
    assert all(r["status"] == "COMPLETED" for r in rows)
    runs = {}
    for r in rows:
        attempts = tuning_results.load_attempts(f"{project}/trial_{r['trial']}")
        assert len(attempts) == 1, f"trial {r['trial']} ran {len(attempts)} times"
        runs[r["trial"]] = attempts[0]["tuner_id"]
    assert set(runs.values()) <= {"worker0", "worker1"}
    assert len({r["trial"] for r in rows}) == MAX_TRIALS
    # the chief wrote the results for the whole search
    assert (tmp_path / "s" / "results" / "trials.csv").exists()
    assert "best: trial" in (tmp_path / "chief.log").read_text()
