"""`bloomchat base import` refuses what it cannot import with one line each (no model needed)."""

from __future__ import annotations

import pytest

from bloomchat.cli import main


def _write_gguf(path, arch: str) -> None:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("case, expect", [
    ("missing", "file or directory not found"),
    ("text", "not a GGUF file"),
    ("folder", "no config.json"),
    ("arch", "architecture 'rwkv6' is not supported"),
])
def test_base_import_one_line_errors(tmp_path, capsys, case, expect):
    src = tmp_path / "in.gguf"
    if case == "text":
        src.write_text("hello")
    elif case == "folder":
        src = tmp_path / "folder"
        src.mkdir()
    elif case == "arch":
        _write_gguf(src, "rwkv6")
    rc = main(["base", "import", str(src), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and expect in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_base_import_refuses_a_non_empty_output(tmp_path, capsys):
    src = tmp_path / "m.gguf"
    _write_gguf(src, "llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["base", "import", str(src), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "not empty (add --force" in err
    assert (out / "keep.txt").read_text() == "mine"
