"""Shared fixtures: real data under ../shared/data (skip rule), tiny tokenizer and model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BLOOMCHAT_SHARED_DATA", REPO.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def shared_path(*parts: str) -> Path:
    """Path of real data under ../shared/data; skips the test when absent, fails under CI=true."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        msg = f"real data not found: {p}"
        if IN_CI:
            pytest.fail(msg + " (CI=true requires ../shared/data beside the repo)")
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def shared_data():
    """Callable fixture: shared_data('dolly15k', 'file.jsonl') -> Path (skip/fail rule above)."""
    return shared_path


from tokenizer_zoo import TOKENIZER_TEXTS as _TOKENIZER_TEXTS  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer (vocab ~600) with the BLOOMChat chat template, saved in HF layout."""
    from bloomchat.models.tokenizer import save_tokenizer, train_bpe_tokenizer

    out = tmp_path_factory.mktemp("tok")
    tok = train_bpe_tokenizer(_TOKENIZER_TEXTS, vocab_size=600, min_frequency=1)
    save_tokenizer(tok, out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from bloomchat.models import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory, tiny_tokenizer):
    """A randomly initialised 2-layer BLOOM (hidden 64) with the tiny tokenizer, in HF layout."""
    from bloomchat.models import build_bloom, save_pretrained

    out = tmp_path_factory.mktemp("micro_model")
    model = build_bloom("micro", vocab_size=len(tiny_tokenizer), seed=0)
    save_pretrained(model, tiny_tokenizer, out)
    return out


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's chromium for Playwright browser tests: skipped when absent, a failure under CI=true
    (.ci/run installs it, so a missing browser there is a broken set-up, not a reason to skip)."""
    import shutil

    path = os.environ.get("BLOOMCHAT_CHROMIUM", "/usr/bin/chromium")
    if not (shutil.which(path) or os.path.exists(path)):
        msg = f"chromium not installed at {path} (apt-get install chromium)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path
