"""Speaker clustering: the model, its training loop, and evaluation against baselines.

Model: backbone -> masked-mean (or CLS) pooling -> projection MLP (``projection_hidden``,
e.g. ``"1024,2048"``) -> ``embedding_dim`` embedding (optionally ``tanh`` or L2
normalised), plus a binary narrative head on the pooled output. Loss: narrative BCE +
``lam`` x (anchor contrastive | SupCon), see :mod:`kt_pipeline.losses`. Batches come
from :class:`kt_pipeline.sampler.BookSpeakerSampler` (P speakers x K quotes of one
book); anchors from :class:`kt_pipeline.anchors.AnchorMemory`.

Data flow: examples (PDNC folder or plain CSV, :mod:`kt_pipeline.pdnc`) -> windowed
text CSV -> TFRecord cache (``task="clustering"``: split by book, speaker = label,
``is_narrative`` extra column) -> in memory. The model directory holds
``config.json``, ``best.weights.h5`` (best validation ``monitor``), ``history.json``,
``results.json``, PNG plots and TensorBoard logs (``tb/``).

Example:

>>> from kt_pipeline import speakers
>>> cfg = speakers.ClusterConfig(data="../shared/data/pdnc", books="Emma,Persuasion,DaisyMiller",
...                              model_dir="runs/spk", steps=50)               # doctest: +SKIP
>>> speakers.train(cfg)["best"]["v_measure"]                                   # doctest: +SKIP
>>> speakers.build_and_fit({"sigma": 0.5, "window": 16}, base=cfg)["val_ari"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import posixpath
import sys
import time
from typing import NamedTuple, Optional

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402

from kt_pipeline import clustering, pdnc  # noqa: E402
from kt_pipeline.config import apply_overrides, from_dict  # noqa: E402
from kt_pipeline.errors import ConfigError, DataError, KtError  # noqa: E402

CONFIG_FILE, WEIGHTS_FILE, HISTORY_FILE, RESULTS_FILE = (
    "config.json", "best.weights.h5", "history.json", "results.json")
FINALS = ("none", "tanh", "l2")
MONITORS = ("v_measure", "ari")
POOLINGS = ("marker", "mean", "cls")


def marker_ids(preset) -> tuple:
    """Token ids of the quote markers ``«`` and ``»`` (first piece of each)."""
    import tensorflow as tf

    from kt_pipeline import encoders

    ids = encoders.load_tokenizer(preset)(tf.constant(list(pdnc.MARKERS)))
    ids = ids.to_list() if hasattr(ids, "to_list") else [list(x) for x in ids]
    return int(ids[0][0]), int(ids[1][0])


@functools.lru_cache(maxsize=None)
def _marker_pooling_layer():
    """``MarkerPooling``: hidden states at the quote markers plus the masked mean.

    The entity-marker idea (Baldini Soares et al., 2019): the marker tokens sit next
    to the attribution cue, so attention can gather the speaker's name into them.
    A missing marker (``window=0``, truncation) falls back to the masked mean.
    """
    import keras
    from keras import ops

    from kt_pipeline import models

    class MarkerPooling(keras.layers.Layer):
        def __init__(self, open_id: int, close_id: int, **kwargs):
            super().__init__(**kwargs)
            self.open_id, self.close_id = int(open_id), int(close_id)

        def call(self, sequence_output, token_ids, padding_mask):
            mean = models.pool(sequence_output, padding_mask, "mean")

            def at(token_id):
                m = ops.cast(ops.equal(token_ids, token_id), sequence_output.dtype)[:, :, None]
                count = ops.sum(m, axis=1)
                value = ops.sum(sequence_output * m, axis=1) / ops.maximum(count, 1.0)
                return ops.where(count > 0, value, mean)

            return ops.concatenate([at(self.open_id), at(self.close_id), mean], axis=-1)

        def get_config(self):
            return {**super().get_config(), "open_id": self.open_id, "close_id": self.close_id}

    return MarkerPooling


@dataclasses.dataclass
class ClusterConfig:
    """Everything `kt-pipeline cluster train` needs; saved as ``config.json``."""

    # data
    data: str = "../shared/data/pdnc"  # PDNC folder or plain examples CSV
    books: Optional[str] = None  # comma-separated PDNC folders (default: all)
    work_dir: str = "tfrecords/speakers"  # windowed CSVs and caches live here
    narrative_ratio: float = 0.25  # narrative examples per quote (PDNC)
    window: int = 12  # context each side (0 = the quote alone)
    quote_words: Optional[int] = 24  # keep the first N words of long quotes (null = all)
    window_unit: str = "words"  # words | chars
    ratios: str = "0.6,0.2,0.2"  # train,validation,test share of quotes (whole books)
    split_seed: int = 0
    cache_max_length: int = 256
    max_seq_length: int = 96  # fits the quote (24 words) and 12 words each side
    # model
    model_dir: str = "runs/speakers"
    preset: Optional[str] = None
    pooling: str = "marker"  # marker ([open «, close », mean]) | mean | cls
    projection_hidden: str = "1024"  # comma-separated hidden sizes ("" = none)
    embedding_dim: int = 128
    final: str = "l2"  # none | tanh | l2
    dropout: float = 0.1
    # loss
    loss: str = "anchor"  # anchor | supcon
    lam: float = 10.0  # best measured on held-out novels (docs/RESULTS.md, rounds 2-3)
    margin: float = 0.5
    sigma: float = 0.5  # 1 = in-batch terms only, 0 = anchor terms only
    mu_p: float = 0.0  # no pull term: 0.2 -> 0 lifted held-out ARI (docs/RESULTS.md, round 5)
    mu_n: float = 1.0
    softness: float = 0.1  # T of the smooth push terms
    positives: str = "each"  # push: each positive | the hardest one (losses.py)
    temperature: float = 0.1  # SupCon
    balance: str = "none"  # none | inverse (weights lowered held-out ARI: RESULTS.md, round 6)
    memory_steps: Optional[int] = 20  # null = unlimited
    anchor_every: int = 10
    anchors_per_speaker: int = 1
    anchor_threshold: Optional[float] = None
    # sampler / optimisation
    speakers_per_batch: int = 8
    speaker_power: float = 1.0  # draw speakers ~ n_quotes ** power (0 = uniformly; RESULTS.md, round 6)
    quotes_per_speaker: int = 4
    narrative_per_batch: int = 4
    steps: int = 600  # 200 steps: 1.4x the untrained ARI; 600: 3.7x (RESULTS.md)
    learning_rate: float = 1e-4
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    clipnorm: Optional[float] = 1.0
    eval_every: int = 100
    log_every: int = 25
    monitor: str = "v_measure"  # v_measure | ari
    eval_method: str = "bisecting_kmeans"  # used for the monitor during training
    max_eval_quotes: Optional[int] = 400  # per book, during training evaluation
    methods: str = "hdbscan,bisecting_kmeans,affinity"
    k: str = "gold"  # gold | estimate | an integer
    strategy: str = "auto"
    seed: int = 42

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate(cfg: ClusterConfig) -> None:
    """Raise ConfigError for settings that cannot work, naming the setting."""
    from kt_pipeline.losses import POSITIVES

    checks = [
        (cfg.final in FINALS, f"final={cfg.final!r}: expected one of {', '.join(FINALS)}"),
        (cfg.pooling in POOLINGS, f"pooling={cfg.pooling!r}: expected one of {', '.join(POOLINGS)}"),
        (cfg.monitor in MONITORS, f"monitor={cfg.monitor!r}: expected one of {', '.join(MONITORS)}"),
        (cfg.loss in ("anchor", "supcon"), f"loss={cfg.loss!r}: expected anchor or supcon"),
        (cfg.balance in ("inverse", "none"), f"balance={cfg.balance!r}: expected inverse or none"),
        (0.0 <= cfg.sigma <= 1.0, f"sigma={cfg.sigma}: expected 0..1"),
        (0.0 <= cfg.speaker_power <= 2.0, f"speaker_power={cfg.speaker_power}: expected 0..2"),
        (cfg.window >= 0, f"window={cfg.window}: expected >= 0"),
        (0 <= cfg.narrative_ratio < float("inf"),
         f"narrative_ratio={cfg.narrative_ratio}: expected a number >= 0"),
        (cfg.window_unit in pdnc.UNITS, f"window_unit={cfg.window_unit!r}: expected words or chars"),
        (2 <= cfg.max_seq_length <= cfg.cache_max_length,
         f"max_seq_length={cfg.max_seq_length}: expected 2..cache_max_length ({cfg.cache_max_length})"),
        (cfg.steps >= 1 and cfg.eval_every >= 1, "steps and eval_every must be >= 1"),
        (cfg.log_every >= 1, f"log_every={cfg.log_every}: expected >= 1"),
        (cfg.max_eval_quotes is None or cfg.max_eval_quotes >= 1,
         f"max_eval_quotes={cfg.max_eval_quotes}: expected >= 1 (null = all)"),
        (cfg.quote_words is None or cfg.quote_words >= 1,
         f"quote_words={cfg.quote_words}: expected >= 1 (null = the whole quote)"),
        (cfg.embedding_dim >= 1, f"embedding_dim={cfg.embedding_dim}: expected >= 1"),
        (0.0 <= cfg.dropout < 1.0, f"dropout={cfg.dropout}: expected 0 <= dropout < 1"),
        (str(cfg.k) in ("gold", "estimate") or str(cfg.k).isdigit() and int(cfg.k) >= 1,
         f"k={cfg.k!r}: expected gold, estimate or a number of clusters >= 1"),
        (cfg.temperature > 0, f"temperature={cfg.temperature}: expected > 0"),
        (cfg.softness > 0, f"softness={cfg.softness}: expected > 0"),
        (cfg.positives in POSITIVES,
         f"positives={cfg.positives!r}: expected one of {', '.join(POSITIVES)}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    hidden_sizes(cfg)
    methods(cfg)


def hidden_sizes(cfg: ClusterConfig) -> list:
    try:
        return [int(x) for x in str(cfg.projection_hidden or "").replace(" ", "").split(",") if x]
    except ValueError:
        raise ConfigError(f"projection_hidden={cfg.projection_hidden!r}: expected sizes like "
                          "'1024' or '1024,2048'") from None


def methods(cfg: ClusterConfig) -> list:
    out = [m for m in cfg.methods.replace(" ", "").split(",") if m]
    bad = [m for m in out + [cfg.eval_method] if m not in clustering.METHODS]
    if bad:
        raise ConfigError(f"methods: unknown {', '.join(bad)}; expected {', '.join(clustering.METHODS)}")
    return out


def _k(cfg: ClusterConfig):
    return cfg.k if cfg.k in ("gold", "estimate") else int(cfg.k)


# ------------------------------------------------------------------------------ data


class SplitData(NamedTuple):
    """One split in memory: unpadded ids and per-example book/speaker/narrative."""

    ids: list  # int32 arrays
    labels: np.ndarray  # speaker index (manifest labels)
    groups: np.ndarray  # book index into group_names
    narrative: np.ndarray  # bool
    group_names: list

    def quotes(self) -> np.ndarray:
        return np.flatnonzero(~self.narrative)


def read_examples(cfg: ClusterConfig) -> list:
    """Examples from ``cfg.data``: a PDNC folder or a plain examples CSV."""
    import tensorflow as tf

    if tf.io.gfile.isdir(cfg.data):
        books = [b.strip() for b in cfg.books.split(",")] if cfg.books else None
        return pdnc.read_pdnc(cfg.data, books, cfg.narrative_ratio, cfg.split_seed)
    examples = pdnc.read_examples_csv(cfg.data)
    if cfg.books:
        wanted = {b.strip() for b in cfg.books.split(",")}
        examples = [e for e in examples if e["book"] in wanted]
    return examples


def prepare_cache(cfg: ClusterConfig, tokenizer=None, progress: bool = False) -> dict:
    """Write the windowed CSV and build (or reuse) its cache; return the manifest."""
    import tensorflow as tf

    from kt_pipeline import cache

    key = hashlib.sha256(json.dumps([cfg.data, cfg.books, cfg.narrative_ratio, cfg.split_seed],
                                    sort_keys=True).encode()).hexdigest()[:8]
    name = f"{key}-w{cfg.window}{cfg.window_unit[0]}-q{cfg.quote_words or 0}"
    tf.io.gfile.makedirs(cfg.work_dir)
    csv_path = posixpath.join(cfg.work_dir, f"{name}.csv")
    examples = read_examples(cfg)
    if not examples:
        raise DataError(f"{cfg.data}: no examples (books={cfg.books!r})")
    pdnc.write_cache_csv(examples, csv_path, cfg.window, cfg.window_unit, cfg.quote_words)
    try:
        ratios = tuple(float(r) for r in cfg.ratios.split(","))
    except ValueError:
        raise ConfigError(f"ratios={cfg.ratios!r}: expected e.g. 0.6,0.2,0.2") from None
    return cache.ensure_cache(
        csv_path, posixpath.join(cfg.work_dir, name), preset=cfg.preset, tokenizer=tokenizer,
        task="clustering", text_col="text", label_col="speaker", group_col="book",
        extra_cols=("is_narrative",), ratios=ratios, seed=cfg.split_seed,
        max_length=cfg.cache_max_length, progress=progress,
    )


def load_split(cache_dir: str, split: str, max_seq_length: int) -> SplitData:
    """Read one split of a clustering cache into memory."""
    from kt_pipeline import reader

    ds = reader.make_dataset(cache_dir, split, batch_size=512, max_seq_length=max_seq_length,
                             padding="dynamic", extras=("group", "is_narrative"))
    ids, labels, groups, narr = [], [], [], []
    for f, y in ds.as_numpy_iterator():
        lengths = f["padding_mask"].sum(axis=1)
        ids.extend(row[:n].astype(np.int32) for row, n in zip(f["token_ids"], lengths))
        labels.append(y)
        groups.extend(g.decode() for g in f["group"])
        narr.extend(x.decode().strip().lower() in ("1", "true") for x in f["x_is_narrative"])
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    return SplitData(ids, np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64),
                     np.array([index[g] for g in groups], np.int64), np.array(narr, bool), names)


def pad_batch(ids: list, idx, pad_id: int, multiple: int = 16):
    """``(token_ids int32 [B, L], padding_mask bool [B, L])``, L rounded up to ``multiple``."""
    rows = [ids[i] for i in idx]
    width = max(len(r) for r in rows)
    width = int(np.ceil(width / multiple) * multiple)
    tok = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tok[i, : len(r)] = r
        mask[i, : len(r)] = True
    return tok, mask


def _subsample_quotes(data: SplitData, cap: Optional[int], seed: int = 0) -> np.ndarray:
    """Indices of each book's quotes, at most ``cap`` per book (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for g in np.unique(data.groups):
        rows = np.flatnonzero((data.groups == g) & ~data.narrative)
        if cap and len(rows) > cap:
            rows = np.sort(rng.choice(rows, cap, replace=False))
        out.append(rows)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------- model


def build_model(backbone, cfg: ClusterConfig, markers: Optional[tuple] = None):
    """Functional Keras model: inputs ``token_ids``/``padding_mask``; outputs
    ``{"embedding": [B, embedding_dim], "narrative_logit": [B, 1]}`` (float32).

    ``markers`` = the ids of ``«``/``»`` (:func:`marker_ids`), needed for ``pooling="marker"``.
    """
    import keras

    from kt_pipeline import models

    names = models.backbone_input_names(backbone)
    models._freeze_unused_pooler(backbone)
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(None,), dtype="bool", name="padding_mask")
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if "segment_ids" in names:
        inputs["segment_ids"] = models.ZeroSegments(name="segment_ids")(token_ids)
    out = backbone(inputs)
    seq = out["sequence_output"] if isinstance(out, dict) else out
    if cfg.pooling == "marker":
        if markers is None:
            markers = marker_ids(cfg.preset)
        pooled = _marker_pooling_layer()(*markers, name="pooling")(seq, token_ids, padding_mask)
    else:
        pooled = models.Pooling(cfg.pooling, name="pooling")(seq, padding_mask)
    x = keras.layers.Dropout(cfg.dropout)(pooled)
    for i, h in enumerate(hidden_sizes(cfg)):
        x = keras.layers.Dense(h, activation="gelu", name=f"proj_{i}")(x)
    z = keras.layers.Dense(cfg.embedding_dim, dtype="float32", name="embedding_dense")(x)
    if cfg.final == "tanh":
        z = keras.layers.Activation("tanh", dtype="float32", name="embedding_tanh")(z)
    elif cfg.final == "l2":
        z = keras.layers.UnitNormalization(dtype="float32", name="embedding_l2")(z)
    narrative = keras.layers.Dense(1, dtype="float32", name="narrative_logit")(pooled)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask},
                       {"embedding": z, "narrative_logit": narrative}, name="speaker_model")


def untrained_encoder(backbone):
    """The baseline: the backbone's masked-mean pooled output."""
    import keras

    from kt_pipeline import models

    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(None,), dtype="bool", name="padding_mask")
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if "segment_ids" in models.backbone_input_names(backbone):
        inputs["segment_ids"] = models.ZeroSegments()(token_ids)
    out = backbone(inputs)
    seq = out["sequence_output"] if isinstance(out, dict) else out
    pooled = models.Pooling("mean")(seq, padding_mask)
    return keras.Model({"token_ids": token_ids, "padding_mask": padding_mask},
                       {"embedding": pooled}, name="untrained_encoder")


def embed(model, data: SplitData, idx, pad_id: int, batch_size: int = 64):
    """``(embeddings [n, D], narrative probabilities [n] or None)`` for rows ``idx``."""
    import tensorflow as tf

    idx = np.asarray(idx)
    order = idx[np.argsort([len(data.ids[i]) for i in idx], kind="stable")]
    fn = getattr(model, "_kt_embed_fn", None)
    if fn is None:  # one traced function per model (shapes vary: reduce_retracing)
        fn = model._kt_embed_fn = tf.function(lambda x: model(x, training=False),
                                              reduce_retracing=True)
    zs, ps = {}, {}
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        tok, mask = pad_batch(data.ids, chunk, pad_id)
        out = fn({"token_ids": tf.constant(tok), "padding_mask": tf.constant(mask)})
        z = out["embedding"].numpy()
        p = tf.sigmoid(out["narrative_logit"]).numpy()[:, 0] if "narrative_logit" in out else None
        for j, i in enumerate(chunk):
            zs[i] = z[j]
            ps[i] = None if p is None else p[j]
    if not len(idx):
        return np.zeros((0, 1), np.float32), None
    z = np.stack([zs[i] for i in idx])
    p = None if ps[idx[0]] is None else np.array([ps[i] for i in idx])
    return z, p


def narrative_metrics(prob, narrative) -> dict:
    """Accuracy and F1 (narrative = positive class) of the narrative head at 0.5."""
    from sklearn.metrics import accuracy_score, f1_score

    pred = np.asarray(prob) >= 0.5
    y = np.asarray(narrative, bool)
    return {"accuracy": float(accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, zero_division=0.0)), "n": int(len(y))}


# ------------------------------------------------------------------------- training


def _write_json(path: str, obj) -> None:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, default=float))


def load_config(model_dir: str) -> ClusterConfig:
    import tensorflow as tf

    path = posixpath.join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise KtError(f"{model_dir}: no {CONFIG_FILE}; train first with `kt-pipeline cluster train`")
    with tf.io.gfile.GFile(path) as f:
        return from_dict(ClusterConfig, json.loads(f.read()), path)


class Trainer:
    """Holds model, optimizer, sampler and anchor memory; runs the custom loop."""

    def __init__(self, cfg: ClusterConfig, manifest: dict, train: SplitData, val: SplitData,
                 strategy=None, log=print):
        import tensorflow as tf

        from kt_pipeline import anchors, encoders, optim, sampler

        self.cfg, self.train_data, self.val_data, self.log = cfg, train, val, log
        self.pad_id = int(manifest["tokenizer"]["special_tokens"]["pad"])
        self.strategy = strategy or tf.distribute.get_strategy()
        self.sampler = sampler.BookSpeakerSampler(
            train.groups, train.labels, train.narrative, speakers_per_batch=cfg.speakers_per_batch,
            quotes_per_speaker=cfg.quotes_per_speaker, narrative_per_batch=cfg.narrative_per_batch,
            seed=cfg.seed, speaker_power=cfg.speaker_power)
        self.weights = (sampler.inverse_frequency_weights(train.groups, train.labels, train.narrative)
                        if cfg.balance == "inverse" else np.ones(len(train.labels)))
        self.memory = anchors.AnchorMemory(cfg.memory_steps, cfg.anchor_every,
                                           cfg.anchors_per_speaker, cfg.anchor_threshold, seed=cfg.seed)
        with self.strategy.scope():
            backbone = encoders.load_backbone(cfg.preset)
            self.model = build_model(backbone, cfg)
            warmup = optim.resolve_warmup(cfg.steps, 0, cfg.warmup_fraction)
            self.optimizer = optim.build_optimizer(cfg.learning_rate, warmup, cfg.steps,
                                                   weight_decay=cfg.weight_decay, clipnorm=cfg.clipnorm)
            # Built now, not inside the first traced step (which tf.function would then
            # trace twice); see training.compile_classifier.
            self.optimizer.build(self.model.trainable_variables)
        self._step_fn = tf.function(self._replica_step, reduce_retracing=True)

    def _replica_step(self, tok, mask, labels, groups, narrative, weights, a, al, ag):
        import tensorflow as tf

        from kt_pipeline import losses

        cfg = self.cfg

        def fn():
            with tf.GradientTape() as tape:
                out = self.model({"token_ids": tok, "padding_mask": mask}, training=True)
                kw = {} if cfg.loss == "supcon" else dict(
                    anchors=a, anchor_labels=al, anchor_groups=ag, margin=cfg.margin,
                    sigma=cfg.sigma, mu_p=cfg.mu_p, mu_n=cfg.mu_n,
                    softness=cfg.softness, positives=cfg.positives)
                parts = losses.total_loss(out["embedding"], out["narrative_logit"], labels, groups,
                                          narrative, kind=cfg.loss, lam=cfg.lam, weights=weights,
                                          temperature=cfg.temperature, **kw)
                scaled = parts["loss"] / self.strategy.num_replicas_in_sync
            variables = self.model.trainable_variables
            grads = tape.gradient(scaled, variables)
            self.optimizer.apply(grads, variables)
            return parts, out["embedding"]

        # Every replica gets the whole (small) batch; gradients are all-reduced.
        return self.strategy.run(fn)

    def step(self, idx) -> dict:
        """One optimisation step on example indices ``idx``; updates the anchor memory."""
        import tensorflow as tf

        d = self.train_data
        tok, mask = pad_batch(d.ids, idx, self.pad_id)
        a, al, ag = self.memory.anchors(groups=np.unique(d.groups[idx]))
        if not len(al):
            a = np.zeros((0, self.cfg.embedding_dim), np.float32)
        parts, z = self._step_fn(
            tf.constant(tok), tf.constant(mask), tf.constant(d.labels[idx]),
            tf.constant(d.groups[idx]), tf.constant(d.narrative[idx].astype(np.float32)),
            tf.constant(self.weights[idx].astype(np.float32)), tf.constant(a, tf.float32),
            tf.constant(al, tf.int64), tf.constant(ag, tf.int64))
        local = self.strategy.experimental_local_results
        z = local(z)[0].numpy()
        self.memory.add(z, d.labels[idx], d.groups[idx], d.narrative[idx])
        return {k: float(local(v)[0].numpy()) for k, v in parts.items()}

    def validate(self) -> dict:
        """Validation clustering scores (``eval_method``) and narrative accuracy."""
        cfg, d = self.cfg, self.val_data
        idx = _subsample_quotes(d, cfg.max_eval_quotes, cfg.seed)
        z, _ = embed(self.model, d, idx, self.pad_id)
        res = clustering.evaluate_books(z, d.labels[idx], d.groups[idx], (cfg.eval_method,),
                                        _k(cfg), group_names=d.group_names, seed=cfg.seed)
        return res["macro"][cfg.eval_method]


def split_names(train: SplitData, val: SplitData, test: Optional[SplitData] = None) -> dict:
    out = {"train": train.group_names, "validation": val.group_names}
    if test is not None:
        out["test"] = test.group_names
    return out


def check_scorable(data: SplitData, where: str) -> list:
    """The split's books with one speaker (not scored); DataError when no book has two."""
    q = data.quotes()
    keep, skipped = clustering.scored_books(data.labels[q], data.groups[q])
    if not keep:
        raise DataError(f"{where}: no book with two or more speakers to cluster (books: "
                        f"{', '.join(data.group_names)}); use more books or other ratios")
    return [data.group_names[g] for g in skipped]


def _load_splits(cfg: ClusterConfig, manifest: dict, need_test: bool = False):
    cache_dir = manifest["cache_dir"]
    train = load_split(cache_dir, "train", cfg.max_seq_length)
    val = load_split(cache_dir, "validation", cfg.max_seq_length)
    if not len(val.quotes()):
        raise DataError(f"cache {cache_dir}: the validation split has no quotes; use more books "
                        f"or change ratios={cfg.ratios!r} so a whole book goes to validation")
    check_scorable(val, f"cache {cache_dir}: the validation split")
    test = load_split(cache_dir, "test", cfg.max_seq_length) if need_test else None
    return train, val, test


def train(cfg: ClusterConfig, log=print, plots: bool = True) -> dict:
    """Train, keeping the weights with the best validation ``monitor``; return a summary."""
    import tensorflow as tf

    from kt_pipeline import speaker_plots, strategy as strat

    validate(cfg)
    import keras

    keras.utils.set_random_seed(cfg.seed)
    tf.io.gfile.makedirs(cfg.model_dir)
    # An earlier run's weights and scores belong to its config, not this one: a run that
    # stops before its first checkpoint must not leave them to `evaluate` under this config.
    stale = [posixpath.join(cfg.model_dir, n) for n in (WEIGHTS_FILE, HISTORY_FILE,
                                                        "train_summary.json")]
    stale += tf.io.gfile.glob(posixpath.join(cfg.model_dir, f"{RESULTS_FILE[:-5]}_*.json"))
    for path in stale:
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    _write_json(posixpath.join(cfg.model_dir, CONFIG_FILE), cfg.to_dict())
    manifest = prepare_cache(cfg)
    train_data, val_data, _ = _load_splits(cfg, manifest)
    log(f"books: train {', '.join(train_data.group_names)}; validation {', '.join(val_data.group_names)}")
    chosen = strat.make_strategy(cfg.strategy, verbose=False)
    trainer = Trainer(cfg, manifest, train_data, val_data, chosen.strategy, log)
    writer = tf.summary.create_file_writer(posixpath.join(cfg.model_dir, "tb"))
    history, best, best_step = [], None, None
    weights_path = posixpath.join(cfg.model_dir, WEIGHTS_FILE)
    start = time.time()
    for step in range(1, cfg.steps + 1):
        parts = trainer.step(trainer.sampler.sample())
        if not np.isfinite(parts["loss"]):
            raise KtError(f"loss became {parts['loss']} at step {step}; lower learning_rate")
        trainer.memory.maybe_update(step)
        row = {"step": step, **{k: parts[k] for k in ("loss", "bce", "contrastive", "in_batch",
                                                      "anchor", "pos_dist", "neg_dist")}}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            scores = trainer.validate()
            row.update({f"val_{k}": v for k, v in scores.items()})
            if best is None or scores[cfg.monitor] > best[cfg.monitor]:
                best, best_step = scores, step
                trainer.model.save_weights(weights_path)
            log(f"step {step}/{cfg.steps} loss {parts['loss']:.4f} pos {parts['pos_dist']:.3f} "
                f"neg {parts['neg_dist']:.3f} | val ari {scores['ari']:.4f} v {scores['v_measure']:.4f}"
                f" ({time.time() - start:.0f}s)")
        elif step % cfg.log_every == 0:
            log(f"step {step}/{cfg.steps} loss {parts['loss']:.4f} pos {parts['pos_dist']:.3f} "
                f"neg {parts['neg_dist']:.3f} ({time.time() - start:.0f}s)")
        history.append(row)
        with writer.as_default(step=step):
            for k, v in row.items():
                if k != "step":
                    tf.summary.scalar(k, v)
    writer.flush()
    _write_json(posixpath.join(cfg.model_dir, HISTORY_FILE), history)
    summary = {"best": best, "best_step": best_step, "monitor": cfg.monitor,
               "books": split_names(train_data, val_data), "seconds": time.time() - start,
               "cache_dir": manifest["cache_dir"]}
    _write_json(posixpath.join(cfg.model_dir, "train_summary.json"), summary)
    if plots:
        speaker_plots.distance_curve(history, posixpath.join(cfg.model_dir, "distances.png"), writer)
    return summary


# ----------------------------------------------------------------------- evaluation


def evaluate(model_dir: str, split: str = "test", methods_override: Optional[str] = None,
             log=print, plots: bool = True) -> dict:
    """Score the best checkpoint, the untrained encoder and one-cluster-per-book on ``split``."""
    import tensorflow as tf

    from kt_pipeline import encoders, speaker_plots

    cfg = load_config(model_dir)
    if methods_override:
        cfg = dataclasses.replace(cfg, methods=methods_override)
    validate(cfg)
    manifest = prepare_cache(cfg)
    data = load_split(manifest["cache_dir"], split, cfg.max_seq_length)
    if not len(data.quotes()):
        raise DataError(f"split {split!r} of {manifest['cache_dir']} has no quotes")
    single = check_scorable(data, f"split {split!r} of {manifest['cache_dir']}")
    pad_id = int(manifest["tokenizer"]["special_tokens"]["pad"])
    weights = posixpath.join(model_dir, WEIGHTS_FILE)
    if not tf.io.gfile.exists(weights):
        raise KtError(f"{model_dir}: no {WEIGHTS_FILE}; train first")
    model = build_model(encoders.load_backbone(cfg.preset, load_weights=False), cfg)
    model.load_weights(weights)
    q = data.quotes()
    kw = dict(methods=methods(cfg), k=_k(cfg), group_names=data.group_names, seed=cfg.seed)
    z_all, prob = embed(model, data, np.arange(len(data.ids)), pad_id)
    z = z_all[q]
    trained = clustering.evaluate_books(z, data.labels[q], data.groups[q], **kw)
    base = untrained_encoder(encoders.load_backbone(cfg.preset))
    zb, _ = embed(base, data, q, pad_id)
    untrained = clustering.evaluate_books(zb, data.labels[q], data.groups[q], **kw)
    one = clustering.one_cluster_baseline(data.labels[q], data.groups[q], data.group_names)
    results = {"split": split, "books": data.group_names, "loss": cfg.loss,
               "systems": {cfg.loss: trained, "untrained": untrained, "one_cluster": one},
               "narrative_head": narrative_metrics(prob, data.narrative)}
    _write_json(posixpath.join(model_dir, f"{RESULTS_FILE[:-5]}_{split}.json"), results)
    log(clustering.format_table(results["systems"], f"{split} books: {', '.join(data.group_names)}"))
    nh = results["narrative_head"]
    log(f"narrative head: accuracy {nh['accuracy']:.4f} f1 {nh['f1']:.4f} (n={nh['n']})")
    if single:
        log(f"not scored (one speaker, nothing to cluster): {', '.join(single)}")
    if plots:
        writer = tf.summary.create_file_writer(posixpath.join(model_dir, "tb"))
        examples = read_examples(cfg)
        speaker_plots.speaker_shares(pdnc.speaker_shares(examples),
                                     posixpath.join(model_dir, "speaker_shares.png"), writer)
        g = int(np.bincount(data.groups[q]).argmax())
        rows = data.groups[q] == g
        speaker_plots.pca_scatter(z[rows], data.labels[q][rows],
                                  posixpath.join(model_dir, f"pca_{split}.png"),
                                  f"{data.group_names[g]} ({split}), {cfg.loss}", writer)
    return results


# --------------------------------------------------------------------------- tuning


def build_and_fit(hp_values: dict, base: Optional[ClusterConfig] = None, model_dir: Optional[str] = None,
                  log=print) -> dict:
    """Train one configuration for ``kt-pipeline tune``; return validation scores.

    ``hp_values`` maps :class:`ClusterConfig` fields to values (e.g. ``lam``, ``sigma``,
    ``mu_p``, ``mu_n``, ``margin``, ``window``, ``projection_hidden``, ``embedding_dim``,
    ``learning_rate``); the monitor is validation ARI. Returns ``{"val_ari",
    "val_v_measure", "best_step", "model_dir"}``.
    """
    cfg = dataclasses.replace(base or ClusterConfig(), monitor="ari")
    cfg = apply_overrides(cfg, [f"{k}={v}" for k, v in hp_values.items()])
    if model_dir:
        cfg = dataclasses.replace(cfg, model_dir=model_dir)
    summary = train(cfg, log=log, plots=False)
    best = summary["best"] or {}
    return {"val_ari": float(best.get("ari", 0.0)), "val_v_measure": float(best.get("v_measure", 0.0)),
            "best_step": summary["best_step"], "model_dir": cfg.model_dir}


def config_from_args(config_path: Optional[str], overrides: list) -> ClusterConfig:
    """ClusterConfig from an optional YAML file plus ``key=value`` overrides."""
    from kt_pipeline.config import load_yaml

    cfg = from_dict(ClusterConfig, load_yaml(config_path), config_path) if config_path else ClusterConfig()
    return apply_overrides(cfg, overrides)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `kt-pipeline cluster`")
