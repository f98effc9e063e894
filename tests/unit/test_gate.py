"""The retrain gate (pure logic): a challenger worse than the champion on any check is
refused, by name; one as good passes. Metrics computed by the gate's own ``evaluate``."""

from __future__ import annotations

import numpy as np
import pytest

from build_engines.retrain import GateLimits, choose, evaluate, gate


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    n = 20_000
    y = (rng.random(n) < 0.02).astype(np.int64)
    signal = y * 2.5 + rng.standard_normal(n)
    masks = {"new_terminal": rng.random(n) < 0.1, "new_card": rng.random(n) < 0.1}
    return y, signal, masks, rng


def _metrics(y, logits, masks, cost=3.0, int8_drop=0.0):
    scores = 1 / (1 + np.exp(-(logits - 5)))
    out = evaluate(y, scores, np.ones(len(y)), masks, decline_threshold=0.5)
    return {**out, "us_per_row_b64": cost, "int8_drop": int8_drop}


def test_a_challenger_as_good_as_the_champion_passes(rows) -> None:
    y, signal, masks, _ = rows
    champion = _metrics(y, signal, masks)
    verdict = gate(champion, dict(champion))
    assert verdict["passed"], verdict["failed"]
    assert {c["check"] for c in verdict["checks"]} >= {
        "pr_auc",
        "recall_at_1pct_fpr",
        "new_terminal_pr_auc",
        "new_card_pr_auc",
        "ece",
        "us_per_row_b64",
        "int8_drop",
        "genuine_declined",
    }


def test_a_worse_challenger_is_refused(rows) -> None:
    y, signal, masks, rng = rows
    champion = _metrics(y, signal, masks)
    noisier = _metrics(y, signal + 1.5 * rng.standard_normal(len(y)), masks)
    verdict = gate(champion, noisier)
    assert not verdict["passed"]
    assert {"pr_auc", "recall_at_1pct_fpr"} <= set(verdict["failed"])
    failed = next(c for c in verdict["checks"] if c["check"] == "pr_auc")
    assert failed["challenger"] < failed["champion"] - GateLimits().pr_auc_loss


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"us_per_row_b64": 3.0 * 1.25}, "us_per_row_b64"),
        ({"int8_drop": 0.006}, "int8_drop"),
        ({"ece": 0.5}, "ece"),
        ({"new_terminal_pr_auc": 0.0}, "new_terminal_pr_auc"),
        ({"genuine_declined": 0.5}, "genuine_declined"),
    ],
)
def test_each_limit_refuses_on_its_own(rows, change: dict, check: str) -> None:
    y, signal, masks, _ = rows
    champion = _metrics(y, signal, masks)
    verdict = gate(champion, {**champion, **change})
    assert verdict["failed"] == [check]


def test_a_slice_without_fraud_is_not_checked_and_says_so(rows) -> None:
    y, signal, masks, _ = rows
    champion = _metrics(y, signal, {**masks, "new_card": np.zeros(len(y), dtype=bool)})
    assert champion["new_card_pr_auc"] is None
    verdict = gate(champion, dict(champion))
    skipped = next(c for c in verdict["checks"] if c["check"] == "new_card_pr_auc")
    assert skipped["passed"] and "no fraud" in skipped["limit"]


def test_a_slice_loss_is_judged_against_the_slices_noise(rows) -> None:
    """On a cold-start slice with tens of frauds a loss of 0.05 is noise (one or two frauds
    ranked differently) and passes; with hundreds it is a real loss and is refused; the
    limit says which it used."""
    y, signal, masks, _ = rows
    champion = _metrics(y, signal, masks)
    worse = {**champion, "new_card_pr_auc": champion["new_card_pr_auc"] - 0.05}

    def verdict_with(frauds: int) -> tuple[bool, str]:
        verdict = gate({**champion, "new_card_frauds": frauds}, worse)
        check = next(c for c in verdict["checks"] if c["check"] == "new_card_pr_auc")
        return check["passed"], check["limit"]

    passed, limit = verdict_with(15)
    assert passed and "standard errors over 15 frauds" in limit
    passed, limit = verdict_with(2_000)
    assert not passed and limit == f">= champion - {GateLimits().slice_pr_auc_loss}"


def test_the_fine_tuned_challenger_stays_unless_another_leads_beyond_the_noise():
    def candidates(**valid):
        return {name: {"valid_pr_auc": ap} for name, ap in valid.items()}

    # 0.05 ahead over 60 frauds: within 1.645 standard errors (about 0.106).
    chosen, why = choose(candidates(plain=0.44, distilled=0.46, fine_tuned=0.41), 60, 1.645)
    assert chosen == "fine_tuned" and "within the noise of 60 frauds" in why
    # The same lead over 2,000 frauds is beyond it (about 0.018): the evidence wins.
    chosen, why = choose(candidates(plain=0.44, distilled=0.46, fine_tuned=0.41), 2000, 1.645)
    assert chosen == "distilled" and "beyond" in why
    # Best anyway, or no fine-tuned candidate (a champion without weights): the best.
    assert choose(candidates(distilled=0.4, fine_tuned=0.5), 60, 1.645)[0] == "fine_tuned"
    assert choose(candidates(plain=0.44, distilled=0.46), 60, 1.645)[0] == "distilled"
