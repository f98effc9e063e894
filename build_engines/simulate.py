"""A seeded payment-transaction simulator with labelled fraud scenarios.

In the spirit of the simulator of the Fraud Detection Handbook (Le Borgne et al.): customers
live at a location and hold one or two cards, terminals have a location and a merchant
category, each card makes a Poisson number of purchases a day at terminals near its customer.
Four fraud scenarios are injected:

1. ``large_amount``: a genuine-looking purchase with a very large amount.
2. ``compromised_terminal``: every transaction at a compromised terminal is fraud for
   ``compromised_terminal_days`` days.
3. ``account_takeover``: a fraudster uses a card for a few days, at terminals far from the
   customer, with amounts several times the customer's usual.
4. ``card_testing``: a burst of tiny amounts within minutes at online merchants, then one or
   a few large purchases.

Everything is vectorised with numpy; the same seed gives the same parquet files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from python_backend.features import MERCHANT_CATEGORIES, MS_PER_DAY, MS_PER_SECOND

SCENARIOS = ("legit", "large_amount", "compromised_terminal", "account_takeover", "card_testing")
#: Typical spend of each merchant category relative to the customer's mean.
CATEGORY_AMOUNT_FACTOR = {
    "grocery": 0.6,
    "restaurant": 0.8,
    "fuel": 0.9,
    "travel": 3.0,
    "electronics": 2.5,
    "fashion": 1.2,
    "online_retail": 1.0,
    "digital_goods": 0.3,
    "entertainment": 0.7,
    "health": 0.9,
    "utilities": 1.1,
    "jewelry": 4.0,
}
ONLINE_CATEGORIES = ("online_retail", "digital_goods")
#: 2026-01-05, a Monday, midnight UTC.
DEFAULT_START_MS = 1_767_571_200_000


@dataclass(frozen=True)
class SimulationConfig:
    """Size and fraud rates of a simulated data set."""

    n_customers: int = 5_500
    n_terminals: int = 4_000
    n_days: int = 100
    seed: int = 7
    start_ms: int = DEFAULT_START_MS
    #: Customers reach terminals within this radius on a 100 x 100 grid.
    radius: float = 6.0
    large_amount_rate: float = 0.0008
    compromised_terminals_per_day_per_1k_terminals: float = 0.25
    compromised_terminal_days: int = 14
    takeovers_per_day_per_1k_cards: float = 0.5
    takeover_days: int = 5
    card_tests_per_day_per_1k_cards: float = 0.4

    @classmethod
    def scale(cls, name: str, seed: int = 7) -> SimulationConfig:
        """Named sizes: ``tiny`` for unit tests, ``small`` for integration tests,
        ``default`` (about 1.1 million transactions) for ``make engines``."""
        sizes = {
            "tiny": dict(n_customers=300, n_terminals=300, n_days=60),
            "small": dict(n_customers=1_200, n_terminals=1_000, n_days=75),
            "default": dict(),
        }
        if name not in sizes:
            raise ValueError(f"unknown scale {name!r}: choose one of {sorted(sizes)}")
        return cls(seed=seed, **sizes[name])


@dataclass
class SimulatedData:
    transactions: pd.DataFrame
    customers: pd.DataFrame
    terminals: pd.DataFrame
    config: SimulationConfig

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.transactions.to_parquet(folder / "transactions.parquet", index=False)
        self.customers.to_parquet(folder / "customers.parquet", index=False)
        self.terminals.to_parquet(folder / "terminals.parquet", index=False)

    @classmethod
    def read(cls, folder: Path, config: SimulationConfig) -> SimulatedData:
        return cls(
            transactions=pd.read_parquet(folder / "transactions.parquet"),
            customers=pd.read_parquet(folder / "customers.parquet"),
            terminals=pd.read_parquet(folder / "terminals.parquet"),
            config=config,
        )


def _terminals(cfg: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = cfg.n_terminals
    # Category mix: everyday merchants are common, jewelry and travel rare.
    weights = np.array([14, 12, 8, 3, 4, 7, 10, 6, 6, 6, 5, 1], dtype=float)
    category = rng.choice(len(MERCHANT_CATEGORIES), size=n, p=weights / weights.sum())
    return pd.DataFrame(
        {
            "terminal_id": np.arange(1, n + 1, dtype=np.int64),
            "x": rng.uniform(0, 100, n),
            "y": rng.uniform(0, 100, n),
            "terminal_category": (category + 1).astype(np.int64),  # 1-based; 0 = unknown
        }
    )


def _customers(cfg: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = cfg.n_customers
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "x": rng.uniform(0, 100, n),
            "y": rng.uniform(0, 100, n),
            "mean_amount": rng.uniform(5, 100, n),
            "tx_per_day": rng.uniform(0, 4, n),
            "n_cards": rng.choice([1, 2], size=n, p=[0.7, 0.3]),
        }
    )


def _nearby_terminals(
    customers: pd.DataFrame, terminals: pd.DataFrame, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of terminals within ``radius`` of each customer (at least the nearest one)."""
    tx, ty = terminals["x"].to_numpy(), terminals["y"].to_numpy()
    flat, offsets = [], [0]
    for cx, cy in zip(customers["x"].to_numpy(), customers["y"].to_numpy(), strict=True):
        dist2 = (tx - cx) ** 2 + (ty - cy) ** 2
        near = np.flatnonzero(dist2 <= radius**2)
        if near.size == 0:
            near = np.array([int(np.argmin(dist2))])
        flat.append(near)
        offsets.append(offsets[-1] + near.size)
    return np.concatenate(flat), np.asarray(offsets)


def _time_of_day_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Purchase times concentrated around midday, as in the Handbook."""
    seconds = rng.normal(86_400 / 2, 20_000, n)
    return (np.mod(seconds, 86_400) * MS_PER_SECOND).astype(np.int64)


def simulate(cfg: SimulationConfig) -> SimulatedData:
    """Generate customers, terminals and labelled transactions."""
    rng = np.random.default_rng(cfg.seed)
    terminals = _terminals(cfg, rng)
    customers = _customers(cfg, rng)
    near_flat, near_offsets = _nearby_terminals(customers, terminals, cfg.radius)

    # Cards: one row per card, pointing at its customer.
    card_customer = np.repeat(np.arange(cfg.n_customers), customers["n_cards"].to_numpy())
    n_cards = card_customer.size
    card_ids = np.arange(1, n_cards + 1, dtype=np.int64)
    tx_rate = (
        customers["tx_per_day"].to_numpy()[card_customer]
        / customers["n_cards"].to_numpy()[card_customer]
    )

    # Genuine transactions: Poisson count per card and day.
    counts = rng.poisson(np.repeat(tx_rate, cfg.n_days))
    card_index = np.repeat(np.repeat(np.arange(n_cards), cfg.n_days), counts)
    day = np.repeat(np.tile(np.arange(cfg.n_days), n_cards), counts)
    n_legit = card_index.size
    ts = cfg.start_ms + day * MS_PER_DAY + _time_of_day_ms(rng, n_legit)
    cust = card_customer[card_index]
    n_near = np.diff(near_offsets)[cust]
    pick = near_offsets[cust] + (rng.random(n_legit) * n_near).astype(np.int64)
    terminal_index = near_flat[pick]
    category = terminals["terminal_category"].to_numpy()[terminal_index]
    factor = np.array([CATEGORY_AMOUNT_FACTOR[c] for c in MERCHANT_CATEGORIES])[category - 1]
    amount = customers["mean_amount"].to_numpy()[cust] * factor * rng.lognormal(0, 0.5, n_legit)
    scenario = np.zeros(n_legit, dtype=np.int8)

    # Scenario 1: very large amounts on otherwise ordinary purchases.
    large = rng.random(n_legit) < cfg.large_amount_rate
    amount[large] = amount[large] * rng.uniform(6, 15, large.sum()) + rng.uniform(
        300, 1_500, large.sum()
    )
    scenario[large] = 1

    # Scenario 2: compromised terminals; all their transactions for some days are fraud.
    n_compromised = rng.poisson(
        cfg.compromised_terminals_per_day_per_1k_terminals * cfg.n_terminals / 1_000, cfg.n_days
    )
    for d in range(cfg.n_days):
        for t in rng.choice(cfg.n_terminals, size=n_compromised[d], replace=False):
            hit = (
                (terminal_index == t)
                & (day >= d)
                & (day < d + cfg.compromised_terminal_days)
                & (scenario == 0)
            )
            scenario[hit] = 2

    frames = [
        pd.DataFrame(
            {
                "ts_ms": ts,
                "customer_id": cust + 1,
                "card_id": card_ids[card_index],
                "terminal_id": terminals["terminal_id"].to_numpy()[terminal_index],
                "amount": amount,
                "fraud_scenario": scenario,
            }
        )
    ]
    frames.append(_account_takeovers(cfg, rng, customers, terminals, card_customer, card_ids))
    frames.append(_card_tests(cfg, rng, terminals, card_customer, card_ids))

    tx = pd.concat(frames, ignore_index=True)
    tx = tx[tx["ts_ms"] < cfg.start_ms + cfg.n_days * MS_PER_DAY]
    tx = tx.sort_values(["ts_ms", "card_id"], kind="stable").reset_index(drop=True)
    tx["terminal_category"] = (
        terminals.set_index("terminal_id").loc[tx["terminal_id"], "terminal_category"].to_numpy()
    )
    tx["amount"] = np.round(np.maximum(tx["amount"].to_numpy(), 0.01), 2).astype(np.float32)
    tx["is_fraud"] = (tx["fraud_scenario"] > 0).astype(np.int8)
    tx.insert(0, "transaction_id", [f"tx-{cfg.seed}-{i:09d}" for i in range(len(tx))])
    tx["day"] = ((tx["ts_ms"] - cfg.start_ms) // MS_PER_DAY).astype(np.int32)
    cards = pd.DataFrame({"card_id": card_ids, "customer_id": card_customer + 1})
    customers = customers.merge(
        cards.groupby("customer_id")["card_id"].apply(list).rename("card_ids"),
        left_on="customer_id",
        right_index=True,
    )
    return SimulatedData(tx, customers, terminals, cfg)


def _account_takeovers(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    customers: pd.DataFrame,
    terminals: pd.DataFrame,
    card_customer: np.ndarray,
    card_ids: np.ndarray,
) -> pd.DataFrame:
    """Scenario 3: a taken-over card buys, for some days, far from home and much bigger."""
    n_cards = card_ids.size
    per_day = rng.poisson(cfg.takeovers_per_day_per_1k_cards * n_cards / 1_000, cfg.n_days)
    victims = rng.integers(0, n_cards, per_day.sum())
    first_day = np.repeat(np.arange(cfg.n_days), per_day)
    # Purchases per victim: a few a day over the takeover.
    n_tx = rng.poisson(2.0 * cfg.takeover_days, victims.size) + 1
    victim = np.repeat(victims, n_tx)
    day = np.repeat(first_day, n_tx) + rng.integers(0, cfg.takeover_days, n_tx.sum())
    n = victim.size
    terminal_index = rng.integers(0, cfg.n_terminals, n)  # anywhere: mostly new terminals
    mean = customers["mean_amount"].to_numpy()[card_customer[victim]]
    return pd.DataFrame(
        {
            "ts_ms": cfg.start_ms + day * MS_PER_DAY + _time_of_day_ms(rng, n),
            "customer_id": card_customer[victim] + 1,
            "card_id": card_ids[victim],
            "terminal_id": terminals["terminal_id"].to_numpy()[terminal_index],
            "amount": mean * rng.uniform(2.5, 7.0, n),
            "fraud_scenario": np.full(n, 3, dtype=np.int8),
        }
    )


def _card_tests(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    terminals: pd.DataFrame,
    card_customer: np.ndarray,
    card_ids: np.ndarray,
) -> pd.DataFrame:
    """Scenario 4: tiny amounts within minutes at online merchants, then large purchases."""
    n_cards = card_ids.size
    per_day = rng.poisson(cfg.card_tests_per_day_per_1k_cards * n_cards / 1_000, cfg.n_days)
    victims = rng.integers(0, n_cards, per_day.sum())
    day = np.repeat(np.arange(cfg.n_days), per_day)
    start = cfg.start_ms + day * MS_PER_DAY + _time_of_day_ms(rng, victims.size)
    online_codes = [MERCHANT_CATEGORIES.index(c) + 1 for c in ONLINE_CATEGORIES]
    online = terminals["terminal_id"].to_numpy()[
        np.isin(terminals["terminal_category"].to_numpy(), online_codes)
    ]
    rows = []
    for victim, t0 in zip(victims, start, strict=True):
        n_small, n_large = int(rng.integers(3, 9)), int(rng.integers(1, 4))
        gaps = rng.uniform(15, 120, n_small + n_large) * MS_PER_SECOND
        gaps[n_small:] = rng.uniform(60, 20 * 60, n_large) * MS_PER_SECOND
        times = t0 + np.cumsum(gaps).astype(np.int64)
        amounts = np.concatenate([rng.uniform(0.1, 2.0, n_small), rng.uniform(150, 1_200, n_large)])
        test_terminals = rng.choice(online, size=n_small + n_large)
        rows.append(
            pd.DataFrame(
                {
                    "ts_ms": times,
                    "customer_id": card_customer[victim] + 1,
                    "card_id": card_ids[victim],
                    "terminal_id": test_terminals,
                    "amount": amounts,
                    "fraud_scenario": np.full(n_small + n_large, 4, dtype=np.int8),
                }
            )
        )
    if not rows:
        return pd.DataFrame(
            columns=["ts_ms", "customer_id", "card_id", "terminal_id", "amount", "fraud_scenario"]
        )
    return pd.concat(rows, ignore_index=True)


def describe(data: SimulatedData) -> dict:
    """Counts a person checks first: rows, fraud share, fraud by scenario."""
    tx = data.transactions
    by_scenario = tx["fraud_scenario"].value_counts().sort_index()
    return {
        "config": asdict(data.config),
        "transactions": len(tx),
        "cards": int(tx["card_id"].nunique()),
        "terminals": int(tx["terminal_id"].nunique()),
        "fraud_rate": float(tx["is_fraud"].mean()),
        "fraud_by_scenario": {SCENARIOS[int(k)]: int(v) for k, v in by_scenario.items()},
    }
