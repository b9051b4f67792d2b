"""What a stage leaves for people: metrics.jsonl, loss.png, TensorBoard events, the model card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bloomchat.train.faults import writing

#: Keys of a metrics line that depend only on the math (compared across resumed/parallel runs).
LOSS_KEYS = ("step", "loss", "lr", "grad_norm", "tokens", "loss_tokens")


class MetricsLog:
    """Append-only JSONL of per-step metrics; on resume the lines after the checkpoint are dropped,
    so the log of a resumed run equals that of an uninterrupted one. TensorBoard when installed."""

    def __init__(self, path: Path, *, resume_step: int | None, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        with writing("the metrics log", path):
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is None:
                path.write_text("")
            else:
                keep = [ln for ln in read_metrics(path)
                        if ln.get("kind", "train") == "train" and ln.get("step", 0) <= resume_step]
                path.write_text("".join(json.dumps(x) + "\n" for x in keep))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # tensorboard not installed: the JSONL and PNG still exist
            self.tb = None

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with writing("the metrics log", self.path), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step" and v is not None:
                    self.tb.add_scalar(f"{rec.get('kind', 'train')}/{k}", v, rec["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(ln) for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


def _plot_preference(ax, train: list[dict], dev: list[dict]) -> None:
    """A preference stage's second panel: reward accuracy (right axis) and the distance from the
    reference (log-ratio per reply token, next-token KL) per step, dev values as points."""
    steps = [r["step"] for r in train]
    for side, color in (("chosen", "C2"), ("rejected", "C3")):
        key = f"log_ratio_{side}"
        if any(key in r for r in train):
            ax.plot(steps, [r.get(key) for r in train], lw=1, color=color, label=f"log-ratio {side} (per token)")
        if any(key in r for r in dev):
            ax.plot([r["step"] for r in dev], [r.get(key) for r in dev], "o", color=color,
                    label=f"dev log-ratio {side}")
    if any("kl_next_token" in r for r in dev):
        ax.plot([r["step"] for r in dev], [r.get("kl_next_token") for r in dev], "D", color="C4",
                label="dev KL(policy || ref), next token")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("nats per reply token")
    ax.grid(alpha=0.3)
    acc = ax.twinx()
    acc.plot(steps, [r.get("reward_accuracy") for r in train], lw=1, ls="--", color="C0", label="reward accuracy")
    if any("reward_accuracy" in r for r in dev):
        acc.plot([r["step"] for r in dev], [r.get("reward_accuracy") for r in dev], "s", color="C0",
                 label="dev reward accuracy")
    acc.set_ylim(-0.02, 1.02)
    acc.set_ylabel("reward accuracy")
    lines = ax.get_legend_handles_labels(), acc.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], fontsize=7, loc="best")


def plot_loss(metrics_path: Path, png: Path, title: str) -> Path | None:
    """Training loss per step (and the moving average), dev loss points when there are any; for a
    preference stage a second panel with reward accuracy and the distance from the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(metrics_path)
    train = [r for r in recs if r.get("kind", "train") == "train"]
    dev = [r for r in recs if r.get("kind") == "dev"]
    if not train:
        return None
    steps = [r["step"] for r in train]
    loss = [r["loss"] for r in train]
    pref = any("reward_accuracy" in r for r in train)
    fig, axes = plt.subplots(2 if pref else 1, 1, figsize=(7, 7 if pref else 4), sharex=True, squeeze=False)
    ax = axes[0, 0]
    k = max(1, len(loss) // 20)
    ax.plot(steps, loss, lw=1, alpha=0.5 if k > 1 else 1.0, label="train loss (per step)")
    for r0, r1 in zip(train, train[1:]):  # epoch boundaries
        if int(r1.get("epoch", 0) - 1e-9) > int(r0.get("epoch", 0) - 1e-9):
            ax.axvline(r0["step"], color="grey", ls=":", lw=1)
    if k > 1:
        avg = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
        ax.plot(steps, avg, lw=2, label=f"moving average ({k} steps)")
    if dev:
        ax.plot([r["step"] for r in dev], [r["loss"] for r in dev], "o", color="C3", label="dev loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per pair" if pref else "loss per loss token (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if pref:
        _plot_preference(axes[1, 0], train, dev)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def earlier_stages(recipe, idx: int) -> list[dict[str, Any]]:
    """The finished stages a stage's weights descend from (init_from chain), oldest first, each
    with its result and training-split counts: the stage-2 card must say the model also saw OIG."""
    names = [s.name for s in recipe.stages]
    chain, i = [], idx
    while True:
        src = recipe.stages[i].init_from
        if src == "previous" and i > 0:
            i -= 1
        elif src in names[:i]:
            i = names.index(src)
        else:
            break
        res_path = recipe.stage_dir(recipe.stages[i]) / "result.json"
        if not res_path.exists():
            break
        res = json.loads(res_path.read_text(encoding="utf-8"))
        stats_path = Path(res.get("shards", "")) / "stats.json"
        stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else {}
        chain.append({"result": res, "split": (stats.get("split") or {}).get("train", stats)})
    return chain[::-1]


def _format_line(recipe) -> str:
    if getattr(recipe, "chat_format", "bloomchat") == "base":
        return ("Prompt format: the base model's own chat template (`chat_format: base`), kept in the tokenizer; "
                "training text was rendered with it.")
    return ("Prompt format: `<human>: ...\\n<bot>: ...` (BLOOMChat, `chat_format: bloomchat`); the tokenizer "
            "carries it as chat template, replacing any template of the base model.")


def _decay_end(st) -> str:
    return f" to {st.lr_end_ratio:g} x lr" if st.lr_schedule != "constant" and st.lr_end_ratio else ""


def _unit(data_stats: dict) -> str:
    return "pairs" if data_stats.get("kind") == "pairs" else "conversations"


def _data_lines(data_stats: dict, split: dict) -> list[str]:
    if data_stats.get("kind") == "pairs":
        return [f"Training split: {split.get('pairs', '?')} preference pairs (chosen and rejected reply to one "
                f"prompt, two conversations of one row) packed into {split.get('sequences', '?')} sequences, "
                f"{split.get('tokens', '?')} tokens ({split.get('loss_tokens', '?')} of them reply tokens, the only "
                f"ones scored); {data_stats.get('dropped_overlong', 0)} pairs longer than a row left out."]
    return [f"Training split: {split.get('conversations', '?')} conversations packed into "
            f"{split.get('sequences', '?')} sequences, {split.get('tokens', '?')} tokens "
            f"({split.get('loss_tokens', '?')} of them bot reply tokens, the only ones with loss)."]


def _kl_line(dev: dict) -> list[str]:
    """How far the tuned model moved from the reference on the held-out pairs (preference.py doc)."""
    out = []
    if "log_ratio_chosen" in dev:
        out.append(f"- log-ratio to the reference per reply token of the held-out pairs (log pi - log pi_ref on the "
                   f"pairs' own tokens, not a KL): chosen {dev['log_ratio_chosen']:.4f}, rejected "
                   f"{dev['log_ratio_rejected']:.4f}")
    if "kl_next_token" in dev:
        out.append(f"- KL(policy || initial weights) of the next-token distributions, mean over the reply "
                   f"positions of the held-out pairs: {dev['kl_next_token']:.5f} nats (the initial weights: the "
                   "LoRA adapter off)")
    return out


def _preference_lines(stage, result: dict) -> list[str]:
    """The preference section of a kind: dpo stage's card: objective, held-out reward accuracy, KL."""
    if getattr(stage, "kind", "sft") == "sft":
        return []
    ref = {"dpo": "the stage's initial weights", "ipo": "the stage's initial weights"}.get(stage.loss, "none")
    knobs = f"beta {stage.beta}" + (f", label smoothing {stage.label_smoothing}" if stage.label_smoothing else "") + \
        (f", gamma {stage.simpo_gamma}" if stage.loss == "simpo" else "")
    dev = result.get("dev_metrics") or {}
    out = ["## Preference tuning", "", f"- loss: {stage.loss} ({knobs}); reference model: {ref}"]
    if dev:
        kl = "kl_next_token" in dev
        out += [f"- held-out pairs: {dev['pairs']}, reward accuracy {dev['reward_accuracy']:.3f}, mean reward "
                f"margin {dev['reward_margin']:.4f}", *_kl_line(dev), "",
                "| language | pairs | reward accuracy | reward margin |" + (" KL to initial weights |" if kl else ""),
                "|---|---|---|---|" + ("---|" if kl else "")]
        out += [f"| {lang} | {v['pairs']} | {v['reward_accuracy']:.3f} | {v['reward_margin']:.4f} |"
                + (f" {v['kl_next_token']:.5f} |" if kl else "")
                for lang, v in sorted((dev.get("by_lang") or {}).items())]
    return out + [""]


def model_card(*, recipe, stage, data_stats: dict, prepare_summary: dict | None,
               result: dict, lineage: list[dict[str, Any]] | None = None) -> str:
    """README.md of a stage's model: what it was trained from, on what, how, and how well."""
    split = (data_stats.get("split") or {}).get("train", data_stats)
    by_source = split.get("by_source") or {}
    by_lang = split.get("by_lang") or {}
    recipe_text = recipe.path.read_text(encoding="utf-8") if recipe.path and recipe.path.exists() else ""
    rows = lambda d: "\n".join(f"| {k} | {v} |" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "| - | - |"  # noqa: E731
    st = stage
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [bloomchat, chat, multilingual]",
        *([f"base_model: {recipe.base_model}"] if not Path(recipe.base_model).is_absolute() else []),  # hub ids only: the hub rejects a local path
        "---",
        f"# {recipe.name} / {st.name}",
        "",
        f"Chat model trained by bloomchat, stage `{st.name}` of recipe `{recipe.name}`, "
        f"starting from `{result['init_from']}` (base model `{recipe.base_model}`).",
        _format_line(recipe),
        "",
        "## Training",
        "",
        f"- method: {recipe.method}" + (f" (LoRA r={recipe.lora.r}, alpha={recipe.lora.alpha}, merged into the "
                                         "base on export)" if recipe.method == "lora" else ""),
        f"- steps: {result['steps']}, epochs: {st.epochs}, global batch: {st.global_batch_size} rows of up to "
        f"{split.get('max_seq_length', data_stats.get('max_seq_length', '?'))} tokens",
        f"- lr {st.lr} ({st.lr_schedule}{_decay_end(st)}, warmup {st.warmup_steps}), weight decay {st.weight_decay}, "
        f"grad clip {st.max_grad_norm}, prompt loss weight {st.prompt_loss_weight}, precision {recipe.precision}",
        f"- tokens seen: {result['tokens']}, of which loss tokens: {result['loss_tokens']}",
        f"- final training loss: {result['final_loss']:.4f}" if result.get("final_loss") is not None else "",
        f"- dev loss: {result['dev_loss']:.4f}" if result.get("dev_loss") is not None else "",
        "",
        *_preference_lines(st, result),
        "## Data",
        "",
        *_data_lines(data_stats, split),
        "",
        f"| source | {_unit(data_stats)} |", "|---|---|", rows(by_source), "",
        f"| language | {_unit(data_stats)} |", "|---|---|", rows(by_lang), "",
    ]
    if prepare_summary:
        keep = ("conversations", "by_source", "by_lang", "filtered_lines", "rejected_lines", "per_source", "langid")
        lines += ["Preparation (`bloomchat.data.prepare`) summary:", "", "```json",
                  json.dumps({k: prepare_summary[k] for k in keep if k in prepare_summary}, indent=1, default=str),
                  "```", ""]
    if lineage:
        lines += ["## Earlier stages", "", f"`{st.name}` continues from the weights of these stages (in order):", ""]
        for e in lineage:
            r, sp = e["result"], e["split"]
            loss = f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-"
            srcs = ", ".join(f"{k} {v}" for k, v in sorted((sp.get("by_source") or {}).items(), key=lambda kv: -kv[1]))
            langs = ", ".join(f"{k} {v}" for k, v in sorted((sp.get("by_lang") or {}).items(), key=lambda kv: -kv[1]))
            lines += [f"- `{r['name']}`: {r['steps']} steps, {r['tokens']} tokens ({r['loss_tokens']} loss tokens), "
                      f"final loss {loss}; {sp.get('conversations', '?')} conversations by source: {srcs or '-'}; "
                      f"by language: {langs or '-'}"]
        lines += [""]
    lines += ["## Recipe", "", "```yaml", recipe_text.rstrip(), "```", ""]
    if recipe.vars:
        lines += ["Placeholders filled with: " + " ".join(f"`--set {k}={v}`" for k, v in sorted(recipe.vars.items())), ""]
    return "\n".join(x for x in lines if x is not None) + "\n"
