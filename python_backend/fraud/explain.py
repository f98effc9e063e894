"""Why the heavy model scored a transaction as it did, in an analyst's words.

The heavy score is ``sigmoid(a * logit(deep) + b * logit(trees) + c)``
(``python_backend.fraud.heavy_model``), so its log-odds split exactly into the two models'
shares, and each is attributed with the tool this field uses for it:

- the trees: TreeSHAP, exact, from LightGBM itself (``pred_contrib``), per tabular and
  categorical feature;
- the deep model: Captum's Integrated Gradients on its logit, per tabular feature and per
  position of the last-five sequence and of the card's and the terminal's histories,
  against a baseline of the training means (tabular) and empty histories.

Both are in log-odds, weighted by the blend (``a``, ``b``). A history is also summed as a
whole (what the card's, the terminal's last transactions say together), described by what
it holds ("9 transactions at this terminal in the last hour, 7 by other cards"). The top
contributors by size become the case's attributions, each in words with its value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from python_backend.fraud.features import (
    CARD_DAILY,
    CATEGORICAL_COLUMNS,
    MERCHANT_CATEGORIES,
    RECENT_DERIVED,
    TABULAR_NAMES,
    TERMINAL_DAILY,
)
from python_backend.fraud.heavy_model import HeavyModel, tree_features
from python_backend.fraud.history import HeavyInputs
from python_backend.fraud.served import tabular_values

#: Integrated Gradients' steps: attributions to within a few percent of 50 steps here, at a
#: sixth of the cost (measured in ``python -m perf analysis``).
IG_STEPS = 8
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _group_of(name: str) -> str:
    if name in CARD_DAILY.names or name.startswith("amount_to_card"):
        return "card_daily"
    if name in TERMINAL_DAILY.names:
        return "terminal_daily"
    if name in RECENT_DERIVED:
        return "velocity"
    if name.endswith(("_known", "_available", "_has_recent")):
        return "presence"
    return "transaction"


#: Each tabular column's feature group (as the feature-group report names them).
GROUPS = {name: _group_of(name) for name in TABULAR_NAMES}


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _ago(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} hours"
    return f"{hours / 24:.0f} days"


def tabular_words(name: str, value: float) -> str:
    """One tabular feature and its value, as an analyst says it."""
    if name == "amount":
        return f"an amount of {_money(value)}"
    if name.startswith(("card_tx_count_", "terminal_tx_count_")):
        who, window = ("this card", name.rsplit("_", 1)[1])
        if name.startswith("terminal"):
            who = "this terminal"
        window = window.replace("m", " minutes").replace("h", " hour").replace("d", " days")
        return f"{value:.0f} transactions on {who} in the last {window}"
    if name.startswith("card_amount_sum_"):
        return f"{_money(value)} spent on this card in the last {name.rsplit('_', 1)[1]}"
    if name.startswith("card_amount_mean_"):
        return f"this card's average purchase over {name.rsplit('_', 1)[1]}: {_money(value)}"
    if name.startswith("amount_to_card_mean_"):
        return f"{value:.1f}x this card's average over {name.rsplit('_', 1)[1]}"
    if name.startswith("terminal_fraud_rate_"):
        return (
            f"{value:.1%} of this terminal's transactions reported as fraud "
            f"({name.rsplit('_', 1)[1]}, a week behind)"
        )
    if name == "card_small_amount_count_1h":
        return f"{value:.0f} small test-like amounts on this card in the last hour"
    if name == "seconds_since_last_tx":
        return f"{_ago(value / 3600)} since this card's previous transaction"
    if name == "terminal_seen_recently":
        return "a terminal this card used recently" if value >= 0.5 else "a terminal new to it"
    if name == "card_days_since_first_tx":
        return f"a card first seen {value:.0f} days ago (capped at 30)"
    if name == "card_days_since_last_tx":
        return f"{value:.0f} days since the card's last transaction before today"
    if name == "terminal_days_since_first_tx":
        return f"a terminal first seen {value:.0f} days ago"
    if name in ("is_night", "is_weekend"):
        what = "at night" if name == "is_night" else "on a weekend"
        return what if value >= 0.5 else f"not {what}"
    if name.endswith("_known"):
        entity = name.split("_")[0]
        return f"a {entity} the store knows" if value >= 0.5 else f"a {entity} never seen before"
    if name.endswith("_available") or name == "card_has_recent":
        return f"{name.replace('_', ' ')}: {'yes' if value >= 0.5 else 'no'}"
    return f"{name.replace('_', ' ')}: {value:.3g}"


def categorical_words(name: str, value: int) -> str:
    if name == "terminal_category":
        known = 0 < value <= len(MERCHANT_CATEGORIES)
        return (
            f"a {MERCHANT_CATEGORIES[value - 1]} merchant"
            if known
            else "a merchant of no known category"
        )
    if name == "hour":
        return f"at {value:02d}:00 UTC"
    return f"on a {WEEKDAYS[value % 7]}"


def _history_words(history: np.ndarray, entity: str) -> str:
    """What one history ``[L, C]`` holds, summed up: how many in the last hour and day, and
    how many of them with another terminal (card) or card (terminal)."""
    valid = history[:, -1] > 0
    hours = np.expm1(history[valid, 1])
    other = history[valid, 2] < 0.5
    in_hour, in_day = int((hours <= 1).sum()), int((hours <= 24).sum())
    if entity == "card":
        where = "at other terminals"
        return (
            f"{int(valid.sum())} earlier transactions on this card: {in_hour} in the last hour, "
            f"{in_day} in the last day, {int(other[hours <= 24].sum())} of those {where}"
        )
    return (
        f"{in_hour} transactions at this terminal in the last hour, "
        f"{int(other[hours <= 1].sum())} of them by other cards ({in_day} in the last day)"
    )


def _position_words(row: np.ndarray, kind: str) -> str:
    amount, hours = float(np.expm1(row[0])), float(np.expm1(row[1]))
    if kind == "sequence":  # the last-five sequence's second channel is log seconds ago
        hours /= 3600.0
    same = row[2] >= 0.5
    if kind == "terminal_history":
        by = "by this card" if same else "by another card"
        return f"a {_money(amount)} purchase at this terminal {_ago(hours)} before, {by}"
    at = "at this terminal" if same else "at another terminal"
    return f"a {_money(amount)} purchase on this card {_ago(hours)} before, {at}"


@dataclass
class Explainer:
    """Explains rows of :class:`HeavyInputs` for one loaded heavy model: the trees'
    TreeSHAP, what each history as a whole adds (the deep model with that history emptied:
    two more forward passes), and Integrated Gradients of the deep model per tabular feature
    and per past transaction: with each history's mask held as it is (a slot is a
    transaction or it is not; a path through half-present transactions means nothing) and
    its content moved from the row's average transaction to the real ones, so a position's
    share says how far that transaction stands out from the rest of its history."""

    model: HeavyModel
    top: int = 5
    steps: int = IG_STEPS

    def __post_init__(self) -> None:
        import torch
        from captum.attr import IntegratedGradients

        from python_backend.fraud import heavy_net

        torch.set_num_threads(1)  # off the hot path: one core at most, at the lowest priority
        self.net = heavy_net.load(self.model.folder)
        self.ig = IntegratedGradients(self._logit)
        #: Seconds spent and rows explained (the consumer reports them).
        self.seconds, self.rows = 0.0, 0

    def _logit(
        self, tabular, sequence, card, terminal, categorical, seq_mask, card_mask, terminal_mask
    ):
        return self.net.logits(
            tabular,
            torch_cat(sequence, seq_mask),
            categorical,
            torch_cat(card, card_mask),
            torch_cat(terminal, terminal_mask),
        )[:, 0]

    def deep(self, inputs: HeavyInputs) -> tuple[np.ndarray, ...]:
        """Integrated Gradients of the deep model's logit: tabular ``[B, T]``, and per
        position of the sequence ``[B, 5]``, the card's ``[B, 64]`` and the terminal's
        history ``[B, 32]``."""
        import torch

        histories = (inputs.sequence, inputs.card_history, inputs.terminal_history)
        # Copies: logged inputs are read-only views of their bytes, torch wants its own.
        contents = tuple(torch.from_numpy(np.array(h[..., :-1])) for h in histories)
        masks = tuple(torch.from_numpy(np.array(h[..., -1:])) for h in histories)
        tabular = torch.from_numpy(np.array(inputs.tabular))
        base = (
            self.net.trunk.tab_mean.expand_as(tabular).contiguous(),
            *(_average_transaction(c, m) for c, m in zip(contents, masks, strict=True)),
        )
        attributions = self.ig.attribute(
            (tabular, *contents),
            baselines=base,
            additional_forward_args=(torch.from_numpy(np.array(inputs.categorical)), *masks),
            n_steps=self.steps,
            method="gausslegendre",
        )
        tab, seq, card, terminal = (a.detach().numpy() for a in attributions)
        return tab, seq.sum(-1), card.sum(-1), terminal.sum(-1)

    def without_histories(self, inputs: HeavyInputs) -> tuple[np.ndarray, np.ndarray]:
        """What the card's and the terminal's histories add to the deep model's logit, each
        as a whole: the logit minus the logit with that history emptied."""
        from python_backend.fraud.heavy_model import logit

        full = logit(self.model.deep.predict(inputs))
        shares = []
        for field in ("card_history", "terminal_history"):
            empty = HeavyInputs(**{**vars(inputs), field: np.zeros_like(getattr(inputs, field))})
            shares.append(full - logit(self.model.deep.predict(empty)))
        return shares[0], shares[1]

    def trees(self, inputs: HeavyInputs) -> np.ndarray:
        """TreeSHAP of the trees, ``[B, T + categorical]`` (the bias column dropped)."""
        contrib = self.model.trees.predict(tree_features(inputs), pred_contrib=True)
        return np.asarray(contrib)[:, :-1]

    def explain(self, inputs: HeavyInputs) -> list[list[dict]]:
        """Each row's top contributors (log-odds of the heavy score, largest first). It
        costs some 8 ms a row on one core (TreeSHAP most of it): the consumer explains the
        cases an analyst opens first (the review queue, disagreements) and leaves the rest to
        be explained when opened (:func:`explain_case`)."""
        started = time.perf_counter()
        n = len(inputs)
        blend = self.model.blend
        trees = self.trees(inputs)
        card_whole, terminal_whole = self.without_histories(inputs)
        n_tab = len(TABULAR_NAMES)
        tab_deep, seq, card, terminal = self.deep(inputs)
        tabular = blend.trees * trees[:, :n_tab] + blend.deep * tab_deep
        categorical = blend.trees * trees[:, n_tab:]
        positions = {
            "sequence": blend.deep * seq,
            "card_history": blend.deep * card,
            "terminal_history": blend.deep * terminal,
        }
        wholes = {
            "card_history": blend.deep * card_whole,
            "terminal_history": blend.deep * terminal_whole,
        }
        values = tabular_values(inputs)
        out = []
        for i in range(n):
            items = [
                {
                    "feature": name,
                    "group": GROUPS[name],
                    "position": None,
                    "value": round(float(values[name][i]), 4),
                    "contribution": float(tabular[i, j]),
                    "words": tabular_words(name, float(values[name][i])),
                }
                for j, name in enumerate(TABULAR_NAMES)
            ]
            items += [
                {
                    "feature": name,
                    "group": "transaction" if name != "terminal_category" else "terminal_daily",
                    "position": None,
                    "value": int(inputs.categorical[i, j]),
                    "contribution": float(categorical[i, j]),
                    "words": categorical_words(name, int(inputs.categorical[i, j])),
                }
                for j, (name, _) in enumerate(CATEGORICAL_COLUMNS)
            ]
            items += self._history_items(inputs, i, wholes, positions)
            items.sort(key=lambda item: -abs(item["contribution"]))
            out.append(
                [
                    {**item, "contribution": round(item["contribution"], 4)}
                    for item in items[: self.top]
                ]
            )
        self.seconds += time.perf_counter() - started
        self.rows += n
        return out

    def _history_items(self, inputs, i, wholes, positions) -> list[dict]:
        items = []
        for kind, history in (
            ("sequence", inputs.sequence),
            ("card_history", inputs.card_history),
            ("terminal_history", inputs.terminal_history),
        ):
            valid = history[i, :, -1] > 0
            if not valid.any():
                continue
            if kind in wholes:  # the history as a whole, summed up
                entity = "card" if kind == "card_history" else "terminal"
                items.append(
                    {
                        "feature": kind,
                        "group": kind,
                        "position": None,
                        "value": int(valid.sum()),
                        "contribution": float(wholes[kind][i]),
                        "words": _history_words(history[i], entity),
                    }
                )
            shares = positions[kind][i]
            # Its single most telling transaction (position 1: the most recent).
            slots = np.flatnonzero(valid)
            best = slots[np.argmax(np.abs(shares[slots]))]
            items.append(
                {
                    "feature": kind,
                    "group": kind,
                    "position": int(history.shape[1] - best),
                    "value": round(float(np.expm1(history[i, best, 0])), 2),
                    "contribution": float(shares[best]),
                    "words": _position_words(history[i, best], kind),
                }
            )
        return items


def torch_cat(content, mask):
    import torch

    return torch.cat([content * mask, mask], dim=-1)


def _average_transaction(content, mask):
    """Each row's history with every present transaction replaced by the row's average one
    (padding stays empty)."""
    count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (content * mask).sum(dim=1, keepdim=True) / count
    return (mean * mask).expand_as(content).contiguous()


def explain_case(record: dict, store, explainer: Explainer) -> list[dict]:
    """The attributions of a case the consumer left to be explained when opened: its logged
    inputs (the record keeps them) with its histories rebuilt from the case store's
    transactions before it (what the consumer's buffers held)."""
    from python_backend.fraud import served
    from python_backend.fraud.history import (
        CARD_HISTORY_LENGTH,
        TERMINAL_HISTORY_LENGTH,
        HistoryBuffers,
    )

    buffers = HistoryBuffers()
    ts = record["ts_ms"]
    earlier = store.history(card_id=record["card_id"], before_ms=ts, limit=CARD_HISTORY_LENGTH)
    earlier += store.history(
        terminal_id=record["terminal_id"], before_ms=ts, limit=TERMINAL_HISTORY_LENGTH
    )
    buffers.add((e.transaction_id, e.card_id, e.terminal_id, e.ts_ms, e.amount) for e in earlier)
    histories = buffers.histories(
        np.array([record["card_id"]]),
        np.array([record["terminal_id"]]),
        np.array([ts]),
        np.array([record["amount"]]),
    )
    inputs = HeavyInputs.of(served.decode([record["inputs"]]), histories)
    return explainer.explain(inputs)[0]
