"""Recipes: every shipped one loads and validates; bad ones fail naming the key and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from train_helpers import micro_recipe, write_recipe

from bloomchat.errors import BloomchatError
from bloomchat.train import load_recipe, run_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


@pytest.fixture
def fake_sources(tmp_path, micro_model_dir):
    """Files the shipped recipes name (content does not matter for validation)."""
    (tmp_path / "oig").mkdir()
    oig176 = yaml.safe_load((RECIPES / "bloomchat-176b.yaml").read_text())["stages"][0]["data"]["oig"]
    for f in [Path(x).name for x in oig176] + ["unified_rallio_safety_and_prosocial.jsonl"]:
        (tmp_path / "oig" / f).write_text("")
    (tmp_path / "dolly.jsonl").write_text("")
    (tmp_path / "oasst1.messages.jsonl").write_text("")
    (tmp_path / "oasst1-train-trees.txt").write_text("")
    wd = tmp_path / "demo"
    for sub in ("oig", "dolly", "oasst1"):
        (wd / "data" / sub).mkdir(parents=True)
    (wd / "data/oig/unified_chip2_demo.jsonl").write_text("")
    (wd / "data/dolly/dolly_demo.jsonl").write_text("")
    (wd / "data/oasst1/oasst1_demo.messages.jsonl").write_text("")
    (wd / "base").symlink_to(micro_model_dir)
    return {"oig": str(tmp_path / "oig"), "dolly": str(tmp_path / "dolly.jsonl"),
            "oasst1_train": str(tmp_path / "oasst1-train-trees.txt"),
            "oasst1": str(tmp_path / "oasst1.messages.jsonl"), "out": str(tmp_path / "runs"),
            "workdir": str(wd)}


@pytest.mark.parametrize("name", ["bloomchat-176b", "bloom-560m-lora", "demo"])
def test_shipped_recipes_load(name, fake_sources):
    r = load_recipe(RECIPES / f"{name}.yaml", vars=fake_sources)
    assert len(r.stages) == 2
    s1, s2 = r.stages
    assert s1.init_from == "base" and s2.init_from == "previous"
    assert s1.epochs == 1 and s2.epochs == 3  # BLOOMChat: OIG 1 epoch, OASST1 + Dolly 3 epochs
    assert s1.data.oig and s2.data.dolly and s2.data.oasst1
    assert all(s.prompt_loss_weight == 0.0 and s.warmup_steps == 0 and s.weight_decay == 0.1
               and s.max_grad_norm == 1.0 for s in r.stages)
    if name == "bloomchat-176b":
        assert r.base_model == "bigscience/bloom" and r.precision == "bf16" and r.method == "full"
        assert all(s.lr == 1e-5 and s.global_batch_size == 128 and s.data.max_seq_length == 2048
                   and s.data.packing == "greedy" for s in r.stages)
        assert s1.data.prepare["basic_repeat"] == 1000 and s1.data.per_source == 100_000
        names = [p.name for p in s1.data.oig]  # BLOOMChat's 25 files, nothing a glob would add
        assert len(names) == len(set(names)) == 25 and "unified_rallio_safety_and_prosocial.jsonl" not in names
        assert {"unified_basic.jsonl", "unified_p3.jsonl.gz", "unified_chip2.jsonl"} <= set(names)
        assert all(s.lr_schedule == "cosine" and s.lr_end_ratio == 0.1 for s in r.stages)  # the model card
        assert all(s.data.overlong == "drop" and s.data.loss_on == "replies" for s in r.stages)
        # BLOOMChat's scripts: the prosocial skip tests only `meta`; OASST1's train split only
        assert s1.data.prepare["prosocial_check"] == "meta"
        assert s2.data.prepare["oasst1_trees"] == fake_sources["oasst1_train"]
    if name == "bloom-560m-lora":
        assert r.method == "lora" and r.lora.r == 16
    if name == "demo":
        assert r.base_model == str(Path(fake_sources["workdir"]) / "base")
        assert r.output_dir == Path(fake_sources["workdir"]) / "runs" / "demo"
        assert s1.lr > 1e-5  # random-init tiny model
    # relative paths resolve against the recipe's folder, not the working directory
    assert r.output_dir.is_absolute()
    # each recipe also loads under the launcher its comments name: demo with cpu_2proc.yaml (2
    # processes), the LoRA one with fsdp.yaml (8), the 176B one with deepspeed_zero3.yaml (128)
    world = {"demo": 2, "bloom-560m-lora": 8, "bloomchat-176b": 128}[name]
    rw = load_recipe(RECIPES / f"{name}.yaml", vars=fake_sources, world_size=world)
    assert all(s.global_batch_size % (s.micro_batch_size * world) == 0 for s in rw.stages)


def test_accelerate_configs_are_valid_yaml():
    import yaml

    for f in ("deepspeed_zero3.yaml", "fsdp.yaml", "cpu_2proc.yaml", "fsdp_cpu_2proc.yaml"):
        cfg = yaml.safe_load((RECIPES / "accelerate" / f).read_text())
        assert cfg["distributed_type"] in ("DEEPSPEED", "FSDP", "MULTI_GPU")
    ds = yaml.safe_load((RECIPES / "accelerate" / "deepspeed_zero3.yaml").read_text())
    assert ds["deepspeed_config"]["zero_stage"] == 3 and ds["num_processes"] == 128


def _launch_env(config: Path) -> dict[str, str]:
    """The environment `accelerate launch --config_file CONFIG` gives the training processes
    (the steps of accelerate.commands.launch.launch_command, without starting anything)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(config), "-m", "bloomchat.train", "r.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_accelerate_configs_give_settings_accelerator_accepts(monkeypatch):
    """Found on a GPU: `gradient_accumulation_steps: auto` in the DeepSpeed config reached
    Accelerator() as ACCELERATE_GRADIENT_ACCUMULATION_STEPS=auto, which it cannot parse."""
    from accelerate.utils import DeepSpeedPlugin

    env = _launch_env(RECIPES / "accelerate" / "deepspeed_zero3.yaml")
    assert env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").isdigit()
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    for k, v in env.items():
        if k.startswith("ACCELERATE_"):
            monkeypatch.setenv(k, v)
    plugin = DeepSpeedPlugin()  # what Accelerator() builds from that environment
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    fsdp = _launch_env(RECIPES / "accelerate" / "fsdp.yaml")
    assert fsdp["ACCELERATE_USE_FSDP"] == "true" and fsdp["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "BloomBlock"
    assert fsdp.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").isdigit()
    # the CPU FSDP config: torchrun starts 2 processes and FSDP2 is asked for (bloomchat.train.accel)
    cpu = _launch_env(RECIPES / "accelerate" / "fsdp_cpu_2proc.yaml")
    assert cpu["ACCELERATE_USE_FSDP"] == "true" and cpu["FSDP_VERSION"] == "2"
    assert cpu["FSDP_CPU_RAM_EFFICIENT_LOADING"].lower() in ("false", "0")


def _base(tmp_path, micro_model_dir, packed_pair):
    return micro_recipe(micro_model_dir, tmp_path / "out", packed_pair["s1"], packed_pair["s2"])


def _expect(tmp_path, recipe: dict, *fragments, **kw):
    p = write_recipe(tmp_path / "bad.yaml", recipe)
    with pytest.raises(BloomchatError) as e:
        load_recipe(p, **kw)
    msg = str(e.value)
    for f in fragments:
        assert f in msg, msg
    return msg


def test_unknown_key_named_with_line_and_hint(tmp_path, micro_model_dir, packed_pair):
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"][1]["learning_rate"] = 1e-4
    msg = _expect(tmp_path, r, "stages[1].learning_rate", "unknown key")
    assert "bad.yaml:" in msg  # the line number follows the file name
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["defaults"]["weightdecay"] = 0.1
    _expect(tmp_path, r, "defaults.weightdecay", "did you mean 'weight_decay'")


def test_wrong_types(tmp_path, micro_model_dir, packed_pair):
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"][0]["epochs"] = "three"
    _expect(tmp_path, r, "stages[0].epochs", "must be a number")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["defaults"]["micro_batch_size"] = 2.5
    _expect(tmp_path, r, "micro_batch_size", "must be an integer")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"] = {"name": "x"}
    _expect(tmp_path, r, "stages", "non-empty list")


def test_missing_files(tmp_path, micro_model_dir, packed_pair):
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"][1]["data"] = {"dolly": [str(tmp_path / "nope.jsonl")]}
    _expect(tmp_path, r, "stages[1].data.dolly", "no file matches")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"][0]["data"] = {"shards": str(tmp_path)}
    _expect(tmp_path, r, "stages[0].data.shards", "not a packed-shards directory")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["base_model"] = str(tmp_path / "no-model")
    _expect(tmp_path, r, "base_model", "does not exist")


def test_impossible_settings(tmp_path, micro_model_dir, packed_pair):
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["defaults"]["global_batch_size"] = 6
    r["defaults"]["micro_batch_size"] = 4
    _expect(tmp_path, r, "global_batch_size", "not a multiple")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    _expect(tmp_path, r, "global_batch_size", "3 process(es)", world_size=3)  # 4 rows over 2 x 3
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"][0]["init_from"] = "stage2"  # a later stage
    _expect(tmp_path, r, "stages[0].init_from")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"][1]["name"] = "stage1"
    _expect(tmp_path, r, "used twice")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["lora"] = {"r": 8}
    _expect(tmp_path, r, "lora", "method is 'full'")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["defaults"]["prompt_loss_weight"] = 2
    _expect(tmp_path, r, "prompt_loss_weight", "[0, 1]")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"][0]["data"] = {"shards": str(packed_pair["s1"]), "dolly": [str(tmp_path / "bad.yaml")]}
    (tmp_path / "bad.yaml").write_text("")
    _expect(tmp_path, r, "not both")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["stages"][0]["data"] = {"jsonl": [str(tmp_path / "bad.yaml")], "prepare": {"basic_repat": 3}}
    _expect(tmp_path, r, "prepare.basic_repat", "unknown prepare option")


def test_placeholders(tmp_path, micro_model_dir, packed_pair):
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["output_dir"] = "${where}/out"
    _expect(tmp_path, r, "output_dir", "--set where=")
    p = write_recipe(tmp_path / "ok.yaml", r)
    assert load_recipe(p, vars={"where": str(tmp_path)}).output_dir == tmp_path / "out"
    r["output_dir"] = "${where:-rel}/out"
    p = write_recipe(tmp_path / "sub" / "ok.yaml", r)
    assert load_recipe(p).output_dir == tmp_path / "sub" / "rel" / "out"


def test_dry_run_prints_the_plan(tmp_path, micro_model_dir, packed_pair):
    p = write_recipe(tmp_path / "r.yaml", _base(tmp_path, micro_model_dir, packed_pair))
    plan = run_recipe(p, dry_run=True)
    s1, s2 = plan["stages"]
    # 36 rows of stage 1 (packed by the fixture) in global batches of 4 -> 9 steps, 1 epoch
    assert s1["rows"] > 0 and s1["steps"] == -(-s1["rows"] // 4)
    assert s2["steps"] == 2 * -(-s2["rows"] // 4)
    assert s1["tokens"] > s1["loss_tokens"] > 0
    assert s2["init_from"] == "stage stage1"
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
    out = subprocess.run([sys.executable, "-m", "bloomchat.train", str(p), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "stage 1: stage1" in out.stdout and f"steps {s1['steps']}" in out.stdout
    assert str(tmp_path / "out" / "stage2" / "model") in out.stdout


def test_cli_error_is_one_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\nbase_model: /nonexistent/model\noutput_dir: out\nstages: []\n")
    out = subprocess.run([sys.executable, "-m", "bloomchat.train", str(p)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "r.yaml:2 base_model" in out.stderr


def test_cli_refuses_a_set_the_recipe_does_not_use(tmp_path, micro_model_dir, packed_pair):
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["output_dir"] = "${out:-default-out}"
    p = write_recipe(tmp_path / "r.yaml", r)
    # a typo (otu for out) must not silently train into the default folder
    out = subprocess.run([sys.executable, "-m", "bloomchat.train", str(p), "--set", f"otu={tmp_path}/x", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "--set otu=" in out.stderr and "has: out" in out.stderr
    ok = subprocess.run([sys.executable, "-m", "bloomchat.train", str(p), "--set", f"out={tmp_path}/x", "--dry-run"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and f"{tmp_path}/x/stage1/model" in ok.stdout


def test_one_stage_of_a_recipe_needs_only_its_own_placeholders(tmp_path):
    for name in ("oasst1.jsonl", "dolly.jsonl"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "trees.txt").write_text("")
    vars_ = {"oasst1": str(tmp_path / "oasst1.jsonl"), "dolly": str(tmp_path / "dolly.jsonl"),
             "oasst1_train": str(tmp_path / "trees.txt")}
    with pytest.raises(BloomchatError, match=r"\$\{oig\}"):
        load_recipe(RECIPES / "bloomchat-176b.yaml", vars=vars_)
    r = load_recipe(RECIPES / "bloomchat-176b.yaml", vars=vars_, only_stage="stage2-oasst1-dolly")
    assert [s.name for s in r.stages] == ["stage2-oasst1-dolly"]
    assert r.stages[0].data.prepare.get("filters") is False  # BLOOMChat's texts exactly
    with pytest.raises(BloomchatError, match="no stage named 'nope'.*stage1-oig, stage2-oasst1-dolly"):
        load_recipe(RECIPES / "bloomchat-176b.yaml", vars=vars_, only_stage="nope")


def test_a_whole_placeholder_takes_the_type_of_its_field(tmp_path, micro_model_dir, packed_pair):
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["name"] = "run-${steps}"  # inside a longer string: text
    r["seed"] = "${seed}"
    r["defaults"].update(max_steps="${steps}", global_batch_size="${gb}", lr="${lr}", max_grad_norm="${clip}")
    r["stages"][0]["epochs"] = "${ep}"
    p = write_recipe(tmp_path / "vars.yaml", r)
    rec = load_recipe(p, vars={"steps": "100", "gb": "8", "lr": "1e-5", "clip": "null", "seed": "3", "ep": "2"})
    st = rec.stages[0]
    assert (st.max_steps, st.global_batch_size, st.lr, st.max_grad_norm, st.epochs) == (100, 8, 1e-5, None, 2.0)
    assert type(st.max_steps) is int and type(st.global_batch_size) is int and rec.seed == 3
    assert rec.name == "run-100"
    _expect(tmp_path, r, "max_steps", "must be an integer", "'many'",
            vars={"steps": "many", "gb": "8", "lr": "1e-5", "clip": "1", "seed": "3", "ep": "1"})


def test_new_keys_are_checked(tmp_path, micro_model_dir, packed_pair):
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["chat_format"] = "chatml"
    _expect(tmp_path, r, "chat_format", "'bloomchat'")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    r["defaults"]["lr_end_ratio"] = 0.1  # with the default constant schedule
    _expect(tmp_path, r, "lr_end_ratio", "not constant")
    r["defaults"]["lr_schedule"] = "cosine"
    r["defaults"]["lr_end_ratio"] = 1.5
    _expect(tmp_path, r, "lr_end_ratio", "[0, 1]")
    r = _base(tmp_path, micro_model_dir, packed_pair)
    (tmp_path / "d.jsonl").write_text("")
    r["stages"][0]["data"] = {"jsonl": [str(tmp_path / "d.jsonl")], "loss_on": "everything"}
    _expect(tmp_path, r, "stages[0].data.loss_on", "'replies', 'conversation'")
    r["stages"][0]["data"] = {"jsonl": [str(tmp_path / "d.jsonl")], "overlong": "truncate"}
    _expect(tmp_path, r, "stages[0].data.overlong", "'split', 'drop'")
    r["stages"][0]["data"] = {"shards": str(packed_pair["s1"]), "loss_on": "conversation"}
    _expect(tmp_path, r, "stages[0].data.loss_on", "already packed")
    r["stages"][0]["data"] = {"jsonl": [str(tmp_path / "d.jsonl")], "loss_on": "conversation", "overlong": "drop"}
    r["chat_format"] = "base"
    rec = load_recipe(write_recipe(tmp_path / "ok.yaml", r))
    assert (rec.chat_format, rec.stages[0].data.loss_on, rec.stages[0].data.overlong) == ("base", "conversation",
                                                                                          "drop")


def _stage(**kw):
    from bloomchat.train.recipe import Stage, StageData

    return Stage(name="s", data=StageData(), **kw)


def test_cosine_decay_to_an_end_ratio():
    """BLOOMChat's schedule: cosine, no warmup, to 0.1 x lr. By hand for 4 steps (t = step / 4):
    lr x (0.1 + 0.9 x (1 + cos(pi t)) / 2) = 1, 0.868198, 0.55, 0.231802 (x 1e-5); and against
    transformers' cosine-with-min-lr schedule."""
    import torch
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    from bloomchat.train.trainer import lr_at

    st = _stage(lr=1e-5, lr_schedule="cosine", lr_end_ratio=0.1)
    got = [lr_at(st, s, 4) for s in range(4)]
    assert got == pytest.approx([1e-5, 0.868198e-5, 0.55e-5, 0.231802e-5], rel=1e-6)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-5)
    sched = get_cosine_with_min_lr_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=10,
                                                        min_lr_rate=0.1)
    want = []
    for _ in range(10):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # transformers warms up from 0 at step 0; ours reaches lr at the end of warmup step (step + 1) / warmup
    st = _stage(lr=1e-5, lr_schedule="cosine", lr_end_ratio=0.1, warmup_steps=3)
    assert [lr_at(st, s, 10) for s in range(3, 10)] == pytest.approx(want[3:], rel=1e-9)
    # linear to 0.2 over 4 steps: 0.2 + 0.8 x (1, 0.75, 0.5, 0.25) = 1, 0.8, 0.6, 0.4
    st = _stage(lr=1.0, lr_schedule="linear", lr_end_ratio=0.2)
    assert [lr_at(st, s, 4) for s in range(4)] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    # the default end ratio 0 keeps the old decay to 0
    st = _stage(lr=1.0, lr_schedule="linear")
    assert [lr_at(st, s, 4) for s in range(4)] == pytest.approx([1.0, 0.75, 0.5, 0.25])


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_loads(path, fake_sources, micro_model_dir, shared_data, tmp_path):
    """Each file in recipes/ loads and validates with its placeholders filled (real ../shared/data for
    the recipes that read it), so a shipped recipe cannot rot unnoticed."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("")
    prepared = Path(fake_sources["workdir"]) / "prepared"  # what the real-base demo writes before training
    prepared.mkdir()
    for f in ("stage1-train.jsonl", "stage2-train.jsonl"):
        (prepared / f).write_text("")
    values = {**fake_sources, "base": str(micro_model_dir), "model": str(micro_model_dir), "pairs": str(pairs),
              "shared": str(shared_data("llamafactory_demo_zh_en").parent)}
    r = load_recipe(path, vars=values)
    assert r.stages and r.output_dir.is_absolute()
    if path.stem == "smollm2-135m-dpo":
        (st,) = r.stages
        assert st.kind == "dpo" and r.method == "lora" and st.data.pairs == [pairs]
