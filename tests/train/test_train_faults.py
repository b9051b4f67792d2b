"""File-system faults during `bloomchat train` (issue #21): a full disk while saving, a read-only
output folder, a corrupt parquet shard. Each is one line naming the path and the cause (exit 2,
no traceback), and the last complete checkpoint stays as it was."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest
import torch
from train_helpers import write_recipe, write_shards

from bloomchat.train.cli import main


def _recipe(model, shards, out) -> dict:
    # 12 rows, 4 a step: 3 steps an epoch, 6 in all; checkpoints at steps 2, 4 and 6
    return {"name": "f", "base_model": str(model), "output_dir": str(out), "seed": 3,
            "defaults": {"global_batch_size": 4, "micro_batch_size": 2, "lr": 1e-3, "save_every_steps": 2},
            "stages": [{"name": "s", "epochs": 2, "data": {"shards": str(shards)}}]}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _train(capsys, *args) -> tuple[int, str]:
    rc = main([*map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "bloomchat train: error:" in ln]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


@pytest.fixture
def setup(tmp_path, micro_model_dir, tiny_tokenizer):
    shards = write_shards(tmp_path / "shards", tiny_tokenizer, n_rows=12, seed=2)
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(micro_model_dir, shards, tmp_path / "out"))
    return recipe, shards, tmp_path / "out" / "s"


# The first message is what the issue reports; the second is what torch 2.13 really raises on a
# full tmpfs (no errno, no "space"), recognised by the free space left in the folder.
@pytest.mark.parametrize("message,free", [
    ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: "
     "No space left on device", None),
    ("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534", 4096),
])
def test_full_disk_while_saving_keeps_the_last_checkpoint(setup, capsys, monkeypatch, message, free):
    import shutil as _shutil

    from bloomchat.train import faults

    recipe, _, sd = setup
    ck = sd / "checkpoints"
    before = {}
    real_save = torch.save

    def save(obj, f, *a, **k):
        if ".tmp-step-00000004" in str(f):  # the second checkpoint: the disk is full now
            before.update(_hashes(ck / "step-00000002"))
            raise RuntimeError(message)
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    if free is not None:
        usage = _shutil.disk_usage(sd.parent.parent)
        monkeypatch.setattr(faults.shutil, "disk_usage", lambda p: usage._replace(free=free))
    rc, err = _train(capsys, recipe)
    assert rc == 2
    line = _error_line(err)
    assert str(ck) in line and "step-00000004" in line and "no space left on device" in line, line
    assert "latest complete checkpoint is still step-00000002" in line
    assert before and _hashes(ck / "step-00000002") == before  # byte for byte what it was
    assert (ck / "latest").read_text().strip() == "step-00000002"
    assert not list(ck.glob(".tmp-*")) and not (sd / "model").exists()
    monkeypatch.undo()  # space freed: --resume continues from step 2 and finishes
    rc, err = _train(capsys, recipe, "--resume")
    assert rc == 0, err[-2000:]
    assert (sd / "model" / "model.safetensors").exists()


def _read_only(monkeypatch, folder: Path) -> None:
    """Make `folder` read-only. chmod does that for a normal user; the tests usually run as root,
    whom mode bits do not stop, so there the kernel's answer for a read-only mount is simulated:
    EROFS from every mkdir and every write-open under the folder."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    import builtins

    from bloomchat.train import report

    inside = lambda p: Path(os.fspath(p)).resolve().is_relative_to(folder.resolve())  # noqa: E731
    real_mkdir, real_open = os.mkdir, builtins.open

    def mkdir(p, *a, **k):
        if inside(p):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(p))
        return real_mkdir(p, *a, **k)

    def open_(p, mode="r", *a, **k):
        if isinstance(p, (str, os.PathLike)) and inside(p) and set(mode) & set("wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(p))
        return real_open(p, mode, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(report, "open", open_, raising=False)  # the metrics log's appends


def test_read_only_output_folder(setup, capsys, monkeypatch):
    recipe, _, sd = setup
    sd.parent.mkdir()
    _read_only(monkeypatch, sd.parent)
    rc, err = _train(capsys, recipe)
    assert rc == 2
    line = _error_line(err)
    assert str(sd) in line and ("read-only file system" in line or "permission denied" in line), line


def test_output_folder_below_a_file(tmp_path, micro_model_dir, tiny_tokenizer, capsys):
    """A real OS error in every environment (root included): a part of the output path is a file."""
    shards = write_shards(tmp_path / "shards", tiny_tokenizer, n_rows=12, seed=2)
    (tmp_path / "afile").write_text("not a folder")
    recipe = write_recipe(tmp_path / "r.yaml", _recipe(micro_model_dir, shards, tmp_path / "afile" / "out"))
    rc, err = _train(capsys, recipe)
    assert rc == 2
    line = _error_line(err)
    assert str(tmp_path / "afile" / "out") in line and "a part of the path is a file" in line, line


def test_folder_turns_read_only_mid_run_keeps_the_checkpoint(setup, capsys, monkeypatch):
    """The metrics log cannot be appended at step 3 (after the checkpoint of step 2)."""
    from bloomchat.train import report

    recipe, _, sd = setup
    ck = sd / "checkpoints"
    real_write = report.MetricsLog.write
    before = {}

    def write(self, rec):
        if rec.get("step") == 3:
            before.update(_hashes(ck / "step-00000002"))
            _read_only(monkeypatch, sd)
        return real_write(self, rec)

    monkeypatch.setattr(report.MetricsLog, "write", write)
    rc, err = _train(capsys, recipe)
    assert rc == 2
    line = _error_line(err)
    assert str(sd / "metrics.jsonl") in line and "metrics log" in line, line
    assert ("read-only file system" in line or "permission denied" in line), line
    if os.geteuid() != 0:
        sd.chmod(0o755)
    assert before and _hashes(ck / "step-00000002") == before
    assert (ck / "latest").read_text().strip() == "step-00000002"


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_parquet_shard_is_named(setup, capsys, damage):
    """Truncated: no parquet footer. Garbled pages: `datasets` says only "An error occurred while
    generating the dataset"; either way the line names the shard and pyarrow's reason."""
    recipe, shards, sd = setup
    f = shards / "train" / "train-00000.parquet"
    if damage == "truncate":
        os.truncate(f, f.stat().st_size // 2)
    else:
        data = bytearray(f.read_bytes())  # every page between the magic and the footer: 0xff
        footer = int.from_bytes(data[-8:-4], "little") + 8
        data[4:-footer] = b"\xff" * (len(data) - 4 - footer)
        f.write_bytes(bytes(data))
    rc, err = _train(capsys, recipe)
    assert rc == 2
    line = _error_line(err)
    assert str(f) in line and "corrupt or unreadable parquet shard" in line, line
    assert "An error occurred while generating the dataset" not in line
    assert not (sd / "checkpoints").exists()


def test_cause_of_a_write_fault(tmp_path):
    from bloomchat.train.faults import cause, is_write_fault

    assert cause(OSError(errno.ENOSPC, "No space left on device"), tmp_path) == "no space left on device"
    assert cause(OSError(errno.EROFS, "Read-only file system"), tmp_path) == "read-only file system"
    # torch's own text, with plenty of room left: the text itself, first line only
    e = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534\nmore")
    assert is_write_fault(e) and cause(e, tmp_path) == "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
    assert not is_write_fault(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))  # a bug stays a bug
