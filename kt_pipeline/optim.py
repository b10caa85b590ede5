"""AdamW with linear warmup then linear/cosine/constant decay, the BERT recipe.

No weight decay on LayerNorm parameters (``gamma``/``beta``) or biases; gradients are
clipped by global norm (``clipnorm``). ``initial_step`` shifts the schedule so a run
that starts with a fresh optimizer (keras-tuner Hyperband continuing a trial with
``initial_epoch``) continues the schedule instead of warming up again. A run resumed
by ``BackupAndRestore`` restores ``optimizer.iterations`` and keeps ``initial_step=0``.
The optimizer is :class:`FusedAdamW`: Keras's AdamW with TensorFlow's fused Adam kernel
per variable and clipping that keeps sparse (embedding) gradients sparse.

Example:

>>> from kt_pipeline.optim import WarmupDecay, build_optimizer
>>> sched = WarmupDecay(1e-4, warmup_steps=10, total_steps=100)
>>> round(float(sched(9)), 8), round(float(sched(55)), 8), float(sched(100))
(0.0001, 5e-05, 0.0)
>>> opt = build_optimizer(1e-4, warmup_steps=10, total_steps=100)
"""

from __future__ import annotations

import math
import os
import weakref

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
from keras import ops  # noqa: E402

from kt_pipeline.errors import ConfigError  # noqa: E402

DECAYS = ("linear", "cosine", "constant")
# Substrings of variable names that get no weight decay (Keras 3 names LayerNorm
# scale/offset "gamma"/"beta"; the others cover checkpoints with other names).
NO_DECAY_NAMES = ["bias", "gamma", "beta", "LayerNorm", "layer_norm"]


@keras.saving.register_keras_serializable(package="kt_pipeline")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to ``peak_lr`` over ``warmup_steps``, then decay to 0 at ``total_steps``.

    Step ``s`` (0-based, as Keras passes ``optimizer.iterations``) is shifted by
    ``initial_step``. During warmup the rate is ``peak_lr * (s + 1) / warmup_steps``, so
    the first update already moves the weights. After warmup, with
    ``p = (s - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]:
    linear ``peak * (1 - p)``, cosine ``peak * (1 + cos(pi p)) / 2``, constant ``peak``.
    """

    def __init__(
        self,
        peak_lr: float,
        warmup_steps: int,
        total_steps: int,
        decay: str = "linear",
        initial_step: int = 0,
    ):
        if decay not in DECAYS:
            raise ConfigError(f"decay={decay!r}: expected one of {', '.join(DECAYS)}")
        if peak_lr <= 0:
            raise ConfigError(f"learning_rate={peak_lr}: must be > 0")
        if warmup_steps < 0 or total_steps < 0 or initial_step < 0:
            raise ConfigError(
                f"warmup_steps={warmup_steps}, total_steps={total_steps}, "
                f"initial_step={initial_step}: must be >= 0"
            )
        self.peak_lr = float(peak_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(max(total_steps, warmup_steps))
        self.decay = decay
        self.initial_step = int(initial_step)

    def __call__(self, step):
        s = ops.cast(step, "float32") + float(self.initial_step)
        peak = self.peak_lr
        warm = peak * (s + 1.0) / float(max(self.warmup_steps, 1))
        span = float(max(self.total_steps - self.warmup_steps, 1))
        p = ops.clip((s - float(self.warmup_steps)) / span, 0.0, 1.0)
        if self.decay == "linear":
            after = peak * (1.0 - p)
        elif self.decay == "cosine":
            after = peak * 0.5 * (1.0 + ops.cos(math.pi * p))
        else:
            after = peak + 0.0 * p
        return ops.where(s < float(self.warmup_steps), warm, after)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "decay": self.decay,
            "initial_step": self.initial_step,
        }


@keras.saving.register_keras_serializable(package="kt_pipeline")
class FusedAdamW(keras.optimizers.AdamW):
    """Keras AdamW whose per-variable step is TensorFlow's fused ``ResourceApplyAdam``.

    The arithmetic is Keras's own (``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``,
    ``var -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``; weight decay as in
    AdamW), but one kernel makes one pass over each variable and its two slots
    instead of about ten element-wise ops, and the trace holds one op per variable.
    Without a distribution strategy, the weight decay and the kernel run in one loop
    over the variables with the learning rate and Adam's scalars computed once (Keras
    evaluates the schedule again for each decayed variable): a 20-variable update
    traces 266 ops instead of 743, which makes the first step's trace shorter.
    A word embedding's sparse gradient takes :meth:`_apply_adam_table`, which never
    makes it dense.
    Variables, slots and checkpoints are AdamW's. Under a distribution strategy with mirrored or TPU
    variables, with ``amsgrad``, or on another backend, it is plain AdamW.

    Example:

    >>> import numpy as np, keras
    >>> w = keras.Variable(np.ones(3, "float32"))
    >>> opt = FusedAdamW(learning_rate=0.1, weight_decay=0.0)
    >>> opt.apply([np.array([1.0, -1.0, 0.0], "float32")], [w])
    >>> [round(float(x), 3) for x in w.numpy()]
    [0.9, 1.1, 1.0]
    """

    # A variable with a sparse gradient and at least this many rows (a word embedding)
    # takes `_apply_adam_table`; smaller ones (token types) are made dense.
    table_min_rows = 4096
    _unclipped = None  # see `_backend_apply_gradients`

    def _clip_gradients(self, grads):
        """Keras's global-norm clipping without densifying embedding gradients.

        Keras scales every gradient as a dense tensor, so the word embedding's sparse
        gradient (a few hundred rows of 30k) becomes passes over the whole table.
        Here a sparse gradient keeps only its rows, with the rows of a repeated
        token summed first, so the norm is the dense gradient's (as PyTorch's
        ``clip_grad_norm_`` takes it). Keras, and ``tf.clip_by_global_norm``, square
        the rows as they come, which counts a token seen twice in a batch as two
        rows. A non-finite norm makes every gradient NaN, as in Keras.
        """
        import tensorflow as tf

        if (self.clipnorm or not self.global_clipnorm or self.global_clipnorm <= 0
                or keras.backend.backend() != "tensorflow" or tf.distribute.has_strategy()):
            return super()._clip_gradients(grads)
        grads = [_sum_duplicate_rows(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in grads]
        parts = [g.values if isinstance(g, tf.IndexedSlices) else g
                 for g in grads if g is not None]
        norm = tf.sqrt(tf.add_n([2.0 * tf.cast(tf.nn.l2_loss(p), "float32") for p in parts]))
        clip = tf.constant(self.global_clipnorm, "float32")
        scale = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)

        def scaled(g):
            if g is None:
                return g
            if isinstance(g, tf.IndexedSlices):
                return tf.IndexedSlices(g.values * tf.cast(scale, g.values.dtype), g.indices,
                                        g.dense_shape)
            return g * tf.cast(scale, g.dtype)

        return [scaled(g) for g in grads]

    def _slots(self, variable):
        """The ``tf.Variable``s of ``variable`` and its two Adam slots."""
        idx = self._get_variable_index(variable)
        return tuple(x.value if isinstance(x, keras.Variable) else x
                     for x in (variable, self._momentums[idx], self._velocities[idx]))

    def _fusable(self, variable) -> bool:
        """True when ``variable`` can take the fused kernel: TensorFlow, no ``amsgrad``,
        plain resource variables (not mirrored or TPU ones)."""
        import tensorflow as tf

        slots = self._slots(variable)
        return (not self.amsgrad and keras.backend.backend() == "tensorflow"
                and all(hasattr(x, "handle") for x in slots)
                and not any(isinstance(x, tf.distribute.DistributedValues) for x in slots))

    def _one_pass(self, variables) -> bool:
        """True when the whole update can run in `_backend_update_step`'s single loop: no
        distribution strategy and every variable fusable. Otherwise Keras's decay and
        per-variable `update_step` run (each variable still fused where it can be)."""
        import tensorflow as tf

        return not tf.distribute.has_strategy() and all(self._fusable(v) for v in variables)

    def _adam_scalars(self, learning_rate, dtype) -> dict:
        """The fused kernel's scalar inputs for this step, in ``dtype``."""
        import tensorflow as tf

        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        return dict(beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                    lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                    epsilon=tf.cast(self.epsilon, dtype))

    def _apply_adam(self, variable, gradient, scalars) -> None:
        """One fused Adam step of ``variable`` (a sparse gradient is made dense first)."""
        import tensorflow as tf

        var, m, v = self._slots(variable)
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle,
                                     grad=tf.cast(gradient, var.dtype), **scalars)

    def _apply_weight_decay(self, variables):
        # On the one-pass path the decay is applied in `_backend_update_step`, with the
        # learning rate computed once instead of once per variable.
        if not self._one_pass(variables):
            super()._apply_weight_decay(variables)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        """Decay, then the fused Adam kernel, for each variable; scalars computed once.

        Keras evaluates the learning-rate schedule again for every decayed variable and
        builds the Adam scalars per variable (1,593 ops a step for MiniLM, 1,388 of
        them under 20 µs); a 20-variable update traces 266 ops here against 743. The
        decay is Keras's ``var -= var * (lr * weight_decay)`` written as
        ``var.assign(var * (1 - lr * weight_decay))``: ``AssignVariableOp`` takes over
        the product's buffer, so the decay reads and writes the variable once
        (``assign_sub`` of the product touches it five times), 2% faster for MiniLM.

        Nothing here starts before the backward pass has produced every gradient, not
        even the work that needs none (the decay, the embedding table's pass). On a
        two-core CPU the batch's halves run as two chains of ops, one per thread
        (:mod:`kt_pipeline.batch_split`), that meet where the loss needs both halves and
        where clipping needs every gradient: an update that takes a thread in the middle
        (the table's pass holds one for ~18 ms) leaves one half behind, and the other
        thread waits for it at the next meeting. The decay and the kernels wait for
        ``grads`` (clipped, so for every gradient); the table's pass only for the
        gradients before clipping (`_backend_apply_gradients`), so it takes one thread
        first while the other clips and updates the other variables. 1.05-1.07x faster
        MiniLM training steps than with the decay and the pass starting early (stop 23,
        BENCHMARKS.md section 3).
        """
        import tensorflow as tf

        if not self._one_pass(trainable_variables):
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        scalars, keeps = {}, {}  # per dtype
        after = _all_of(grads)  # see above
        for grad, variable in zip(grads, trainable_variables):
            var = self._slots(variable)[0]
            if var.dtype not in scalars:
                scalars[var.dtype] = self._adam_scalars(learning_rate, var.dtype)
                keeps[var.dtype] = 1.0 - scalars[var.dtype]["lr"] * tf.cast(
                    float(self.weight_decay or 0.0), var.dtype)
            decayed = bool(self.weight_decay) and self._use_weight_decay(var)  # as Keras
            keep = keeps[var.dtype] if decayed else None
            if isinstance(grad, tf.IndexedSlices) and var.shape[0] >= self.table_min_rows:
                with tf.control_dependencies(_all_of(self._unclipped or grads)):
                    self._apply_adam_table(variable, grad, scalars[var.dtype], keep)
                continue
            with tf.control_dependencies(after):
                if decayed:
                    var.assign(var * keep)  # one pass: see the docstring
                self._apply_adam(variable, grad, scalars[var.dtype])

    def _backend_apply_gradients(self, grads, trainable_variables):
        # The gradients before clipping, for `_backend_update_step`: the table's pass
        # waits for them only, so it starts before the updates that wait for clipping.
        self._unclipped = grads
        try:
            return super()._backend_apply_gradients(grads, trainable_variables)
        finally:
            self._unclipped = None

    def _apply_adam_table(self, variable, gradient, scalars, keep) -> None:
        """An embedding table's step (sparse gradient): the same AdamW update without
        making the gradient dense.

        AdamW moves every row, not only the few hundred a batch touches: the moments
        decay, the weights decay and keep moving. Made dense, the table's gradient
        costs passes over all its rows (47 MB for MiniLM) to write, clip and read.
        Here the whole table takes the update it would take with a zero gradient,
        which needs neither the gradient nor the clipping factor (it runs beside the
        other variables' updates); then the touched rows, read before that pass, get
        the update with their gradient and are written back. Same arithmetic as the
        fused kernel; ``keep`` is the decay factor (None: no decay). The pass over the
        whole table is one XLA loop (:func:`_zero_gradient_pass`), which reads and
        writes each of the table's three tensors once.
        """
        import tensorflow as tf

        var, m, v = self._slots(variable)
        g = _sum_duplicate_rows(gradient)  # unique rows, so writing them back is exact
        rows, grad = g.indices, tf.cast(g.values, var.dtype)
        # Dense reads then `GatherV2`, not `ResourceGather`: a sparse op puts a variable
        # in copy-on-read mode, where every later dense read or update copies it whole.
        w0, m0, v0 = (tf.gather(x.value(), rows) for x in (var, m, v))
        with tf.control_dependencies([w0, m0, v0]):  # reads released: updates in place
            factor = tf.constant(1.0, var.dtype) if keep is None else keep
            _zero_gradient_pass(self)(var, m, v, factor, *(scalars[k] for k in _SCALARS))
        s = scalars
        m1 = m0 + (grad - m0) * (1.0 - s["beta1"])
        v1 = v0 + (tf.square(grad) - v0) * (1.0 - s["beta2"])
        alpha = s["lr"] * tf.sqrt(1.0 - s["beta2_power"]) / (1.0 - s["beta1_power"])
        w1 = (w0 if keep is None else w0 * keep) - m1 * alpha / (tf.sqrt(v1) + s["epsilon"])
        for x, new in ((m, m1), (v, v1), (var, w1)):
            x.scatter_update(tf.IndexedSlices(new, rows))
            # Back to plain mode (free: the scatter left one reference): see above.
            tf.raw_ops.DisableCopyOnRead(resource=x.handle)

    def update_step(self, gradient, variable, learning_rate):
        """One variable's fused update, as Keras calls it under a distribution strategy."""
        if not self._fusable(variable):
            return super().update_step(gradient, variable, learning_rate)
        self._apply_adam(variable, gradient, self._adam_scalars(learning_rate, variable.dtype))


def _all_of(tensors) -> list:
    """``[op]`` that runs once every tensor in ``tensors`` (``IndexedSlices``' values; None
    skipped) is computed, for ``tf.control_dependencies``; ``[]`` when eager."""
    import tensorflow as tf

    if tf.executing_eagerly():
        return []
    return [tf.group(*(t.values if isinstance(t, tf.IndexedSlices) else t
                       for t in tensors if t is not None))]


_SCALARS = ("lr", "beta1", "beta2", "beta1_power", "beta2_power", "epsilon")


# One traced pass per optimizer: a trace keeps the variables it was first called with,
# so a pass shared by the whole process failed once an earlier model (a keras-tuner
# trial's) with a table of the same shape was garbage-collected.
_PASSES = weakref.WeakKeyDictionary()


def _zero_gradient_pass(optimizer):
    """``f(var, m, v, keep, *scalars)`` for ``optimizer``'s tables (made once per
    optimizer): weight decay by ``keep``, then the fused Adam kernel's step with a zero
    gradient, in one XLA-compiled loop over the variables.

    ``ResourceApplyAdam`` with ``tf.zeros`` after a decay ``Mul`` makes ten passes over
    an embedding table (47 MB for MiniLM) a step; this makes six, the least (read
    ``var``, ``m``, ``v``, write them back). Same expressions as the kernel's:
    ``m += (g - m)(1 - b1)``, ``v += (g^2 - v)(1 - b2)``, ``var -= m alpha / (sqrt(v) + eps)``
    with ``g = 0``. On the two-core AMX Xeon: 1.03-1.04x a training step (A/B both ways;
    BENCHMARKS.md, section 3, stop 22).
    """
    import tensorflow as tf

    if optimizer in _PASSES:
        return _PASSES[optimizer]

    @tf.function(jit_compile=True, autograph=False)
    def zero_gradient_pass(var, m, v, keep, lr, beta1, beta2, beta1_power, beta2_power, epsilon):
        alpha = lr * tf.sqrt(1.0 - beta2_power) / (1.0 - beta1_power)
        m1 = m + (0.0 - m) * (1.0 - beta1)
        v1 = v + (0.0 - v) * (1.0 - beta2)
        m.assign(m1)
        v.assign(v1)
        var.assign(var * keep - m1 * alpha / (tf.sqrt(v1) + epsilon))

    _PASSES[optimizer] = zero_gradient_pass
    return zero_gradient_pass


def _sum_duplicate_rows(g):
    """An ``IndexedSlices`` with each row index once (values of repeated rows summed)."""
    import tensorflow as tf

    unique, pos = tf.unique(g.indices)
    values = tf.math.unsorted_segment_sum(g.values, pos, tf.shape(unique)[0])
    return tf.IndexedSlices(values, unique, g.dense_shape)


def resolve_warmup(total_steps: int, warmup_steps: int = 0, warmup_fraction=None) -> int:
    """Warmup steps: ``warmup_fraction * total_steps`` when given, else ``warmup_steps``."""
    if warmup_fraction is not None:
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ConfigError(f"warmup_fraction={warmup_fraction}: must be within [0, 1]")
        return int(round(warmup_fraction * total_steps))
    return int(warmup_steps)


def build_optimizer(
    learning_rate: float,
    warmup_steps: int,
    total_steps: int,
    decay: str = "linear",
    weight_decay: float = 0.01,
    clipnorm=1.0,
    initial_step: int = 0,
    fused: bool = True,
) -> keras.optimizers.AdamW:
    """AdamW on a :class:`WarmupDecay` schedule, no decay on LayerNorm/bias, clipped.

    ``fused`` (the default) gives :class:`FusedAdamW`, the same update in one kernel per
    variable; ``fused=False`` gives Keras's ``AdamW``.
    """
    schedule = WarmupDecay(learning_rate, warmup_steps, total_steps, decay, initial_step)
    kwargs = {}
    if clipnorm:
        if clipnorm <= 0:
            raise ConfigError(f"clipnorm={clipnorm}: must be > 0 (or null to disable)")
        kwargs["global_clipnorm"] = float(clipnorm)
    cls = FusedAdamW if fused else keras.optimizers.AdamW
    opt = cls(
        learning_rate=schedule,
        weight_decay=float(weight_decay or 0.0),
        epsilon=1e-6,
        **kwargs,
    )
    opt.exclude_from_weight_decay(var_names=NO_DECAY_NAMES)
    return opt
