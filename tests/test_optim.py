"""The AdamW + warmup/decay recipe: schedule shape, continuation, decay exclusions."""

import math

import numpy as np
import pytest

import keras

from kt_pipeline import optim
from kt_pipeline.errors import ConfigError


def lrs(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def test_linear_warmup_then_linear_decay():
    s = optim.WarmupDecay(1e-3, warmup_steps=10, total_steps=110)
    warm = lrs(s, range(10))
    assert np.all(np.diff(warm) > 0)
    np.testing.assert_allclose(warm, 1e-3 * np.arange(1, 11) / 10, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(s(60)), 0.5e-3, rtol=1e-6)
    decay = lrs(s, range(10, 111))
    assert np.all(np.diff(decay) < 0)
    assert float(s(110)) == 0.0 and float(s(500)) == 0.0


def test_cosine_and_constant_decay():
    cos = optim.WarmupDecay(1e-3, warmup_steps=0, total_steps=100, decay="cosine")
    np.testing.assert_allclose(float(cos(0)), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(cos(50)), 0.5e-3, rtol=1e-5)
    np.testing.assert_allclose(float(cos(25)), 1e-3 * (1 + math.cos(math.pi / 4)) / 2, rtol=1e-5)
    assert float(cos(100)) == pytest.approx(0.0, abs=1e-12)
    const = optim.WarmupDecay(1e-3, warmup_steps=4, total_steps=100, decay="constant")
    np.testing.assert_allclose(lrs(const, [4, 50, 99, 1000]), 1e-3, rtol=1e-6)
    assert float(const(1)) < 1e-3


def test_initial_step_continues_the_schedule():
    full = optim.WarmupDecay(1e-3, warmup_steps=20, total_steps=200)
    cont = optim.WarmupDecay(1e-3, warmup_steps=20, total_steps=200, initial_step=30)
    np.testing.assert_allclose(lrs(cont, range(0, 170)), lrs(full, range(30, 200)), rtol=1e-6)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(cont))
    assert float(restored(0)) == pytest.approx(float(full(30)))


def _tiny_model():
    inp = keras.Input((4,))
    x = keras.layers.Dense(8, name="dense")(inp)
    x = keras.layers.LayerNormalization(name="LayerNorm")(x)
    out = keras.layers.Dense(2, name="out")(x)
    return keras.Model(inp, out)


class RecordLR(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.lrs = []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        self.lrs.append(float(opt._learning_rate(opt.iterations)))


def test_continued_run_uses_the_continued_learning_rates():
    """Hyperband-style continuation (fresh optimizer, initial_epoch) with initial_step=N
    sees the same learning rates as the uninterrupted run; without it, warmup restarts."""
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps, epochs = 4, 3
    total = steps * epochs

    def run(initial_step, initial_epoch):
        model = _tiny_model()
        model.compile(optim.build_optimizer(1e-2, 6, total, initial_step=initial_step), loss)
        rec = RecordLR()
        model.fit(x, y, batch_size=8, epochs=epochs, initial_epoch=initial_epoch,
                  callbacks=[rec], verbose=0)
        return np.array(rec.lrs)

    straight = run(0, 0)
    assert len(straight) == total
    continued = run(steps, 1)
    np.testing.assert_allclose(continued, straight[steps:], rtol=1e-6)
    restarted = run(0, 1)
    assert not np.allclose(restarted, straight[steps:])


def test_no_weight_decay_on_layernorm_and_bias():
    """With zero gradients AdamW only decays: kernels shrink, biases and LayerNorm don't."""
    model = _tiny_model()
    for v in model.trainable_variables:  # make biases/beta nonzero so decay would show
        v.assign(np.ones(v.shape, dtype="float32"))
    opt = optim.build_optimizer(0.1, 0, 10, weight_decay=0.5, decay="constant")
    opt.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    changed = {v.path: not np.allclose(v.numpy(), 1.0) for v in model.trainable_variables}
    assert changed["dense/kernel"] and changed["out/kernel"]
    assert not changed["dense/bias"] and not changed["out/bias"]
    assert not changed["LayerNorm/gamma"] and not changed["LayerNorm/beta"]


def test_clipping_and_validation():
    assert optim.build_optimizer(1e-3, 0, 10, clipnorm=1.0).global_clipnorm == 1.0
    assert optim.build_optimizer(1e-3, 0, 10, clipnorm=None).global_clipnorm is None
    with pytest.raises(ConfigError, match="decay"):
        optim.WarmupDecay(1e-3, 0, 10, decay="step")
    with pytest.raises(ConfigError, match="warmup_fraction"):
        optim.resolve_warmup(100, warmup_fraction=1.5)
    assert optim.resolve_warmup(100, warmup_steps=7) == 7
    assert optim.resolve_warmup(100, warmup_steps=7, warmup_fraction=0.1) == 10


def _embedding_model(seed):
    keras.utils.set_random_seed(seed)
    inp = keras.Input((5,), dtype="int32")
    x = keras.layers.Embedding(50, 8, name="emb")(inp)
    x = keras.layers.LayerNormalization(name="LayerNorm")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dense(16, activation="gelu", name="dense")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(x))


def _train(fused, steps=12):
    import tensorflow as tf

    model = _embedding_model(0)
    opt = optim.build_optimizer(3e-2, 3, steps, weight_decay=0.1, clipnorm=0.05, fused=fused)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 50, (steps, 8, 5)).astype("int32")
    y = rng.integers(0, 3, (steps, 8)).astype("int32")
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        if not fused:  # Keras's reference on the dense gradients (see _clip_gradients)
            grads = [tf.convert_to_tensor(g) for g in grads]
        opt.apply(grads, model.trainable_variables)
        return grads[0], tf.linalg.global_norm(grads)

    norms = []
    for i in range(steps):
        emb_grad, norm = step(x[i], y[i])
        norms.append(float(norm))
    assert min(norms) > 0.05  # the clipping was active on every step
    return model, opt, emb_grad


@pytest.mark.parametrize("table_min_rows", [optim.FusedAdamW.table_min_rows, 16],
                         ids=["dense-embedding", "table-update"])
def test_fused_adamw_matches_keras_adamw(table_min_rows, monkeypatch):
    """Same weights and slots after a warmup/decay run with weight decay, clipping and
    an embedding (sparse, IndexedSlices, repeated rows) gradient. The reference is
    Keras's AdamW given the dense gradients: given IndexedSlices, Keras takes the
    clipping norm over the rows as they come, so a token seen twice in a batch counts
    as two rows, not one row with the summed gradient. With ``table_min_rows`` under
    the embedding's 50 rows, the embedding takes ``_apply_adam_table`` (a zero-gradient
    pass over the whole table, then its touched rows written back); 12 steps of 8x5
    tokens leave some rows untouched for several steps in a row."""
    import tensorflow as tf

    monkeypatch.setattr(optim.FusedAdamW, "table_min_rows", table_min_rows)

    fused, fused_opt, emb_grad = _train(True)
    plain, plain_opt, _ = _train(False)
    assert isinstance(fused_opt, optim.FusedAdamW) and not isinstance(plain_opt, optim.FusedAdamW)
    assert isinstance(emb_grad, tf.IndexedSlices)  # the sparse path was exercised
    start = _embedding_model(0)
    for a, b, s in zip(fused.trainable_variables, plain.trainable_variables,
                       start.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=1e-5, err_msg=a.path)
        assert not np.allclose(a.numpy(), s.numpy()), a.path  # it did train
    for a, b in zip(fused_opt.variables, plain_opt.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=1e-5, err_msg=a.path)


def test_fused_adamw_round_trips_through_a_saved_model(tmp_path):
    model, opt, _ = _train(True, steps=2)
    model.compile(optimizer=opt, loss="mse")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, optim.FusedAdamW)
    assert int(loaded.optimizer.iterations) == 2


def test_fused_update_computes_its_scalars_once_not_per_variable():
    """Keras evaluates the learning-rate schedule (and AdamW builds its scalars) again
    for every variable; FusedAdamW's one-pass update does it once. The traced update
    of 20 variables must hold one fused kernel per variable and a few ops besides, far
    fewer than Keras's AdamW: a per-variable schedule would add ~15 ops per variable."""
    import tensorflow as tf

    variables = ([keras.Variable(np.ones((4, 3), "float32"), name=f"kernel_{i}") for i in range(10)]
                 + [keras.Variable(np.ones(3, "float32"), name=f"bias_{i}") for i in range(10)])
    counts = {}
    for fused in (True, False):
        opt = optim.build_optimizer(1e-3, 2, 10, fused=fused)
        opt.build(variables)
        grads = [tf.ones_like(v.value) for v in variables]
        graph = tf.function(lambda: opt.apply(grads, variables)).get_concrete_function().graph
        ops = graph.get_operations()
        counts[fused] = len(ops)
        if fused:
            assert sum(op.type == "ResourceApplyAdam" for op in ops) == len(variables)
    assert counts[True] <= 8 * len(variables) + 150, counts
    assert counts[True] < counts[False] / 3, counts


def test_a_jit_compiled_step_trains_a_word_embedding_table(monkeypatch):
    """Under `jit_compile` (XLA) a table-sized embedding's sparse gradient takes the dense
    update: the table update's `DisableCopyOnRead` has no XLA kernel, and the first step
    of `kt-pipeline train --jit-compile` on MiniLM (30,522 rows) failed with it."""
    from kt_pipeline import training

    monkeypatch.setenv("KT_PIPELINE_BATCH_SPLIT", "0")  # no warning about XLA's one thread
    rows = optim.FusedAdamW.table_min_rows
    ids = keras.Input((5,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(rows, 4)(ids))
    model = keras.Model(ids, keras.layers.Dense(2)(pooled))
    training.compile_classifier(model, optim.build_optimizer(1e-2, 0, 10), jit_compile=True)
    table = model.layers[1].embeddings
    before = table.numpy()
    x = np.arange(20, dtype="int32").reshape(4, 5)
    model.train_on_batch(x, np.array([0, 1, 0, 1]))
    moved = np.any(table.numpy() != before, axis=1)
    assert moved[:20].all()  # the rows the batch used took their update


def _ancestors(op) -> set:
    """Names of every op ``op`` waits for, through data and control inputs."""
    seen, todo = set(), [op]
    while todo:
        cur = todo.pop()
        for parent in [t.op for t in cur.inputs] + list(cur.control_inputs):
            if parent.name not in seen:
                seen.add(parent.name)
                todo.append(parent)
    return seen


def test_the_updates_wait_for_every_gradient(monkeypatch):
    """No write to the weights starts before the backward pass has produced every
    gradient, not even the work that needs none: the weight decay and the embedding
    table's zero-gradient pass (on two cores such a long op in the middle of the split
    passes leaves one half behind, and the other thread waits for it)."""
    import tensorflow as tf

    monkeypatch.setattr(optim.FusedAdamW, "table_min_rows", 16)
    model = _embedding_model(0)
    opt = optim.build_optimizer(1e-3, 0, 10, weight_decay=0.1, clipnorm=1.0)
    x = np.random.default_rng(0).integers(0, 50, (8, 5)).astype("int32")
    produced = []

    @tf.function
    def step(xb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        produced.extend((g.values if isinstance(g, tf.IndexedSlices) else g).op.name
                        for g in grads)
        opt.apply(grads, model.trainable_variables)

    step(x)  # builds the optimizer's slots eagerly, then traces
    graph = step.get_concrete_function(x).graph
    ops = graph.get_operations()
    table_pass = [op for op in ops if op.type in ("StatefulPartitionedCall", "PartitionedCall")
                  and "zero_gradient_pass" in op.get_attr("f").name]
    decays = [op for op in ops if op.type == "AssignVariableOp"
              and op.inputs[1].op.type == "Mul"]
    assert len(table_pass) == 1 and len(decays) == 2  # the two dense kernels are decayed
    produced = set(produced[-len(model.trainable_variables):])  # the last trace's
    for op in table_pass + decays:
        missing = produced - _ancestors(op)
        assert not missing, f"{op.name} can start before {sorted(missing)}"


def test_a_second_model_trains_after_the_first_is_deleted(monkeypatch):
    """keras-tuner builds a model per trial in one process. The table's XLA pass was one
    `tf.function` for the whole process, and its trace kept the first model's variables:
    the next model with a table of the same shape failed ("Called a function referencing
    variables which have been deleted") once the first was garbage-collected."""
    import gc

    monkeypatch.setattr(optim.FusedAdamW, "table_min_rows", 16)
    x = np.random.default_rng(0).integers(0, 50, (16, 5)).astype("int32")
    y = np.arange(16) % 3
    for seed in range(2):
        model = _embedding_model(seed)
        model.compile(optimizer=optim.build_optimizer(1e-2, 0, 4, weight_decay=0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        table = model.get_layer("emb").embeddings
        before = table.numpy()
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        assert not np.allclose(table.numpy(), before)
        del model, table
        gc.collect()
