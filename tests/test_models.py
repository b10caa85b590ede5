"""The classifier model: pooling, segment ids, frozen body, dtypes, save/load."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from kt_pipeline import encoders, models
from kt_pipeline.errors import ConfigError, KtError

TEXTS = ["a good movie", "the worst film, really boring", "i loved it"]


@pytest.fixture(scope="module")
def encoded(tiny_preset):
    enc = encoders.TextEncoding(encoders.load_tokenizer(tiny_preset))
    return enc, enc.encode(TEXTS, max_length=32)


def pad(ids: tf.RaggedTensor, length: int, pad_id: int):
    dense = ids.to_tensor(default_value=pad_id, shape=[None, length]).numpy().astype("int32")
    return {"token_ids": dense, "padding_mask": dense != pad_id}


def test_pool_matches_numpy():
    seq = np.random.default_rng(0).normal(size=(2, 4, 3)).astype("float32")
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)
    mean = keras.ops.convert_to_numpy(models.pool(seq, mask, "mean"))
    np.testing.assert_allclose(mean[0], seq[0, :2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(mean[1], seq[1].mean(axis=0), rtol=1e-6)
    cls = keras.ops.convert_to_numpy(models.pool(seq, mask, "cls"))
    np.testing.assert_array_equal(cls, seq[:, 0])
    with pytest.raises(ConfigError, match="pooling"):
        models.pool(seq, mask, "max")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_extra_padding_does_not_change_logits(tiny_preset, encoded, pooling):
    enc, ids = encoded
    model = models.build_classifier(encoders.load_backbone(tiny_preset), 3, pooling=pooling)
    short = model(pad(ids, 12, enc.pad_id), training=False)
    long = model(pad(ids, 40, enc.pad_id), training=False)
    assert short.dtype == tf.float32 and tuple(short.shape) == (3, 3)
    np.testing.assert_allclose(short.numpy(), long.numpy(), atol=1e-5)


def test_mean_pooling_differs_from_unmasked_mean(tiny_preset, encoded):
    """The mask matters: averaging the pad positions too would give other logits."""
    enc, ids = encoded
    model = models.build_classifier(encoders.load_backbone(tiny_preset), 2, pooling="mean")
    x = pad(ids, 40, enc.pad_id)
    masked = model(x, training=False).numpy()
    unmasked = model({**x, "padding_mask": np.ones_like(x["padding_mask"])}, training=False).numpy()
    assert not np.allclose(masked, unmasked, atol=1e-4)


def test_bert_gets_zero_segment_ids_and_roberta_none(tiny_preset):
    import keras_hub

    backbone = encoders.load_backbone(tiny_preset)
    assert "segment_ids" in models.backbone_input_names(backbone)
    bert = models.build_classifier(backbone, 2)
    assert set(bert.input) == {"token_ids", "padding_mask"}
    assert any(isinstance(layer, models.ZeroSegments) for layer in bert.layers)
    roberta = keras_hub.models.RobertaBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=32,
    )
    assert "segment_ids" not in models.backbone_input_names(roberta)
    model = models.build_classifier(roberta, 4, pooling="mean")
    assert not any(isinstance(layer, models.ZeroSegments) for layer in model.layers)
    ids = np.array([[0, 5, 6, 2, 1, 1]], dtype="int32")
    out = model({"token_ids": ids, "padding_mask": ids != 1})
    assert tuple(out.shape) == (1, 4)


def test_freeze_body_leaves_backbone_weights_unchanged(tiny_preset, encoded):
    enc, ids = encoded
    backbone = encoders.load_backbone(tiny_preset)
    model = models.build_classifier(backbone, 2, freeze_body=True)
    before_body = [w.copy() for w in backbone.get_weights()]
    head = model.get_layer("logits")
    before_head = [w.copy() for w in head.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(pad(ids, 16, enc.pad_id), np.array([1, 0, 1]))
    for a, b in zip(before_body, backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(before_head, head.get_weights()))


def test_frozen_body_has_no_dropout_in_training(tiny_preset, encoded):
    """Keras 3 passes training=True to a frozen backbone too; its dropout must be off."""
    enc, ids = encoded
    x = pad(ids, 16, enc.pad_id)
    frozen = models.build_classifier(encoders.load_backbone(tiny_preset), 2, dropout=0.0,
                                     freeze_body=True)
    a, b = (keras.ops.convert_to_numpy(frozen(x, training=True)) for _ in range(2))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, keras.ops.convert_to_numpy(frozen(x, training=False)),
                               rtol=1e-5, atol=1e-6)
    # the control: the same backbone unfrozen does drop (tiny BERT's dropout is 0.1)
    live = models.build_classifier(encoders.load_backbone(tiny_preset), 2, dropout=0.0)
    c, d = (keras.ops.convert_to_numpy(live(x, training=True)) for _ in range(2))
    assert not np.allclose(c, d)


def test_unfrozen_body_trains(tiny_preset, encoded):
    enc, ids = encoded
    backbone = encoders.load_backbone(tiny_preset)
    model = models.build_classifier(backbone, 2)
    before = [w.copy() for w in backbone.get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(pad(ids, 16, enc.pad_id), np.array([1, 0, 1]))
    assert any(not np.array_equal(a, b) for a, b in zip(before, backbone.get_weights()))


def test_logits_stay_float32_under_mixed_bfloat16(tiny_preset, encoded):
    enc, ids = encoded
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build_classifier(encoders.load_backbone(tiny_preset), 2, pooling="mean")
        out = model(pad(ids, 16, enc.pad_id), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32
    assert np.all(np.isfinite(out.numpy()))


def test_save_and_load_through_ram_filesystem(tiny_preset, encoded):
    enc, ids = encoded
    model = models.build_classifier(encoders.load_backbone(tiny_preset), 3, pooling="mean")
    model_dir = "ram://test_models/run"
    model.save(f"{model_dir}/{models.BEST_MODEL_FILE}")
    models.save_labels(model_dir, ["neg", "neu", "pos"])
    loaded = models.load_classifier(model_dir)
    x = pad(ids, 16, enc.pad_id)
    np.testing.assert_allclose(model(x).numpy(), loaded(x).numpy(), atol=1e-6)
    assert models.load_labels(model_dir) == ["neg", "neu", "pos"]
    with pytest.raises(KtError, match="train first"):
        models.load_classifier("ram://test_models/empty")


def test_bad_arguments_raise_config_errors(tiny_preset):
    backbone = encoders.load_backbone(tiny_preset)
    with pytest.raises(ConfigError, match="at least 2"):
        models.build_classifier(backbone, 1)
    with pytest.raises(ConfigError, match="pooling"):
        models.build_classifier(backbone, 2, pooling="max")
