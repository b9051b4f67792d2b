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

Distance from the reference, two measures (means over reply tokens, pairs weighted by length):

    log_ratio_chosen / _rejected   mean over the data's reply tokens of log pi(y_t) - log ref(y_t)
                                   (dpo / ipo, train and dev records; from the stored reference
                                   log-probs, so free). The log-ratio on the pairs' own tokens, NOT
                                   an expectation under the policy: it is 0 for an untrained policy
                                   and goes negative when training pushes a side down (DPO lowers
                                   the rejected side most); it is not a KL and need not be >= 0.
    kl_next_token                  exact next-token KL(pi || ref) = sum over the vocabulary of
                                   pi(v) (log pi(v) - log ref(v)), at every reply position of both
                                   sides, the context teacher-forced from the pair (LoRA stages,
                                   dev records only: a second forward with the adapter off, the
                                   same reference that made the stored log-probs). Always >= 0;
                                   full fine-tuning keeps no reference weights, so it has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F

from bloomchat.train.packing_attn import packed_forward

#: Losses that compare with a reference model (the stage's initial weights).
NEEDS_REFERENCE = ("dpo", "ipo")
#: Per-pair statistics a PreferenceLoss sums (the metrics are their means).
STAT_KEYS = ("pairs", "correct", "margin", "reward_chosen", "reward_rejected", "logps_chosen", "logps_rejected",
             "ratio_chosen", "ratio_rejected", "ratio_tokens_chosen", "ratio_tokens_rejected", "kl", "kl_tokens")


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


def reply_logits(model, batch: dict, device, *, bloom: bool | None = None) -> torch.Tensor:
    """(N, V) logits at the reply positions of a packed pair batch (the tokens with loss)."""
    return packed_forward(model, batch["input_ids"].to(device), batch["segment_ids"].to(device),
                          batch["flat_index"].to(device), bloom=bloom)


def side_sums(values: torch.Tensor, batch: dict, device) -> torch.Tensor:
    """(P, 2): per-position `values` (N,) summed per pair and side (chosen, rejected)."""
    p = int(batch["n_pairs"])
    return torch.zeros(2 * p, dtype=values.dtype, device=device).index_add(0, batch["slot"].to(device),
                                                                            values).view(p, 2)


def token_logps(logits: torch.Tensor, batch: dict, device) -> torch.Tensor:
    """(N,) float32 log-probs of the reply tokens under `logits`."""
    return -F.cross_entropy(logits.float(), batch["targets"].to(device), reduction="none")


def next_token_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """(N,) KL(pi || ref) of the next-token distributions: sum_v pi(v) (log pi(v) - log ref(v))."""
    lp, lq = F.log_softmax(logits.float(), -1), F.log_softmax(ref_logits.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def pair_logps(model, batch: dict, device, *, bloom: bool | None = None) -> torch.Tensor:
    """(P, 2) float32: summed log-probs of the chosen / rejected reply tokens of each pair."""
    return side_sums(token_logps(reply_logits(model, batch, device, bloom=bloom), batch, device), batch, device)


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
    dev pass (model.eval()), the dev ones per language; `metrics` reduces them over processes.
    `reference`: a context in which the model IS the reference (LoRA: the adapter off); given, the
    dev pass also measures the exact next-token KL (module doc) with a second, no-grad forward."""

    def __init__(self, cfg: PreferenceConfig, langs: list[str],
                 reference: Callable[[], ContextManager] | None = None):
        self.cfg, self.langs, self.reference = cfg, list(langs), reference
        self._sums = {"train": torch.zeros(1, len(STAT_KEYS), dtype=torch.float64),
                      "dev": torch.zeros(max(1, len(self.langs)), len(STAT_KEYS), dtype=torch.float64)}

    def __call__(self, model, batch: dict, device, *, bloom: bool | None = None) -> torch.Tensor:
        logits = reply_logits(model, batch, device, bloom=bloom)
        logps = side_sums(token_logps(logits, batch, device), batch, device)
        ref = batch.get("ref")
        if self.cfg.needs_reference and ref is None:
            raise RuntimeError("a dpo/ipo batch needs the reference log-probs (PairSplit.ref)")
        ref = ref.to(device) if ref is not None else None
        loss, rewards = preference_loss(self.cfg, logps, ref, batch["reply_tokens"].to(device))
        kl = None
        if self.reference is not None and not model.training:  # every process, dummies too: same forwards
            with torch.no_grad(), self.reference():
                ref_logits = reply_logits(model, batch, device, bloom=bloom)
            kl = side_sums(next_token_kl(logits.detach(), ref_logits), batch, device)
        if not batch.get("dummy"):
            ratio = logps.detach().double() - ref.double() if ref is not None else None
            self._record("train" if model.training else "dev", logps.detach(), rewards, batch, ratio, kl)
        return loss.sum()

    def _record(self, mode: str, logps: torch.Tensor, rewards: torch.Tensor, batch: dict,
                ratio: torch.Tensor | None, kl: torch.Tensor | None) -> None:
        rc, rr = rewards[:, 0].double().cpu(), rewards[:, 1].double().cpu()
        lp = logps.double().cpu()
        n = batch["reply_tokens"].double().cpu()
        zero = torch.zeros_like(n)
        ratio, n_ratio = (ratio.cpu(), n) if ratio is not None else (zero, zero)
        kl, n_kl = (kl.double().cpu(), n) if kl is not None else (zero, zero)
        per_pair = torch.stack([torch.ones_like(rc), (rc > rr).double(), rc - rr, rc, rr, lp[:, 0], lp[:, 1],
                                ratio[:, 0], ratio[:, 1], n_ratio[:, 0], n_ratio[:, 1], kl.sum(1), n_kl.sum(1)], 1)
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
    r = dict(zip(STAT_KEYS, (float(x) for x in row)))
    out = {"pairs": int(n), "reward_accuracy": r["correct"] / n, "reward_margin": r["margin"] / n,
           **{k: r[k] / n for k in ("reward_chosen", "reward_rejected", "logps_chosen", "logps_rejected")}}
    for side in ("chosen", "rejected"):  # per reply token (module doc); only where a reference was given
        if r[f"ratio_tokens_{side}"] > 0:
            out[f"log_ratio_{side}"] = r[f"ratio_{side}"] / r[f"ratio_tokens_{side}"]
    if r["kl_tokens"] > 0:
        out["kl_next_token"] = r["kl"] / r["kl_tokens"]
    return out
