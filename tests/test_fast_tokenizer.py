"""fast_wordpiece.py: the fast path gives exactly KerasHub's ids, or is not used."""

import numpy as np
import pytest
import tensorflow as tf

from kt_pipeline import encoders, fast_wordpiece

TRICKY = [
    "", "   ", "Hello, World!", "DON'T Stop", "naïve Café ÉCOLE straße ǅ ﬁne", "e\u0301 combining",
    "tab\tnew\nline\rcr", "ctrl\x01\x7fchars\x0b\x0c here", "zero\u200bwidth soft\u00adhyphen",
    "no\u00a0break\u3000ideographic\u2009thin", "emoji 😀👍🏽 ok", "中文字符，测试。日本語のテキスト",
    "영화 정말 재밌다ㅋㅋㅋ ㅠㅠ 최고!! ㄱㅏ", "full-width ＡＢＣ！１２３", "ellipsis… dots‥ ⑴ ¼ ´",
    "“curly” ‘quotes’ — dash – «angle»", "[CLS] [SEP] [UNK] [PAD] [MASK]", "x" * 150,
    "Ab" * 70 + " tail", "$5.00 & 100% <br /> e-mail U.S.A. C++ ~`^|\\{}", "##hash ## #",
    "İstanbul ΣΊΣΥΦΟΣ ǈ Ǳ", "a\ufeffb bom", "\ud7a3\uac00 \u3131\u314f", "مرحبا بالعالم", "Привет, МИР",
]


def ids(x):
    return [list(map(int, r)) for r in x.to_list()]


@pytest.fixture(scope="module")
def tiny_tok(tiny_preset):
    return encoders.load_tokenizer(tiny_preset)


@pytest.fixture(scope="module")
def minilm_tok():
    return encoders.load_tokenizer(None)


def reference(tok, texts):
    """KerasHub's graph-mode ids (what the cache used before the fast path)."""
    return ids(tf.function(lambda x: tf.cast(tok(x), tf.int32))(tf.constant(texts)))


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_identical_ids_on_tricky_strings(which, request):
    tok = request.getfixturevalue(f"{which}_tok")
    fast = fast_wordpiece.fast_tokenizer(tok)
    assert fast is not None
    texts = TRICKY + [a + " " + b for a, b in zip(TRICKY, TRICKY[1:])]
    want = reference(tok, texts)
    assert ids(fast(tf.constant(texts))) == want  # eager
    assert ids(tf.function(fast.__call__)(tf.constant(texts))) == want  # graph
    # Whole encodings (specials + truncation) too.
    enc, ref = fast_wordpiece.text_encoding(tok), encoders.TextEncoding(tok)
    for n in (2, 5, 512):
        assert ids(enc.encode(texts, n)) == ids(ref.encode(texts, n))


def test_unsafe_strings_take_the_keras_hub_path(minilm_tok):
    fast = fast_wordpiece.fast_tokenizer(minilm_tok)
    safe = fast.is_safe(tf.constant(TRICKY)).numpy().tolist()
    assert safe == [fast.is_safe_text(t) for t in TRICKY]  # Python twin agrees
    assert not fast.is_safe_text("ctrl\x01") and not fast.is_safe_text("a\u00a0b")
    assert not fast.is_safe_text("dots…") and fast.is_safe_text("영화 최고!")
    # The self-check pruned characters whose folding changes word splits.
    assert ord("…") not in fast.safe_codepoints and ord("가") in fast.safe_codepoints


def test_identical_ids_on_sst2_and_nsmc(shared_data, minilm_tok):
    rng = np.random.default_rng(0)
    sst = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    nsmc = (shared_data / "nsmc" / "ratings_train.txt").read_text(encoding="utf-8").splitlines()[1:]
    texts = [sst[i].split("\t")[0] for i in rng.choice(len(sst), 3000, replace=False)]
    texts += [nsmc[i].split("\t")[1] for i in rng.choice(len(nsmc), 3000, replace=False)]
    fast = fast_wordpiece.fast_tokenizer(minilm_tok)
    assert ids(tf.function(fast.__call__)(tf.constant(texts))) == reference(minilm_tok, texts)
    share = np.mean([fast.is_safe_text(t) for t in texts])
    assert share > 0.95  # the fast path really is taken


def test_self_check_prunes_mismatching_characters(tiny_tok):
    fast = fast_wordpiece.FastWordPiece(tiny_tok)
    cands = [ord(c) for c in "aé…ＡＢ가"]
    ok = fast_wordpiece.self_check(fast, cands)
    assert ord("…") not in ok and ord("가") in ok and ord("é") in ok


def test_not_used_for_other_tokenizers(tiny_tok):
    class NotWordPiece:
        pass

    assert fast_wordpiece.fast_tokenizer(NotWordPiece()) is None
    assert fast_wordpiece.supports(tiny_tok)


def test_check_result_is_stored_and_reused(tiny_tok, tmp_path, monkeypatch):
    monkeypatch.setattr(fast_wordpiece, "CHECK_DIR", str(tmp_path))
    monkeypatch.setattr(fast_wordpiece, "_cache", {})
    first = fast_wordpiece.fast_tokenizer(tiny_tok)
    assert len(list(tmp_path.glob("*.json"))) == 1
    monkeypatch.setattr(fast_wordpiece, "_cache", {})
    monkeypatch.setattr(fast_wordpiece, "_run_self_check", None)  # must not run again
    again = fast_wordpiece.fast_tokenizer(tiny_tok)
    assert again.safe_codepoints == first.safe_codepoints
