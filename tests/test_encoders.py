"""Presets: tiny random Hugging Face checkpoints of each supported family, and the
directories KerasHub cannot read as they are (clear errors or corrected copies)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file

from kt_pipeline import encoders, hf_fixtures
from kt_pipeline.errors import KtError
from kt_pipeline.models import backbone_input_names

TEXTS = ["The movie was really good .", "i hated the ending"]
# Where each family's token embedding lives, in the HF file and in the KerasHub backbone.
EMBEDDING_KEYS = {
    "bert": "bert.embeddings.word_embeddings.weight",
    "roberta": "roberta.embeddings.word_embeddings.weight",
    "xlm-roberta": "roberta.embeddings.word_embeddings.weight",
    "distilbert": "distilbert.embeddings.word_embeddings.weight",
    "albert": "albert.embeddings.word_embeddings.weight",
}
SPECIALS = {  # (start, end) tokens each family's tokenizer must add
    "bert": ("[CLS]", "[SEP]"),
    "distilbert": ("[CLS]", "[SEP]"),
    "albert": ("[CLS]", "[SEP]"),
    "roberta": ("<s>", "</s>"),
    "xlm-roberta": ("<s>", "</s>"),
}


def token_embedding(backbone):
    return backbone.token_embedding.embeddings.numpy()


@pytest.mark.parametrize("model_type", hf_fixtures.MODEL_TYPES)
def test_hf_checkpoint_loads_with_weights_and_specials(model_type, tmp_path):
    path = hf_fixtures.write_hf_checkpoint(str(tmp_path / model_type), model_type)
    tok = encoders.load_tokenizer(path)
    backbone = encoders.load_backbone(path)

    # The weights are the file's, not a fresh random initialisation.
    hf = load_file(str(tmp_path / model_type / "model.safetensors"))[EMBEDDING_KEYS[model_type]]
    np.testing.assert_allclose(token_embedding(backbone)[: hf.shape[0]], hf, atol=1e-7)

    enc = encoders.TextEncoding(tok)
    start, end = SPECIALS[model_type]
    assert tok.id_to_token(enc.start_id) == start and tok.id_to_token(enc.end_id) == end
    ids = enc.encode(TEXTS, max_length=8)
    for row in ids.numpy():
        assert row[0] == enc.start_id and row[-1] == enc.end_id and len(row) <= 8
    # Real tokens, not unknowns: every word of the fixture vocabulary is known.
    inner = enc.encode(["the movie was good"], 64)[0].numpy()[1:-1]
    assert len(inner) > 0 and max(inner) < backbone.vocabulary_size

    # The backbone runs on the encoded ids.
    dense = ids.to_tensor(enc.pad_id)
    inputs = {"token_ids": dense, "padding_mask": dense != enc.pad_id}
    if "segment_ids" in backbone_input_names(backbone):
        inputs["segment_ids"] = tf.zeros_like(dense)
    out = backbone(inputs)
    seq = out["sequence_output"] if isinstance(out, dict) else out
    assert seq.shape[:2] == dense.shape


def test_missing_safetensors_is_a_clear_error(tmp_path):
    path = hf_fixtures.write_hf_checkpoint(str(tmp_path / "bert"), "bert", weights=False)
    (tmp_path / "bert" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(KtError, match=r"no model\.safetensors.*pytorch_model\.bin.*safe_serialization"):
        encoders.load_backbone(path)
    with pytest.raises(encoders.EncoderError):
        encoders.load_tokenizer(path)


def test_unsupported_model_type_lists_supported(tmp_path):
    path = hf_fixtures.write_hf_checkpoint(str(tmp_path / "bert"), "bert")
    cfg = json.loads((tmp_path / "bert" / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "bert" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(encoders.EncoderError) as e:
        encoders.load_backbone(path)
    msg = str(e.value)
    assert "'gpt2'" in msg and all(t in msg for t in encoders.SUPPORTED_MODEL_TYPES)


def test_directory_without_config_and_missing_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(encoders.EncoderError, match="no config.json"):
        encoders.load_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(encoders.EncoderError, match="not found"):
        encoders.load_tokenizer(str(tmp_path / "absent"))


@pytest.mark.parametrize("lower", [True, False])
def test_single_quoted_tokenizer_config_is_accepted(tmp_path, lower):
    # KR-BERT ships a Python-dict-like tokenizer_config.json.
    text = "{'do_lower_case': %s, 'max_len': 512}" % lower
    path = hf_fixtures.write_hf_checkpoint(str(tmp_path / "bert"), "bert", tokenizer_config=text)
    tok = encoders.load_tokenizer(path)
    assert tok.lowercase is lower
    upper = encoders.TextEncoding(tok).encode(["THE"], 8)[0].numpy().tolist()
    lower_ids = encoders.TextEncoding(tok).encode(["the"], 8)[0].numpy().tolist()
    assert (upper == lower_ids) is lower
    # The user's directory is left untouched.
    assert (tmp_path / "bert" / "tokenizer_config.json").read_text() == text
    encoders.load_backbone(path)


def test_unparseable_tokenizer_config_names_the_file(tmp_path):
    path = hf_fixtures.write_hf_checkpoint(str(tmp_path / "bert"), "bert",
                                           tokenizer_config="{do_lower_case: yes")
    with pytest.raises(encoders.EncoderError, match=r"tokenizer_config\.json is not valid JSON"):
        encoders.load_tokenizer(path)


def test_vocab_txt_only_no_tokenizer_config(tmp_path):
    path = hf_fixtures.write_hf_checkpoint(str(tmp_path / "bert"), "bert", tokenizer_config=None)
    tok = encoders.load_tokenizer(path)
    assert tok.lowercase is True  # the fixture vocabulary has no upper case
    assert encoders.load_backbone(path).num_layers == 2


def test_vocabulary_only_in_tokenizer_json(tmp_path):
    for model_type in ("bert", "roberta"):
        ref = encoders.load_tokenizer(
            hf_fixtures.write_hf_checkpoint(str(tmp_path / f"{model_type}_ref"), model_type))
        path = hf_fixtures.write_hf_checkpoint(
            str(tmp_path / model_type), model_type, vocab_txt=False, tokenizer_json=True)
        tok = encoders.load_tokenizer(path)
        assert tok.get_vocabulary() == ref.get_vocabulary()
        got = encoders.TextEncoding(tok).encode(TEXTS, 32).to_list()
        assert got == encoders.TextEncoding(ref).encode(TEXTS, 32).to_list()


def test_missing_vocabulary_is_a_clear_error(tmp_path):
    path = hf_fixtures.write_hf_checkpoint(str(tmp_path / "roberta"), "roberta", vocab_txt=False)
    with pytest.raises(encoders.EncoderError, match=r"vocab\.json and merges\.txt"):
        encoders.load_tokenizer(path)


def test_parse_lenient_json_and_infer_lowercase():
    assert encoders.parse_lenient_json('{"a": true}') == {"a": True}
    assert encoders.parse_lenient_json("{'a': True, 'b': None}") == {"a": True, "b": None}
    assert encoders.parse_lenient_json("{'a': true, 'b': null}") == {"a": True, "b": None}
    with pytest.raises(encoders.EncoderError):
        encoders.parse_lenient_json("[1, 2]")
    assert encoders.infer_lowercase(["[PAD]", "<s>", "hello", "##s"])
    assert not encoders.infer_lowercase(["[PAD]", "Hello"])


def test_default_preset_is_used_as_is():
    path = encoders.default_preset_dir()
    assert encoders.resolve_preset(None) == path
    config, fixes, _ = encoders.check_checkpoint_dir(path)
    assert config["model_type"] == "bert" and fixes == {}


def test_unknown_preset_name_is_a_clear_error():
    with pytest.raises(encoders.EncoderError, match="no_such_encoder_xyz.*neither a directory nor a KerasHub preset name"):
        encoders.load_tokenizer("no_such_encoder_xyz")


def test_remote_checkpoint_with_fixes(tmp_path):
    # ram:// stands in for gs://: the corrected copy is staged locally.
    local = hf_fixtures.write_hf_checkpoint(str(tmp_path / "bert"), "bert",
                                            tokenizer_config="{'do_lower_case': True}")
    remote = "ram://kt-test-encoders/bert"
    tf.io.gfile.makedirs(remote)
    for f in tf.io.gfile.listdir(local):
        tf.io.gfile.copy(f"{local}/{f}", f"{remote}/{f}", overwrite=True)
    tok = encoders.load_tokenizer(remote)
    assert tok.lowercase is True
    assert encoders.load_backbone(remote).num_layers == 2


def test_python_dict_config_json_is_accepted(tmp_path):
    path = hf_fixtures.write_hf_checkpoint(str(tmp_path / "distilbert"), "distilbert",
                                           tokenizer_config={"model_max_length": 512})
    config_file = tmp_path / "distilbert" / "config.json"
    config_file.write_text(repr(json.loads(config_file.read_text())))  # single quotes
    _, fixes, notes = encoders.check_checkpoint_dir(path)
    assert set(fixes) == {"config.json", "tokenizer_config.json"}  # + do_lower_case added
    assert json.loads(fixes["tokenizer_config.json"]) == {"model_max_length": 512,
                                                          "do_lower_case": True}
    assert encoders.load_backbone(path).num_layers == 2
    assert encoders.load_tokenizer(path).lowercase is True
