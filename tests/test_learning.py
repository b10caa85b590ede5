"""Real learning: MiniLM fine-tuned on 2,000 SST-2 rows for one epoch reaches >= 0.80."""

import random

import pytest


@pytest.mark.slow
def test_minilm_learns_sst2_in_one_epoch(shared_data, tmp_path):
    from kt_pipeline import cache, evaluate, training
    from kt_pipeline.config import TrainConfig

    lines = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:]
    random.Random(0).shuffle(rows)
    subset = tmp_path / "sst2_2500.tsv"
    subset.write_text("\n".join([header] + rows[:2500]) + "\n", encoding="utf-8")
    cache_dir = str(tmp_path / "cache")
    # 2,000 train / 500 validation rows; the default preset (all-MiniLM-L6-v2).
    manifest = cache.build_cache(str(subset), cache_dir, text_col="sentence", label_col="label",
                                 ratios=(0.8, 0.2, 0.0), max_length=64, progress=False)
    assert manifest["counts"]["written"]["train"] >= 1950  # a few duplicates may be dropped
    cfg = TrainConfig(cache_dir=cache_dir, model_dir=str(tmp_path / "run"), epochs=1,
                      batch_size=32, max_seq_length=64, padding="bucket", pooling="mean",
                      learning_rate=1e-4, warmup_fraction=0.1, strategy="cpu")
    training.train(cfg, verbose=2)
    res = evaluate.evaluate(cfg.model_dir, split="validation")
    print(evaluate.format_table(res))
    assert res["examples"] >= 480
    assert res["accuracy"] >= 0.80
