"""Shared fixtures: tiny random BERT preset, demo cache for it, shared data folder, quiet TF."""

import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    """Path of a tiny random BERT KerasHub preset (built once per test session)."""
    from kt_pipeline.testing import make_tiny_bert_preset

    return make_tiny_bert_preset(str(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="session")
def shared_data():
    """`../shared/data`; tests that take this fixture skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


@pytest.fixture(scope="session")
def sample_csv():
    """The bundled demo data."""
    return str(ROOT / "kt_pipeline" / "data" / "sample_reviews.csv")


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, tiny_preset, sample_csv):
    """The bundled 400-row demo data tokenized for the tiny BERT (320/40/40 split).

    Built once per session; treat it as read-only (training writes to its own model dir).
    """
    from kt_pipeline import cache

    path = str(tmp_path_factory.mktemp("demo_cache") / "demo")
    cache.build_cache(sample_csv, path, preset=tiny_preset, max_length=64, progress=False)
    return path
