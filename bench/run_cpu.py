"""`make bench`: run the CPU benchmarks one after another (each prints JSON lines)."""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = [
    ["cache_build.py"],
    ["cache_memory.py", "--rows", "1000000"],
    ["cache_per_length.py"],
    ["reader_throughput.py"],
    ["cpu_train.py", "throughput", "--system", "ours", "--padding", "bucket"],
    ["cpu_train.py", "throughput", "--system", "peer", "--padding", "bucket"],
    ["train_vs_peer.py"],  # the two above, drift-free
    ["cpu_train.py", "throughput", "--system", "ours", "--padding", "fixed"],
    ["cpu_train.py", "throughput", "--system", "peer", "--padding", "fixed"],
    ["cpu_train.py", "tta", "--system", "ours"],
    ["cpu_train.py", "tta", "--system", "peer"],
    ["optimizer_step.py"],
    ["frozen_speedup.py"],
]

if __name__ == "__main__":
    failed = 0
    for args in RUNS:
        if not (HERE / args[0]).exists():
            print(f"skip: {args[0]} not present")
            continue
        print("$ python bench/" + " ".join(args), flush=True)
        failed += subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]], cwd=HERE.parent) != 0
    sys.exit(1 if failed else 0)
