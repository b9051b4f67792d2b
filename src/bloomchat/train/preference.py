"""The loss step of a preference stage (`kind: dpo`): DPO, IPO, ORPO or SimPO on packed pairs.

A packed micro-batch holds whole pairs, each as two conversations (segments 2k-1 chosen, 2k
rejected) of one row; `packed_forward` keeps them apart and runs the LM head only on reply
tokens, and the reply log-probs are summed per side (`pair_logps`). Per pair, with summed
log-probs pi (policy) and ref (reference, computed once before training and stored, see
`reference.py`) and n reply tokens (EOS included), the losses are TRL 1.16's:

    dpo    -(1-e) log s(b D) - e log s(-b D),  D = (pi_c - ref_c) - (pi_r - ref_r)     (sigmoid; e: cDPO)
    ipo    ((pi_c - ref_c)/n_c - (pi_r - ref_r)/n_r - 1/(2b))^2                        (TRL's per-token IPO)
    simpo  -(1-e) log s(b (pi_c/n_c - pi_r/n_r) - g) - e log s(-...)                    (CPO loss_type simpo)
    orpo   -pi_c/n_c - b log s(log odds),  odds of the per-token mean log-probs        (ORPO)

ORPO's NLL term is the chosen reply's mean token NLL (the paper's L_SFT on the response); TRL's
ORPOTrainer takes it over prompt and reply tokens alike. The stage loss is the mean over the
pairs of the global batch (`PairSplit.stats.weight` counts pairs). Rewards as TRL logs them:
b (pi - ref) for dpo/ipo, b pi/n for simpo/orpo; reward accuracy = share of pairs whose chosen
reward is the higher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bloomchat.train.packing_attn import packed_forward

#: Losses that compare with a reference model (the stage's initial weights).
NEEDS_REFERENCE = ("dpo", "ipo")
#: Per-pair statistics a PreferenceLoss sums (the metrics are their means).
STAT_KEYS = ("pairs", "correct", "margin", "reward_chosen", "reward_rejected", "logps_chosen", "logps_rejected")


@dataclass(frozen=True)
class PreferenceConfig:
    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5

    @classmethod
    def of(cls, stage) -> "PreferenceConfig":
        return cls(stage.loss, stage.beta, stage.label_smoothing, stage.simpo_gamma)

    @property
    def needs_reference(self) -> bool:
        return self.loss in NEEDS_REFERENCE


def pair_logps(model, batch: dict, device, *, bloom: bool | None = None) -> torch.Tensor:
    """(P, 2) float32: summed log-probs of the chosen / rejected reply tokens of each pair."""
    logits = packed_forward(model, batch["input_ids"].to(device), batch["segment_ids"].to(device),
                            batch["flat_index"].to(device), bloom=bloom)
    lp = -F.cross_entropy(logits.float(), batch["targets"].to(device), reduction="none")
    p = int(batch["n_pairs"])
    return torch.zeros(2 * p, dtype=lp.dtype, device=device).index_add(0, batch["slot"].to(device), lp).view(p, 2)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _smoothed(logits: torch.Tensor, e: float) -> torch.Tensor:
    return -(1 - e) * F.logsigmoid(logits) - e * F.logsigmoid(-logits)


def preference_loss(cfg: PreferenceConfig, logps: torch.Tensor, ref: torch.Tensor | None,
                    n_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair loss (P,) and rewards (P, 2: chosen, rejected) from (P, 2) log-probs (module doc)."""
    b, n = cfg.beta, n_tokens.to(logps.dtype).clamp(min=1)
    if cfg.loss in NEEDS_REFERENCE:
        ratio = logps - ref.to(logps.dtype)
        if cfg.loss == "dpo":
            loss = _smoothed(b * (ratio[:, 0] - ratio[:, 1]), cfg.label_smoothing)
        else:
            avg = ratio / n
            loss = (avg[:, 0] - avg[:, 1] - 1 / (2 * b)) ** 2
        return loss, b * ratio.detach()
    avg = logps / n
    if cfg.loss == "simpo":
        loss = _smoothed(b * (avg[:, 0] - avg[:, 1]) - cfg.simpo_gamma, cfg.label_smoothing)
    elif cfg.loss == "orpo":
        log_odds = (avg[:, 0] - avg[:, 1]) - (_log1mexp(avg[:, 0]) - _log1mexp(avg[:, 1]))
        loss = -avg[:, 0] - b * F.logsigmoid(log_odds)
    else:
        raise ValueError(f"unknown preference loss {cfg.loss!r}")
    return loss, b * avg.detach()


class PreferenceLoss:
    """`loop.LossStep` of a preference stage: summed per-pair loss of a micro-batch. It also sums
    the statistics of the pairs it scores (dummy batches left out), apart for training and the
    dev pass (model.eval()), the dev ones per language; `metrics` reduces them over processes."""

    def __init__(self, cfg: PreferenceConfig, langs: list[str]):
        self.cfg, self.langs = cfg, list(langs)
        self._sums = {"train": torch.zeros(1, len(STAT_KEYS), dtype=torch.float64),
                      "dev": torch.zeros(max(1, len(self.langs)), len(STAT_KEYS), dtype=torch.float64)}

    def __call__(self, model, batch: dict, device, *, bloom: bool | None = None) -> torch.Tensor:
        logps = pair_logps(model, batch, device, bloom=bloom)
        ref = batch.get("ref")
        if self.cfg.needs_reference and ref is None:
            raise RuntimeError("a dpo/ipo batch needs the reference log-probs (PairSplit.ref)")
        loss, rewards = preference_loss(self.cfg, logps, ref.to(device) if ref is not None else None,
                                         batch["reply_tokens"].to(device))
        if not batch.get("dummy"):
            self._record("train" if model.training else "dev", logps.detach(), rewards, batch)
        return loss.sum()

    def _record(self, mode: str, logps: torch.Tensor, rewards: torch.Tensor, batch: dict) -> None:
        rc, rr = rewards[:, 0].double().cpu(), rewards[:, 1].double().cpu()
        lp = logps.double().cpu()
        per_pair = torch.stack([torch.ones_like(rc), (rc > rr).double(), rc - rr, rc, rr, lp[:, 0], lp[:, 1]], 1)
        idx = batch["lang_idx"] if mode == "dev" else torch.zeros(len(rc), dtype=torch.long)
        self._sums[mode].index_add_(0, idx, per_pair)

    def metrics(self, mode: str, accelerator) -> dict:
        """Means since the last call (all processes; every process must call it), then reset."""
        tot = accelerator.reduce(self._sums[mode].to(accelerator.device), reduction="sum").cpu()
        self._sums[mode].zero_()
        out = _means(tot.sum(0))
        if mode == "dev":
            out["by_lang"] = {lang: _means(tot[i]) for i, lang in enumerate(self.langs) if tot[i, 0] > 0}
        return out


def _means(row: torch.Tensor) -> dict:
    n = float(row[0])
    if n == 0:
        return {}
    vals = {k: float(row[i]) / n for i, k in enumerate(STAT_KEYS) if k not in ("pairs", "correct")}
    return {"pairs": int(n), "reward_accuracy": float(row[1]) / n, "reward_margin": vals["margin"],
            **{k: vals[k] for k in ("reward_chosen", "reward_rejected", "logps_chosen", "logps_rejected")}}
