"""Frozen-encoder fast path: cached features, and the same metrics as the slow path."""

import numpy as np
import pytest

from kt_pipeline import search_config
from test_tuning import search_raw, tiny_cache  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def no_dropout_preset(tiny_preset, tmp_path_factory):
    """The tiny BERT with dropout 0, so a frozen encoder is the same function in training."""
    from kt_pipeline import encoders

    path = str(tmp_path_factory.mktemp("tiny_nodrop"))
    encoders.load_backbone(tiny_preset, dropout=0.0).save_to_preset(path)
    encoders.load_tokenizer(tiny_preset).save_to_preset(path)
    return path


def test_features_are_computed_once_and_reloaded(tiny_cache, tiny_preset):  # noqa: F811
    from kt_pipeline import frozen, reader

    root = "ram://frozen_test/features"
    store = frozen.FeatureStore(root, tiny_cache, tiny_preset, verbose=False)
    x, y = store.get("train", 16, "cls")
    n = reader.num_examples(tiny_cache, "train")
    assert x.shape == (n, 32) and x.dtype == np.float32 and y.shape == (n,)
    assert store.computed == ["train-L16-cls"]
    again = frozen.FeatureStore(root, tiny_cache, tiny_preset, verbose=False)
    x2, y2 = again.get("train", 16, "cls")
    assert again.computed == []
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    # another length or pooling is another entry
    xm, _ = again.get("train", 16, "mean")
    assert again.computed == ["train-L16-mean"] and not np.allclose(xm, x)
    # the head's datasets, like the reader's, run without tf.data's autotuner
    data = frozen.head_datasets(again, 16, "cls", batch_size=4)
    assert data.train.options().autotune.enabled is False
    assert data.validation is None or data.validation.options().autotune.enabled is False


def _fit(cache_dir, preset, root, fast: bool):
    import keras_tuner

    from kt_pipeline import frozen, reader, tuning

    raw = search_raw(cache_dir, preset, root,
                     tuner={"max_epochs": 3, "early_stopping_patience": None},
                     space={"learning_rate": 3e-2, "dropout": 0.0, "max_seq_length": 32,
                            "batch_size": 64, "warmup_fraction": 0.0, "freeze_body": True},
                     train={"padding": "dynamic"})
    cfg = search_config.build_config(raw)
    manifest = reader.load_manifest(cache_dir)
    store = frozen.FeatureStore(f"{root}/features", cache_dir, preset, manifest) if fast else None
    hm = tuning.ClassifierHyperModel(cfg, manifest, store)
    hp = keras_tuner.HyperParameters()
    hm.declare_hyperparameters(hp)
    model = hm.build(hp)
    history = hm.fit(hp, model, epochs=3, verbose=0)
    assert hm.last_fit["fast_path"] is fast
    return history.history, model


def test_fast_path_matches_slow_path(tiny_cache, no_dropout_preset, tmp_path):  # noqa: F811
    """Full-batch training (one step per epoch), dropout 0, the same head init:
    the frozen-feature head and the full model follow the same trajectory."""
    slow, slow_model = _fit(tiny_cache, no_dropout_preset, str(tmp_path / "slow"), fast=False)
    fast, fast_model = _fit(tiny_cache, no_dropout_preset, str(tmp_path / "fast"), fast=True)
    assert len(fast_model.weights) == 2  # only the head
    np.testing.assert_allclose(fast["val_loss"], slow["val_loss"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fast["loss"], slow["loss"], rtol=1e-3, atol=1e-4)
    assert fast["val_accuracy"] == slow["val_accuracy"]
    assert abs(slow["loss"][-1] - slow["loss"][0]) > 1e-3  # the head did train
    np.testing.assert_allclose(fast_model.get_layer("logits").get_weights()[0],
                               slow_model.get_layer("logits").get_weights()[0],
                               rtol=1e-3, atol=1e-5)
