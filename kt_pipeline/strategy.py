"""Pick a ``tf.distribute`` strategy: ``auto|cpu|gpu|mirrored|multiworker|tpu``.

``auto`` looks for a TPU (Colab / TPU VM: ``TPUClusterResolver`` succeeds), then
several GPUs (``MirroredStrategy``), one GPU (``OneDeviceStrategy("/gpu:0")``), and
falls back to the CPU, where it uses TensorFlow's default strategy: under
``OneDeviceStrategy("/cpu:0")`` every training step took 1.6x as long (MiniLM on
SST-2, BENCHMARKS.md section 3). It prints what it chose. On a TPU every data and output path
must be ``gs://`` (TPU workers cannot read the VM's local disk); call
:func:`check_tpu_paths` *before* building anything so a run fails in a second with a
clear message instead of ``File system scheme '[local]' not implemented`` deep inside.

Example:

>>> from kt_pipeline import strategy
>>> strategy.check_tpu_paths({"cache_dir": "gs://b/tfrecords/demo",
...                           "model_dir": "gs://b/runs/x"})
>>> chosen = strategy.make_strategy("cpu", verbose=False)   # doctest: +SKIP
>>> chosen.kind, chosen.num_replicas                        # doctest: +SKIP
('cpu', 1)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
from typing import Any, Optional

from kt_pipeline.errors import ConfigError, KtError

STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "multiworker", "tpu")


class StrategyError(KtError):
    """The requested accelerator/strategy is not available or misconfigured."""


@dataclasses.dataclass
class Chosen:
    """A strategy plus what it is, for logs and ``train_summary.json``."""

    strategy: Any
    kind: str  # cpu | gpu | mirrored | multiworker | tpu
    description: str
    num_replicas: int = 1
    is_chief: bool = True
    task_index: int = 0

    @property
    def static_shapes(self) -> bool:
        """TPUs need fixed batch shapes (``padding=fixed``, ``drop_remainder``)."""
        return self.kind == "tpu"


def check_name(name: str) -> str:
    if name not in STRATEGIES:
        raise ConfigError(f"strategy={name!r}: expected one of {', '.join(STRATEGIES)}")
    return name


def check_tpu_paths(paths: dict) -> None:
    """Raise :class:`StrategyError` unless every given path is ``gs://``.

    ``paths`` maps a setting name (``cache_dir``, ``model_dir``) to its value; ``None``
    values are ignored.
    """
    bad = {k: v for k, v in paths.items() if v is not None and not str(v).startswith("gs://")}
    if bad:
        listing = ", ".join(f"{k}={v!r}" for k, v in bad.items())
        cache = str(bad.get("cache_dir") or paths.get("cache_dir") or "CACHE_DIR").rstrip("/")
        raise StrategyError(
            f"on a TPU all data and output paths must be gs:// paths (the TPU workers "
            f"cannot read local files; the failure would otherwise be \"File system "
            f"scheme '[local]' not implemented\" deep inside the run): {listing}. Copy "
            f"the cache to a bucket (`gsutil -m cp -r {cache} gs://BUCKET/tfrecords/`) "
            f"and pass --cache gs://BUCKET/... --model-dir gs://BUCKET/runs/..."
        )


def _tpu_hint() -> Optional[str]:
    """The ``tpu`` argument for TPUClusterResolver when this looks like a TPU host."""
    if os.environ.get("TPU_NAME"):
        return os.environ["TPU_NAME"]
    if os.environ.get("COLAB_TPU_ADDR"):
        return ""  # legacy Colab TPU node: the resolver reads the address itself
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return "local"  # TPU VM (Colab's current TPU runtime, Cloud TPU VMs)
    return None


def find_tpu():
    """Connect to a TPU and return its ``TPUClusterResolver``, or ``None`` if there is none."""
    import tensorflow as tf

    hint = _tpu_hint()
    if hint is None:
        return None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=hint or None)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        print(f"strategy: no usable TPU ({type(e).__name__}: {e})", file=sys.stderr)
        return None
    if not tf.config.list_logical_devices("TPU"):
        return None
    return resolver


def _multiworker_task() -> tuple[int, int]:
    """(task index, number of workers) from ``TF_CONFIG``; raises if it is missing."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError(
            "strategy=multiworker needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}} on each worker'
        )
    try:
        conf = json.loads(raw)
        workers = conf["cluster"]["worker"]
        task = conf["task"]
        return int(task["index"]), len(workers) + len(conf["cluster"].get("chief", []))
    except (ValueError, KeyError, TypeError) as e:
        raise StrategyError(f"TF_CONFIG is not valid ({e}): {raw[:200]}") from None


def make_strategy(name: str = "auto", tpu_paths: Optional[dict] = None, verbose: bool = True) -> Chosen:
    """Create the strategy named ``name``; see the module docstring for ``auto``.

    ``tpu_paths`` (``{"cache_dir": ..., "model_dir": ...}``) is checked with
    :func:`check_tpu_paths` before a TPU is touched (and when ``auto`` finds one).
    """
    import tensorflow as tf

    check_name(name)
    if name == "tpu" and tpu_paths:
        check_tpu_paths(tpu_paths)  # fail fast, before connecting to anything
    chosen = None
    if name == "multiworker":
        # Must come first: collective ops are configured before TF initialises devices.
        index, n = _multiworker_task()
        s = tf.distribute.MultiWorkerMirroredStrategy()
        chosen = Chosen(
            s, "multiworker",
            f"MultiWorkerMirroredStrategy (worker {index} of {n}, "
            f"{s.num_replicas_in_sync} replicas)",
            s.num_replicas_in_sync, is_chief=index == 0, task_index=index,
        )
    if name in ("auto", "tpu"):
        resolver = find_tpu()
        if resolver is not None:
            if tpu_paths:
                check_tpu_paths(tpu_paths)
            s = tf.distribute.TPUStrategy(resolver)
            chosen = Chosen(s, "tpu", f"TPU ({s.num_replicas_in_sync} cores)", s.num_replicas_in_sync)
        elif name == "tpu":
            raise StrategyError(
                "strategy=tpu but no TPU was found (set TPU_NAME, or run on a TPU VM / "
                "Colab TPU runtime); use --strategy auto to fall back to GPU/CPU"
            )
    gpus = tf.config.list_logical_devices("GPU") if chosen is None else []
    if chosen is None and name == "gpu":
        if not gpus:
            raise StrategyError("strategy=gpu but TensorFlow sees no GPU; use --strategy cpu or auto")
        chosen = Chosen(tf.distribute.OneDeviceStrategy("/gpu:0"), "gpu", "one GPU (/gpu:0)")
    if chosen is None and name == "mirrored":
        s = tf.distribute.MirroredStrategy()
        chosen = Chosen(s, "mirrored", f"MirroredStrategy ({s.num_replicas_in_sync} replicas)",
                        s.num_replicas_in_sync)
    if chosen is None and name == "auto" and len(gpus) > 1:
        s = tf.distribute.MirroredStrategy()
        chosen = Chosen(s, "mirrored", f"MirroredStrategy over {len(gpus)} GPUs", len(gpus))
    if chosen is None and name == "auto" and gpus:
        chosen = Chosen(tf.distribute.OneDeviceStrategy("/gpu:0"), "gpu", "one GPU (/gpu:0)")
    if chosen is None:
        # The default strategy, not OneDeviceStrategy("/cpu:0"): same placement, but
        # steps ran 1.6x faster (BENCHMARKS.md section 3). Keras then defers building
        # the optimizer to the first trace; `training.compile_classifier` builds it.
        chosen = Chosen(tf.distribute.get_strategy(), "cpu", "CPU")
    if verbose:
        print(f"strategy: {chosen.description} (--strategy {name})", file=sys.stderr)
    return chosen
