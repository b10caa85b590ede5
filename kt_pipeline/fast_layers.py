"""Fewer, larger TensorFlow ops for a backbone's layer norms, GELUs, dropouts and
attention.

On the CPU about a quarter of a BERT training step's op time goes to element-wise ops
outside the matrix products, each a pass over an activation tensor. Keras writes layer
normalization, the tanh GELU and dropout as chains of small ops, and TensorFlow's
autodiff differentiates each op of the chain. :func:`install` swaps in the same
arithmetic with hand-written gradients, without touching the weights, the layer
classes or what gets saved:

- ``LayerNormalization`` (over the last axis, not RMS): the normalized tensor's
  gradient is the closed form ``inv * (dy - mean(dy) - x_hat * mean(dy * x_hat))``
  (4 passes where autodiff through ``moments`` takes about 25 ops per layer norm);
  computed in float32 as Keras does, whatever the layer's dtype policy.
- ``Dense`` layers with KerasHub's ``gelu_approximate`` activation (BERT, ALBERT,
  ELECTRA): the backward pass reuses the forward pass's ``tanh``.
- ``Dropout`` (no ``noise_shape``): one multiply by a scaled 0/1 mask, forward and
  backward, instead of multiply-then-select. The mask is drawn from the same seed
  with the same comparison as Keras's ``stateless_dropout``, so it is the same mask.
- ``EinsumDense`` projections (the attention's query, key, value and output,
  ``abc,cde->abde`` and ``abcd,cde->abe``): one 2-D ``MatMul`` and ``BiasAdd`` on the
  reshaped input and kernel instead of ``Einsum``, whose CPU kernel runs these
  products about 15% slower forward and backward; 1.04x a MiniLM training step
  (BENCHMARKS.md, section 3, stop 24).
- ``MultiHeadAttention`` with dropout, between the projections (``_compute_attention``):
  the scores scaled and offset by a 0 / -1e9 bias from the mask, where Keras selects
  before the softmax and again after it (forward and backward); the same dropout mask,
  and zeros for a query with no key to attend to, as Keras gives. 1.02x a MiniLM
  training step (BENCHMARKS.md, section 3, stop 25).

:func:`install_cls_only` (for a classifier that reads the first position only) runs
the last transformer layer for that position. Outputs and gradients match the stock
layers to float32 rounding (``tests/test_fast_layers.py``). On MiniLM (2-core CPU,
batches of 13 and 24 tokens) a training step is about 1.07x faster with
:func:`install` and 1.14-1.17x with both (``bench/layers_ab.py``; BENCHMARKS.md,
section 3, stop 15). Only the TensorFlow backend is changed;
``KT_PIPELINE_FAST_LAYERS=0`` turns both off. A reloaded ``.keras`` model has stock
layers, with the same arithmetic.

Example:

>>> import keras, numpy as np
>>> from kt_pipeline import fast_layers
>>> model = keras.Sequential([keras.Input((4, 8)), keras.layers.LayerNormalization(),
...                           keras.layers.Dropout(0.1)])
>>> fast_layers.install(model)
{'layer_norm': 1, 'gelu': 0, 'dropout': 1, 'projection': 0, 'attention': 0}
>>> x = np.arange(32, dtype="float32").reshape(1, 4, 8)
>>> bool(np.allclose(model(x), keras.layers.LayerNormalization()(x), atol=1e-5))
True
"""

from __future__ import annotations

import functools
import math
import os
import re
import types

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402

ENV = "KT_PIPELINE_FAST_LAYERS"
_C = math.sqrt(2.0 / math.pi)  # tanh GELU: 0.5 x (1 + tanh(C (x + A x^3)))
_A = 0.044715


def enabled() -> bool:
    """True unless ``KT_PIPELINE_FAST_LAYERS`` is ``0``/``false``/``no``/``off``, or the
    Keras backend is not TensorFlow."""
    off = os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")
    return not off and keras.backend.backend() == "tensorflow"


def gelu_approximate(x):
    """KerasHub's ``gelu_approximate`` (the tanh form) with a backward pass that reuses
    the forward pass's ``tanh``.

    >>> import numpy as np
    >>> x = np.linspace(-3, 3, 7).astype("float32")
    >>> stock = keras.activations.gelu(x, approximate=True)
    >>> bool(np.allclose(gelu_approximate(x), stock, atol=1e-6))
    True
    """
    return _gelu_with_gradient()(x)


def _gelu_impl(x):
    import tensorflow as tf

    x2 = x * x
    t = tf.tanh(x * (_C + (_C * _A) * x2))
    half_x = 0.5 * x

    def grad(dy):
        # d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x (1 - t^2) C (1 + 3 A x^2)
        return dy * (0.5 + 0.5 * t + half_x * (1.0 - t * t) * (_C + (3.0 * _C * _A) * x2))

    return half_x * (1.0 + t), grad


@functools.lru_cache(maxsize=None)
def _gelu_with_gradient():
    import tensorflow as tf

    return tf.custom_gradient(_gelu_impl)


@functools.lru_cache(maxsize=None)
def _normalize(epsilon: float):
    """``x -> (x - mean) / sqrt(var + epsilon)`` over the last axis, closed-form gradient."""
    import tensorflow as tf

    @tf.custom_gradient
    def normalize(x):
        mean = tf.reduce_mean(x, -1, keepdims=True)
        centered = x - mean
        inv = tf.math.rsqrt(tf.reduce_mean(tf.square(centered), -1, keepdims=True) + epsilon)
        x_hat = centered * inv

        def grad(dy):
            return inv * (dy - tf.reduce_mean(dy, -1, keepdims=True)
                          - x_hat * tf.reduce_mean(dy * x_hat, -1, keepdims=True))

        return x_hat, grad

    return normalize


def _layer_norm_call(self, inputs):
    import tensorflow as tf

    y = _normalize(float(self.epsilon))(tf.cast(inputs, "float32"))  # float32, as Keras
    if self.gamma is not None:
        y = y * tf.cast(self.gamma, "float32")
    if self.beta is not None:
        y = y + tf.cast(self.beta, "float32")
    return tf.cast(y, self.compute_dtype)


def _dropout_call(self, inputs, training=False):
    if not (training and self.rate > 0):
        return inputs
    import tensorflow as tf

    if self.rate >= 1.0:
        return tf.zeros_like(inputs)
    return inputs * _keep_mask(self, inputs, 1.0 / (1.0 - self.rate))


def _keep_mask(layer, inputs, scale):
    """Keras's dropout mask for ``inputs`` from ``layer`` (a ``Dropout``), times ``scale``
    (a number, or a tensor that broadcasts against ``inputs``): the seed and the draw of
    Keras's ``backend.random.dropout`` (``stateless_dropout``), the same uniform numbers in
    the input's dtype, kept where ``>= rate``. Draws the layer's next seed."""
    import tensorflow as tf
    from keras.src.backend.tensorflow.random import _cast_seed, draw_seed

    seed = _cast_seed(draw_seed(layer.seed_generator))
    uniform = tf.random.stateless_uniform(tf.shape(inputs), seed=seed, dtype=inputs.dtype)
    return tf.cast(uniform >= layer.rate, inputs.dtype) * scale


_MHA_COMPUTE = keras.layers.MultiHeadAttention._compute_attention  # install's condition


def _attention(self, query, key, value, attention_mask=None, training=None,
               return_attention_scores=False, use_causal_mask=False):
    """``MultiHeadAttention._compute_attention`` for ``[batch, length, heads, dim]``
    projections and a dropout rate in (0, 1), the explicit path Keras takes then: the
    scores scaled and offset by a 0 / -1e9 bias from the mask (one add, where Keras
    selects before the softmax and again after it), and the rows with no key to attend
    to zeroed by the dropout's multiplier (Keras's second select does that). Same
    dropout mask. Anything else (scores returned, a causal mask alone, which Keras passes
    as ``use_causal_mask``, other shapes, no dropout) is Keras's."""
    import tensorflow as tf
    from keras.src.layers.activations.softmax import _large_negative_number

    rate = self._dropout_layer.rate
    if (return_attention_scores or use_causal_mask or len(query.shape) != 4
            or tuple(self._attention_axes) != (1,) or not 0.0 < rate < 1.0):
        return _MHA_COMPUTE(self, query, key, value, attention_mask, training,
                            return_attention_scores, use_causal_mask=use_causal_mask)
    dtype = query.dtype
    q, k, v = (tf.transpose(t, [0, 2, 1, 3]) for t in (query, key, value))  # [B, N, T, H]
    scores = tf.matmul(q, k, transpose_b=True) * tf.cast(self._inverse_sqrt_key_dim, dtype)
    any_key = None
    if attention_mask is not None:
        mask = attention_mask  # [B, T or 1, S] -> [B, 1, T or 1, S], as Keras expands it
        for _ in range(4 - len(mask.shape)):
            mask = tf.expand_dims(mask, -3)
        mask = mask if mask.dtype == tf.bool else mask > tf.cast(0.5, mask.dtype)
        scores += tf.where(mask, tf.zeros([], dtype),
                           tf.constant(_large_negative_number(dtype.name), dtype))
        any_key = tf.cast(tf.reduce_any(mask, -1, keepdims=True), dtype)  # [B, 1, T or 1, 1]
    probs = tf.nn.softmax(scores)
    if training:
        keep = 1.0 / (1.0 - rate)  # the dropout's scale on what it keeps
        probs *= _keep_mask(self._dropout_layer, probs,
                            keep if any_key is None else any_key * keep)
    elif any_key is not None:
        probs *= any_key
    return tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3]), None


def _projection(layer):
    """How many leading kernel axes ``layer`` (an ``EinsumDense``) contracts, when it is a
    plain projection the 2-D form can take, else None: equation
    ``<batch><in>,<in><out>-><batch><out>`` (KerasHub's attention projections
    ``abc,cde->abde`` and ``abcd,cde->abe``), a bias on every output axis or none, no
    LoRA, not quantized. (LoRA enabled later is still right: the call reads
    ``layer.kernel``, which adds it; a layer quantized later runs Keras's
    ``quantized_call`` instead of ``call``.)"""
    m = re.fullmatch(r"([a-z]+),([a-z]+)->([a-z]+)", layer.equation.replace(" ", ""))
    if (m is None or getattr(layer, "lora_enabled", False)
            or getattr(layer, "quantization_mode", None) is not None):
        return None
    x, k, o = m.groups()
    for c in range(1, len(k)):
        batch, contracted, out = x[:len(x) - c], k[:c], k[c:]
        if x == batch + contracted and o == batch + out and batch:
            if layer.bias is not None and (layer.bias_axes or "") != out:
                return None
            return c
    return None


def _projection_call(self, inputs, training=None):
    """``EinsumDense.call`` as one 2-D ``MatMul`` and ``BiasAdd`` (see `_projection`):
    TensorFlow's ``Einsum`` kernel runs these products about 15% slower, forward and
    backward, than ``MatMul`` on the same numbers reshaped."""
    import tensorflow as tf

    c = self._kt_projection
    kernel = tf.cast(self.kernel, self.compute_dtype)
    k_out = list(kernel.shape[c:])
    n_in, n_out = math.prod(kernel.shape[:c]), math.prod(k_out)
    dynamic = tf.shape(inputs)
    lead = [d if d is not None else dynamic[i] for i, d in enumerate(inputs.shape[:-c])]
    y = tf.matmul(tf.reshape(inputs, [-1, n_in]), tf.reshape(kernel, [n_in, n_out]))
    if self.bias is not None:
        y = tf.nn.bias_add(y, tf.reshape(tf.cast(self.bias, self.compute_dtype), [n_out]))
    y = tf.reshape(y, lead + k_out)  # static where the input's shape is
    if self.activation is not None:
        y = self.activation(y)
    return y


def _last_axis_only(layer) -> bool:
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    return list(axes) == [-1]  # KerasHub's; a positive axis is left to Keras


def install(model) -> dict:
    """Swap the fast forms into every matching layer of ``model`` (in place).

    Returns how many layers of each kind were changed; all zeros when turned off
    (:func:`enabled`). Calling it twice changes nothing more.
    """
    from keras_hub.src.utils.keras_utils import gelu_approximate as hub_gelu

    counts = {"layer_norm": 0, "gelu": 0, "dropout": 0, "projection": 0, "attention": 0}
    if not enabled():
        return counts
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if getattr(layer, "_kt_fast", False):
            continue
        if (isinstance(layer, keras.layers.LayerNormalization) and not layer.rms_scaling
                and _last_axis_only(layer)):
            layer.call = types.MethodType(_layer_norm_call, layer)
            counts["layer_norm"] += 1
        elif isinstance(layer, keras.layers.Dense) and layer.activation is hub_gelu:
            layer.activation = gelu_approximate
            counts["gelu"] += 1
        elif isinstance(layer, keras.layers.Dropout) and layer.noise_shape is None:
            layer.call = types.MethodType(_dropout_call, layer)
            counts["dropout"] += 1
        elif (isinstance(layer, keras.layers.MultiHeadAttention)
              and type(layer)._compute_attention is _MHA_COMPUTE):  # not overridden
            layer._compute_attention = types.MethodType(_attention, layer)
            counts["attention"] += 1
        elif isinstance(layer, keras.layers.EinsumDense) and (axes := _projection(layer)):
            layer._kt_projection = axes
            layer.call = types.MethodType(_projection_call, layer)
            counts["projection"] += 1
        else:
            continue
        layer._kt_fast = True
    return counts


def _cls_only_call(self, inputs, padding_mask=None, attention_mask=None, training=None,
                   return_attention_scores=False):
    """KerasHub ``TransformerEncoder.call`` for the first position only: keys and values
    from every position, query, residual, feed-forward and layer norms for position 0.
    Returns ``[batch, 1, hidden]``."""
    from keras_hub.src.layers.modeling.transformer_layer_utils import (
        merge_padding_and_attention_mask,
    )

    if return_attention_scores:
        return self._kt_stock_call(inputs, padding_mask=padding_mask,
                                   attention_mask=attention_mask, training=training,
                                   return_attention_scores=True)
    mask = merge_padding_and_attention_mask(inputs, padding_mask, attention_mask)
    if mask is not None:
        mask = mask[:, :1, :]  # [batch, 1 query, keys]
    residual = inputs[:, :1, :]
    x = self._self_attention_layer_norm(inputs) if self.normalize_first else inputs
    x = self._self_attention_layer(query=x[:, :1, :], value=x, attention_mask=mask,
                                   training=training)
    x = self._self_attention_dropout(x, training=training) + residual
    if not self.normalize_first:
        x = self._self_attention_layer_norm(x)
    residual = x
    if self.normalize_first:
        x = self._feedforward_layer_norm(x)
    x = self._feedforward_output_dense(self._feedforward_intermediate_dense(x))
    x = self._feedforward_dropout(x, training=training) + residual
    if not self.normalize_first:
        x = self._feedforward_layer_norm(x)
    return x


def _last_transformer_layer(backbone):
    """The last entry of a KerasHub backbone's ``transformer_layers`` (None if it has none;
    a list of layers for ALBERT's groups)."""
    layers = getattr(backbone, "transformer_layers", None) or []
    return layers[-1] if layers else None


def install_cls_only(backbone) -> bool:
    """Make the backbone's last transformer layer compute position 0 only.

    For a classifier that reads the first token's vector (``pooling="cls"``), the last
    layer's other positions are computed and thrown away; their keys and values are
    all it needs from them. With this, the last layer's query, attention output,
    feed-forward block and layer norms run for one position instead of all, and its
    ``sequence_output`` is ``[batch, 1, hidden]`` (the first position, unchanged:
    ``tests/test_fast_layers.py``). MiniLM has 6 layers, so that is about a sixth of
    a step's matrix products. Only for KerasHub backbones whose last layer is one
    ``TransformerEncoder`` called once (BERT, RoBERTa, XLM-R, DistilBERT; not ALBERT,
    which shares layers); returns whether it was installed. Off with
    ``KT_PIPELINE_FAST_LAYERS=0``.
    """
    if not enabled():
        return False
    from keras_hub.layers import TransformerEncoder

    last = _last_transformer_layer(backbone)
    if not isinstance(last, TransformerEncoder) or len(getattr(last, "_inbound_nodes", [])) != 1:
        return False
    swap_call(last, _cls_only_call, flag="_kt_cls_only", stock="_kt_stock_call")
    return True


def swap_call(layer, new_call, flag: str, stock: str) -> None:
    """Make ``new_call`` (a function of ``self``) ``layer``'s ``call``, keeping the one it
    replaces as ``layer.<stock>`` and marking ``layer.<flag>``; nothing if already marked."""
    if not getattr(layer, flag, False):
        setattr(layer, stock, layer.call)
        layer.call = types.MethodType(new_call, layer)
        setattr(layer, flag, True)


def remove_cls_only(backbone) -> None:
    """Undo :func:`install_cls_only` (for a backbone reused under another pooling)."""
    last = _last_transformer_layer(backbone)
    if getattr(last, "_kt_cls_only", False):
        last.call = last._kt_stock_call
        last._kt_cls_only = False
