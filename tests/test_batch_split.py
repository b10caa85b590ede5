"""batch_split: a training batch's encoder pass as halves side by side, same arithmetic."""

import os

import numpy as np
import pytest
import tensorflow as tf

from kt_pipeline import batch_split, encoders, models


@pytest.mark.parametrize("value, cores, nvidia, expected", [
    ("0", 2, False, 1), ("1", 2, False, 1), ("2", 16, False, 2), ("3", 2, True, 3),
    ("auto", 2, False, 2), (None, 1, False, 2), (None, 4, False, 1), ("auto", 2, True, 1),
    ("9", 2, False, 2), ("many", 8, False, 1),  # not a valid value: as unset
])
def test_parts_from_the_environment_and_the_machine(value, cores, nvidia, expected, monkeypatch):
    if value is None:
        monkeypatch.delenv(batch_split.ENV, raising=False)
    else:
        monkeypatch.setenv(batch_split.ENV, value)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: nvidia if p == "/proc/driver/nvidia" else real_exists(p))
    assert batch_split.parts() == expected


@pytest.mark.parametrize("split, preset, expected", [
    ("2", None, "1"), ("0", None, None), ("2", "2", "2"),  # a value already set is kept
])
def test_configure_threads_sets_one_intra_op_thread_when_splitting(split, preset, expected,
                                                                    monkeypatch):
    monkeypatch.setenv(batch_split.ENV, split)
    if preset is None:
        monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    else:
        monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", preset)
    batch_split.configure_threads()
    assert os.environ.get("TF_NUM_INTRAOP_THREADS") == expected


def _batch(rows, width=6, seed=0):
    ids = np.random.default_rng(seed).integers(5, 60, (rows, width))
    mask = np.arange(width)[None, :] < np.maximum(2, width - np.arange(rows)[:, None])
    return {"token_ids": tf.constant(ids * mask, tf.int32), "padding_mask": tf.constant(mask)}


def _loss_and_grads(model, x, training):
    with tf.GradientTape() as tape:
        logits = model(x, training=training)
        loss = tf.reduce_sum(logits * tf.sin(tf.range(tf.size(logits), dtype="float32")
                                             )[None, :tf.shape(logits)[1]])
    return logits, tape.gradient(loss, model.trainable_variables)


def _count_calls(backbone) -> list:
    """Rows of each call of the backbone's stock call from now on (None: unknown while
    tracing)."""
    calls = []
    stock = backbone._kt_unsplit_call
    backbone._kt_unsplit_call = lambda inputs, **kw: (calls.append(
        inputs["token_ids"].shape[0]), stock(inputs, **kw))[1]
    return calls


@pytest.mark.parametrize("rows", [5, 1])
def test_split_training_pass_matches_the_whole_batch(tiny_preset, monkeypatch, rows):
    monkeypatch.setenv(batch_split.ENV, "2")
    backbone = encoders.load_backbone(tiny_preset)
    assert backbone._kt_split  # load_backbone installs it when splitting is on
    model = models.build_classifier(backbone, 3, "cls", dropout=0.0)
    models._disable_dropout(backbone)  # same arithmetic: no random masks on either side
    calls = _count_calls(backbone)
    x = _batch(rows)

    split_logits, split_grads = _loss_and_grads(model, x, training=True)
    assert sorted(calls) == sorted([rows // 2, rows - rows // 2])  # one call per half
    monkeypatch.setenv(batch_split.ENV, "1")  # read at call time: the whole batch at once
    calls.clear()
    whole_logits, whole_grads = _loss_and_grads(model, x, training=True)
    assert calls == [rows]

    np.testing.assert_allclose(split_logits, whole_logits, atol=1e-5)
    for a, b in zip(split_grads, whole_grads):
        a, b = (tf.convert_to_tensor(g) for g in (a, b))  # the embedding's are sparse
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_inference_splits_but_symbolic_and_suspended_calls_do_not(tiny_preset, monkeypatch):
    monkeypatch.setenv(batch_split.ENV, "2")
    backbone = encoders.load_backbone(tiny_preset)
    model = models.build_classifier(backbone, 2, "mean")  # symbolic call: not split
    calls = _count_calls(backbone)
    whole = model(_batch(4), training=False)
    assert calls == [2, 2]
    calls.clear()
    with batch_split.suspended():  # what export traces its serving function under
        same = model(_batch(4), training=False)
    assert calls == [4]
    np.testing.assert_allclose(whole, same, atol=1e-5)


def test_a_loaded_classifier_gets_the_split(tiny_preset, tmp_path, monkeypatch):
    """`models.load_classifier` (what evaluate and predict use) installs it too."""
    monkeypatch.setenv(batch_split.ENV, "2")
    model = models.build_classifier(encoders.load_backbone(tiny_preset), 2, "cls")
    model.save(str(tmp_path / "best.keras"))
    loaded = models.load_classifier(str(tmp_path))
    backbone = [layer for layer in loaded.layers if getattr(layer, "_kt_split", False)]
    assert len(backbone) == 1
    calls = _count_calls(backbone[0])
    np.testing.assert_allclose(loaded.predict(_batch(6), verbose=0),
                               model.predict(_batch(6), verbose=0), atol=1e-5)
    assert calls == [3, 3]


def test_a_traced_train_step_splits_and_learns(tiny_preset, monkeypatch):
    """Keras's traced train step on the split backbone: traced with two halves, and the
    loss falls on a fixed batch."""
    monkeypatch.setenv(batch_split.ENV, "2")
    from kt_pipeline import optim, training

    backbone = encoders.load_backbone(tiny_preset)
    model = models.build_classifier(backbone, 2, "cls")
    training.compile_classifier(model, optim.build_optimizer(1e-3, 0, 40))
    calls = _count_calls(backbone)
    x, y = _batch(8, seed=1), tf.constant([0, 1] * 4)
    losses = [float(np.ravel(model.train_on_batch(x, y))[0]) for _ in range(25)]
    assert len(calls) == 2  # two halves; Python runs once, when the step is traced
    assert losses[-1] < 0.5 * losses[0], losses


def test_off_installs_nothing(tiny_preset, monkeypatch):
    monkeypatch.setenv(batch_split.ENV, "0")
    backbone = encoders.load_backbone(tiny_preset)
    assert not getattr(backbone, "_kt_split", False)
    assert not batch_split.install(backbone)


@pytest.mark.parametrize("split, warned", [("2", True), ("0", False)])
def test_jit_compile_with_one_intra_op_thread_warns(split, warned, monkeypatch):
    """XLA on a CPU runs its loops on the intra-op threads: with the batch split's one
    thread it is 1.7x slower, which `compile_classifier` says."""
    import keras
    import warnings

    from kt_pipeline import optim, training

    monkeypatch.setenv(batch_split.ENV, split)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
    ids = keras.Input((3,), dtype="int32")
    model = keras.Model(ids, keras.layers.Dense(2)(keras.ops.cast(ids, "float32")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training.compile_classifier(model, optim.build_optimizer(1e-3, 0, 10), jit_compile=True)
    assert any("KT_PIPELINE_BATCH_SPLIT=0" in str(w.message) for w in caught) == warned
