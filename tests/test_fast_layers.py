"""fast_layers: same outputs, gradients and dropout masks as Keras's layers, fewer ops."""

import numpy as np
import pytest

import keras
import tensorflow as tf

from kt_pipeline import encoders, fast_layers


def _grads(layer, x, training=False, weights=True, call=None):
    """Output and gradients (input, then trainable weights) of a weighted sum of ``layer(x)``
    (or of ``call(x, training)``, which calls ``layer``)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = call(x, training) if call else layer(x, training=training)
        y32 = tf.cast(y, "float32")
        w = tf.sin(tf.reshape(tf.range(tf.size(y32), dtype="float32"), tf.shape(y32)))
        loss = tf.reduce_sum(y32 * w)
    sources = [x] + (list(layer.trainable_variables) if weights else [])
    return y, tape.gradient(loss, sources)


def _pair(make, *inputs):
    """A stock layer and a fast one with the same weights (built on ``inputs``)."""
    stock, fast = make(), make()
    stock(*inputs), fast(*inputs)
    fast.set_weights(stock.get_weights())
    return stock, fast


def _assert_same(stock, fast, x, kind):
    """Install on ``fast`` (one layer of ``kind``); outputs and gradients match ``stock``."""
    assert fast_layers.install(fast)[kind] == 1
    y0, g0 = _grads(stock, x)
    y1, g1 = _grads(fast, x)
    np.testing.assert_allclose(y1, y0, atol=1e-5)
    for a, b in zip(g1, g0):  # input, then the weights
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_layer_norm_matches_keras_forward_and_gradients():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 5, 16)) * 4 + 2).astype("float32")
    stock, fast = _pair(lambda: keras.layers.LayerNormalization(epsilon=1e-12), x)
    stock.set_weights([rng.normal(size=16).astype("float32") for _ in range(2)])
    fast.set_weights(stock.get_weights())
    _assert_same(stock, fast, x, "layer_norm")


def test_layer_norm_keeps_the_mixed_precision_contract():
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype("float32")
    layer = keras.layers.LayerNormalization(dtype="mixed_bfloat16")
    stock = keras.layers.LayerNormalization(dtype="mixed_bfloat16")
    layer(x), stock(x)
    fast_layers.install(layer)
    xb = tf.cast(x, "bfloat16")
    y = layer(xb)
    assert y.dtype == tf.bfloat16  # float32 inside, the policy's compute dtype out
    np.testing.assert_allclose(tf.cast(y, "float32"), tf.cast(stock(xb), "float32"), atol=2e-2)


def test_gelu_dense_matches_kerashub_gelu():
    from keras_hub.src.utils.keras_utils import gelu_approximate

    x = np.random.default_rng(2).normal(size=(4, 7, 8)).astype("float32") * 3
    stock, fast = _pair(lambda: keras.layers.Dense(12, activation=gelu_approximate), x)
    _assert_same(stock, fast, x, "gelu")


@pytest.mark.parametrize("equation, shape, out, bias", [
    ("abc,cde->abde", (3, 5, 16), (4, 6), "de"),  # query, key, value
    ("abcd,cde->abe", (3, 5, 4, 6), (16,), "e"),  # attention output
    ("abc,cd->abd", (2, 7, 8), (5,), None),  # no bias
])
def test_projection_matches_einsum_dense(equation, shape, out, bias):
    rng = np.random.default_rng(5)
    x = rng.normal(size=shape).astype("float32")

    def make():
        return keras.layers.EinsumDense(equation, output_shape=(None, *out), bias_axes=bias)

    stock, fast = _pair(make, x)
    if bias:  # a bias that is not zero, so a misplaced one shows
        stock.set_weights([w if w.ndim > len(out) else rng.normal(size=w.shape).astype("f4")
                           for w in stock.get_weights()])
        fast.set_weights(stock.get_weights())
    _assert_same(stock, fast, x, "projection")
    y = fast(x[:2, :3])  # another batch and width, same weights
    np.testing.assert_allclose(y, stock(x[:2, :3]), atol=1e-5)
    assert y.shape == stock(x[:2, :3]).shape


@pytest.mark.parametrize("equation, bias", [
    ("abc,cde->abde", "e"),  # a bias on some output axes only
    ("abc,dce->abde", "de"),  # the kernel's contracted axis not first
])
def test_projection_leaves_other_einsums_to_keras(equation, bias):
    layer = keras.layers.EinsumDense(equation, output_shape=(None, 4, 6), bias_axes=bias)
    layer(np.zeros((2, 3, 8), "float32"))
    assert fast_layers.install(layer)["projection"] == 0


def test_projection_keeps_the_mixed_precision_contract():
    x = np.random.default_rng(6).normal(size=(2, 3, 8)).astype("float32")

    def make():
        return keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4),
                                        bias_axes="de", dtype="mixed_bfloat16")

    stock, fast = _pair(make, x)
    assert fast_layers.install(fast)["projection"] == 1
    y = fast(x)
    assert y.dtype == tf.bfloat16 and fast.kernel.dtype == "float32"
    np.testing.assert_allclose(tf.cast(y, "float32"), tf.cast(stock(x), "float32"), atol=2e-2)


def test_dropout_draws_keras_mask_and_passes_gradients_through_it():
    x = np.random.default_rng(3).normal(size=(4, 9, 32)).astype("float32")
    stock = keras.layers.Dropout(0.3, seed=7)
    fast = keras.layers.Dropout(0.3, seed=7)
    assert fast_layers.install(fast)["dropout"] == 1
    for _ in range(2):  # same seed generator state, step after step
        y0, (g0,) = _grads(stock, x, training=True, weights=False)
        y1, (g1,) = _grads(fast, x, training=True, weights=False)
        np.testing.assert_allclose(y1, y0, rtol=1e-6)
        np.testing.assert_allclose(g1, g0, rtol=1e-6, atol=1e-6)
    kept = np.mean(np.asarray(y1) != 0)
    assert 0.6 < kept < 0.8  # rate 0.3
    np.testing.assert_array_equal(fast(x, training=False), x)


def test_install_on_a_backbone_matches_stock_and_cuts_gradient_ops(tiny_preset, monkeypatch):
    monkeypatch.setenv(fast_layers.ENV, "0")
    stock = encoders.load_backbone(tiny_preset)
    monkeypatch.setenv(fast_layers.ENV, "1")
    fast = encoders.load_backbone(tiny_preset)  # load_backbone installs them
    assert all(getattr(layer, "_kt_fast", False) is False
               for layer in stock._flatten_layers(include_self=True, recursive=True))
    # tiny BERT: 2 layers -> 2*2+1 layer norms, 2 GELU dense, 2*3+1 dropouts
    # and 2*4 attention projections (query, key, value, output)
    assert fast_layers.install(fast) == {"layer_norm": 0, "gelu": 0, "dropout": 0,
                                         "projection": 0, "attention": 0}  # idempotent
    flags = [getattr(layer, "_kt_fast", False)
             for layer in fast._flatten_layers(include_self=True, recursive=True)]
    assert sum(flags) == 5 + 2 + 7 + 8 + 2  # and the 2 attention layers

    rng = np.random.default_rng(4)
    inputs = {"token_ids": rng.integers(5, 40, (3, 10)).astype("int32"),
              "padding_mask": np.array([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7], bool),
              "segment_ids": np.zeros((3, 10), "int32")}

    def step(model):
        with tf.GradientTape() as tape:
            out = model(inputs, training=False)["sequence_output"]
            loss = tf.reduce_sum(out * tf.cos(out))
        return out, tape.gradient(loss, model.trainable_variables)

    out0, g0 = step(stock)
    out1, g1 = step(fast)
    np.testing.assert_allclose(out1, out0, atol=1e-4)
    assert [a is None for a in g1] == [b is None for b in g0]  # the pooler: no gradient
    for a, b in zip(g1, g0):
        if a is not None:
            np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b),
                                       rtol=1e-3, atol=1e-4)

    def n_ops(model):
        graph = tf.function(step).get_concrete_function(model).graph
        return len(graph.get_operations())

    assert n_ops(fast) < 0.85 * n_ops(stock)

    def einsums(model):  # traced as training traces it: batch and width unknown
        specs = {k: tf.TensorSpec([None, None], v.dtype) for k, v in inputs.items()}
        fn = tf.function(lambda inp: model(inp)["sequence_output"])
        graph = fn.get_concrete_function(specs).graph
        return [op.name for op in graph.get_operations() if op.type == "Einsum"]

    # the 8 projections (query, key, value, output) run as MatMuls, no Einsum left
    assert einsums(fast) == [] and len(einsums(stock)) >= 8, einsums(stock)


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_env_turns_it_off(value, monkeypatch):
    monkeypatch.setenv(fast_layers.ENV, value)
    model = keras.Sequential([keras.Input((3,)), keras.layers.LayerNormalization()])
    assert fast_layers.install(model) == {"layer_norm": 0, "gelu": 0, "dropout": 0,
                                          "projection": 0, "attention": 0}


def test_cls_classifier_computes_only_the_first_position_of_the_last_layer(
        tiny_preset, monkeypatch):
    from kt_pipeline import models

    monkeypatch.setenv(fast_layers.ENV, "0")
    stock = models.build_classifier(encoders.load_backbone(tiny_preset), 3, "cls")
    monkeypatch.setenv(fast_layers.ENV, "1")
    backbone = encoders.load_backbone(tiny_preset)
    fast = models.build_classifier(backbone, 3, "cls")
    fast.set_weights(stock.get_weights())
    assert backbone.transformer_layers[-1]._kt_cls_only
    assert not any(getattr(layer, "_kt_cls_only", False)
                   for layer in backbone.transformer_layers[:-1])
    rng = np.random.default_rng(5)
    inputs = {"token_ids": rng.integers(5, 40, (3, 9)).astype("int32"),
              "padding_mask": np.array([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7], bool)}
    full = backbone({**inputs, "segment_ids": np.zeros((3, 9), "int32")})["sequence_output"]
    assert full.shape == (3, 1, 32)  # the last layer ran for position 0 only

    def step(model):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=False)
            loss = tf.reduce_sum(logits * tf.constant([1.0, -2.0, 3.0]))
        return logits, tape.gradient(loss, model.trainable_variables)

    y0, g0 = step(stock)
    y1, g1 = step(fast)
    np.testing.assert_allclose(y1, y0, atol=1e-5)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b),
                                   rtol=1e-3, atol=1e-5)
    assert fast(inputs, training=True).shape == (3, 3)


def test_mean_pooling_keeps_every_position(tiny_preset):
    from kt_pipeline import models

    backbone = encoders.load_backbone(tiny_preset)
    models.build_classifier(backbone, 2, "cls")
    assert backbone.transformer_layers[-1]._kt_cls_only
    models.build_classifier(backbone, 2, "mean")  # the same backbone, reused
    assert not backbone.transformer_layers[-1]._kt_cls_only
    inputs = {"token_ids": np.arange(5, 23, dtype="int32").reshape(2, 9),
              "padding_mask": np.ones((2, 9), bool), "segment_ids": np.zeros((2, 9), "int32")}
    assert backbone(inputs)["sequence_output"].shape == (2, 9, 32)


def test_projection_takes_lora_enabled_after_install():
    x = np.random.default_rng(7).normal(size=(2, 5, 8)).astype("float32")

    def make():
        return keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 4),
                                        bias_axes="de")

    stock, fast = _pair(make, x)
    assert fast_layers.install(fast)["projection"] == 1
    before = np.asarray(fast(x))
    for layer in (stock, fast):
        layer.enable_lora(2)
    b = np.random.default_rng(8).normal(size=fast.lora_kernel_b.shape).astype("float32")
    for layer in (stock, fast):  # lora_kernel_b starts at zero: make LoRA count
        layer.lora_kernel_a.assign(stock.lora_kernel_a)
        layer.lora_kernel_b.assign(b)
    np.testing.assert_allclose(fast(x), stock(x), atol=1e-5)
    assert not np.allclose(fast(x), before, atol=1e-3)


def _attention_grads(layer, x, mask, training):
    """`_grads` of self-attention on ``x`` with ``mask``."""
    return _grads(layer, x, training, call=lambda t, training: layer(
        t, t, attention_mask=mask, training=training))


def _attention_pair(x, dropout=0.3, **kwargs):
    def make():  # the same seed: the same dropout masks, call after call
        return keras.layers.MultiHeadAttention(4, 8, dropout=dropout, seed=11, **kwargs)

    return _pair(make, x, x)


def _masks(batch=3, length=7):
    """No mask; KerasHub's padding mask (int, ``[B, 1, S]``) with an all-padding row;
    a boolean ``[B, T, S]`` mask with a query that may attend to nothing."""
    padding = np.ones((batch, 1, length), "int32")
    padding[1, :, 4:] = 0
    padding[-1] = 0
    full = np.tril(np.ones((batch, length, length), bool))  # causal, as a mask
    full[0, 3] = False
    return {"none": None, "padding": padding, "query_rows": full}


@pytest.mark.parametrize("mask", ["none", "padding", "query_rows"])
@pytest.mark.parametrize("training", [False, True])
def test_attention_matches_keras_with_its_dropout_mask(mask, training):
    x = np.random.default_rng(9).normal(size=(3, 7, 16)).astype("float32")
    stock, fast = _attention_pair(x)
    assert fast_layers.install(fast)["attention"] == 1
    m = _masks()[mask]
    for _ in range(2):  # the seed generators advance alike
        y0, g0 = _attention_grads(stock, x, m, training)
        y1, g1 = _attention_grads(fast, x, m, training)
        np.testing.assert_allclose(y1, y0, atol=1e-5)
        for a, b in zip(g1, g0):  # input, then the weights
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    if mask == "padding":  # a sample with no key to attend to: zeros, as Keras
        np.testing.assert_allclose(y1[2], np.broadcast_to(fast._output_dense.bias, (7, 16)))
    if training:
        y_eval, _ = _attention_grads(fast, x, m, False)
        assert not np.allclose(y1, y_eval, atol=1e-3)  # the dropout did drop


def test_attention_replaces_the_selects_around_the_softmax():
    x = np.random.default_rng(10).normal(size=(3, 7, 16)).astype("float32")
    stock, fast = _attention_pair(x)
    fast_layers.install(fast)

    def selects(layer):
        fn = tf.function(lambda: _attention_grads(layer, x, _masks()["padding"], True))
        graph = fn.get_concrete_function().graph
        return sum(op.type == "SelectV2" for op in graph.get_operations())

    # Keras: a select before the softmax and one after, and theirs in the backward pass
    assert selects(fast) <= 1 < selects(stock), (selects(fast), selects(stock))


@pytest.mark.parametrize("case", ["scores", "causal", "no_dropout", "subclass"])
def test_attention_leaves_other_paths_to_keras(case):
    x = np.random.default_rng(12).normal(size=(2, 5, 16)).astype("float32")
    stock, fast = _attention_pair(x, dropout=0.0 if case == "no_dropout" else 0.3)
    if case == "subclass":
        class Custom(keras.layers.MultiHeadAttention):
            def _compute_attention(self, *args, **kwargs):
                return super()._compute_attention(*args, **kwargs)

        assert fast_layers.install(Custom(2, 4))["attention"] == 0
        return
    assert fast_layers.install(fast)["attention"] == 1
    kwargs = {"scores": {"return_attention_scores": True},
              "causal": {"use_causal_mask": True}}.get(case, {})
    # a causal mask alone goes to Keras (merged with another, it is a mask like any)
    mask = None if case == "causal" else _masks(2, 5)["padding"]
    for training in (False, True):
        y0 = stock(x, x, attention_mask=mask, training=training, **kwargs)
        y1 = fast(x, x, attention_mask=mask, training=training, **kwargs)
        for a, b in zip(tf.nest.flatten(y1), tf.nest.flatten(y0)):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_attention_keeps_the_mixed_precision_contract(policy):
    x = np.random.default_rng(13).normal(size=(3, 7, 16)).astype("float32")
    stock, fast = _attention_pair(x, dtype=policy)
    assert fast_layers.install(fast)["attention"] == 1
    mask = _masks()["padding"]
    for training in (False, True):
        y0 = stock(x, x, attention_mask=mask, training=training)
        y1 = fast(x, x, attention_mask=mask, training=training)
        assert y1.dtype == y0.dtype and y1.dtype != tf.float32
        assert np.isfinite(tf.cast(y1, "float32")).all()
        np.testing.assert_allclose(tf.cast(y1, "float32"), tf.cast(y0, "float32"), atol=5e-2)
