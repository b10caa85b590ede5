import numpy as np
import tensorflow as tf

from kt_pipeline import encoders


def test_encode_adds_specials_and_truncation_keeps_end(tiny_preset):
    enc = encoders.TextEncoding(encoders.load_tokenizer(tiny_preset))
    longs = enc.encode(["the film was great and the acting was good"], 512)
    long, short = longs[0], enc.encode(["the film was great and the acting was good"], 6)[0]
    assert int(long[0]) == enc.start_id and int(long[-1]) == enc.end_id
    assert short.shape[0] == 6 and int(short[-1]) == enc.end_id
    # Truncating the stored long form equals tokenizing at the short length.
    assert encoders.truncate_rows(longs, 6)[0].numpy().tolist() == short.numpy().tolist()
    # Short examples are untouched.
    assert encoders.truncate_rows(longs, 512)[0].shape[0] == long.shape[0]


def test_fingerprint_changes_with_vocabulary(tiny_preset, tmp_path):
    from kt_pipeline.testing import make_tiny_bert_preset

    a = encoders.tokenizer_fingerprint(encoders.load_tokenizer(tiny_preset))
    tok = encoders.load_tokenizer(tiny_preset)
    b = encoders.tokenizer_fingerprint(tok)
    assert a == b
    import keras_hub

    other = keras_hub.models.BertTokenizer(vocabulary=tok.get_vocabulary() + ["extra"])
    assert encoders.tokenizer_fingerprint(other) != a
    assert isinstance(tf.constant(0), tf.Tensor)


def test_batched_truncation_is_the_one_row_rule():
    """`truncate_rows` (all rows of a parsed batch at once, as the reader does) cuts each
    row by the rule: a row longer than max_length keeps its first max_length - 1 ids and
    its last."""
    rng = np.random.default_rng(1)
    rows = [rng.integers(5, 1000, size=n).tolist() for n in [0, 1, 2, 7, 8, 9, 30, 8, 3]]
    ids = encoders.truncate_rows(tf.ragged.constant(rows, dtype=tf.int64), 8)
    assert ids.dtype == tf.int64
    for row, got in zip(rows, ids.to_list()):
        want = row if len(row) <= 8 else row[:7] + row[-1:]
        assert got == want
