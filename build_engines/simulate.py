"""A seeded payment-transaction simulator of an open world, with labelled fraud scenarios.

In the spirit of the simulator of the Fraud Detection Handbook (Le Borgne et al.): customers
live at a location and hold one or two cards, terminals have a location and a merchant
category, each card makes a Poisson number of purchases a day at open terminals near its
customer. The world is open, as real traffic is:

* merchants onboard every day (new terminals) and some close;
* new customers arrive with new cards, and cards are replaced (the old one closes, the new
  one carries the customer's habits under a new id);
* some cards go dormant for weeks and come back.

Seven fraud scenarios are injected:

1. ``large_amount``: a genuine-looking purchase with a very large amount.
2. ``compromised_terminal``: every transaction at a compromised terminal is fraud for
   ``compromised_terminal_days`` days.
3. ``account_takeover``: a fraudster uses a card for a few days, at terminals far from the
   customer, with amounts several times the customer's usual.
4. ``card_testing``: a burst of tiny amounts within minutes at online merchants, then one or
   a few large purchases.
5. ``fraudulent_merchant``: a merchant onboards, charges cards from anywhere card-not-present
   for a few days, and disappears; no genuine customer ever buys there.
6. ``fresh_card_testing``: card testing on cards issued in the last days, before (or
   instead of) their owner's first purchase.
7. ``dormant_takeover``: a card that has been dormant for weeks wakes up in a fraudster's
   hands.

Everything is vectorised with numpy; the same seed gives the same parquet files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from python_backend.fraud.features import MERCHANT_CATEGORIES, MS_PER_DAY, MS_PER_SECOND

SCENARIOS = (
    "legit",
    "large_amount",
    "compromised_terminal",
    "account_takeover",
    "card_testing",
    "fraudulent_merchant",
    "fresh_card_testing",
    "dormant_takeover",
)
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
#: Categories a fraudulent merchant registers under (card-not-present goods).
FRAUD_MERCHANT_CATEGORIES = ("online_retail", "digital_goods", "electronics")
#: 2026-01-05, a Monday, midnight UTC.
DEFAULT_START_MS = 1_767_571_200_000
#: ``opened_day`` / ``issued_day`` of what exists before the first simulated day.
BEFORE_START = -1
#: ``closed_day`` of what is still open at the end.
NEVER = 1 << 30


@dataclass(frozen=True)
class SimulationConfig:
    """Size, churn and fraud rates of a simulated data set."""

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
    # The open world: merchants and cards that come, go, sleep and return.
    new_terminals_per_day_per_1k: float = 5.0
    terminal_closures_per_day_per_1k: float = 1.0
    new_customers_per_day_per_1k: float = 3.0
    card_replacements_per_day_per_1k_cards: float = 1.5
    #: Share of cards that go dormant once, for ``dormant_days`` (low, high) days.
    dormant_share: float = 0.2
    dormant_days: tuple[int, int] = (30, 75)
    fraud_merchants_per_day_per_1k_terminals: float = 0.05
    fraud_merchant_days: int = 4
    #: Chance that a card issued in the last ``fresh_card_days`` days is tested on a day.
    fresh_card_test_daily_rate: float = 0.01
    fresh_card_days: int = 3
    #: Share of account takeovers that hit a card in the middle of a dormant period.
    dormant_takeover_share: float = 0.15

    @classmethod
    def scale(cls, name: str, seed: int = 7) -> SimulationConfig:
        """Named sizes: ``tiny`` for unit tests, ``small`` for integration tests,
        ``default`` (about 1.2 million transactions) for ``make engines``."""
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
    #: One row per card: its customer, when it was issued and closed, its dormant period.
    cards: pd.DataFrame | None = None

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.transactions.to_parquet(folder / "transactions.parquet", index=False)
        self.customers.to_parquet(folder / "customers.parquet", index=False)
        self.terminals.to_parquet(folder / "terminals.parquet", index=False)
        if self.cards is not None:
            self.cards.to_parquet(folder / "cards.parquet", index=False)

    @classmethod
    def read(cls, folder: Path, config: SimulationConfig) -> SimulatedData:
        cards = folder / "cards.parquet"
        return cls(
            transactions=pd.read_parquet(folder / "transactions.parquet"),
            customers=pd.read_parquet(folder / "customers.parquet"),
            terminals=pd.read_parquet(folder / "terminals.parquet"),
            config=config,
            cards=pd.read_parquet(cards) if cards.exists() else None,
        )


def _per_day(rng: np.random.Generator, rate_per_1k: float, size: int, n_days: int) -> np.ndarray:
    """Poisson counts per day of events that happen ``rate_per_1k`` times a day per 1,000."""
    return rng.poisson(rate_per_1k * size / 1_000, n_days)


def _category_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    # Category mix: everyday merchants are common, jewelry and travel rare.
    weights = np.array([14, 12, 8, 3, 4, 7, 10, 6, 6, 6, 5, 1], dtype=float)
    return rng.choice(len(MERCHANT_CATEGORIES), size=n, p=weights / weights.sum()) + 1


def _terminals(cfg: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Terminals open at the start, merchants that onboard later, closures, and the
    fraudulent merchants (open for ``fraud_merchant_days`` days, never chosen by genuine
    customers)."""
    n0 = cfg.n_terminals
    new_per_day = _per_day(rng, cfg.new_terminals_per_day_per_1k, n0, cfg.n_days)
    fraud_per_day = _per_day(rng, cfg.fraud_merchants_per_day_per_1k_terminals, n0, cfg.n_days)
    n_new, n_fraud = int(new_per_day.sum()), int(fraud_per_day.sum())
    n = n0 + n_new + n_fraud
    opened = np.concatenate(
        [
            np.full(n0, BEFORE_START),
            np.repeat(np.arange(cfg.n_days), new_per_day),
            np.repeat(np.arange(cfg.n_days), fraud_per_day),
        ]
    ).astype(np.int64)
    category = _category_codes(rng, n)
    fraud_codes = [MERCHANT_CATEGORIES.index(c) + 1 for c in FRAUD_MERCHANT_CATEGORIES]
    category[n0 + n_new :] = rng.choice(fraud_codes, size=n_fraud)
    closed = np.full(n, NEVER, dtype=np.int64)
    # Closures: a share of the genuine terminals closes on a random day after opening.
    closes = rng.random(n0 + n_new) < cfg.terminal_closures_per_day_per_1k / 1_000 * cfg.n_days
    close_day = opened[: n0 + n_new] + 1 + rng.integers(0, cfg.n_days, n0 + n_new)
    closed[: n0 + n_new] = np.where(closes & (close_day < cfg.n_days), close_day, NEVER)
    closed[n0 + n_new :] = opened[n0 + n_new :] + cfg.fraud_merchant_days
    return pd.DataFrame(
        {
            "terminal_id": np.arange(1, n + 1, dtype=np.int64),
            "x": rng.uniform(0, 100, n),
            "y": rng.uniform(0, 100, n),
            "terminal_category": category.astype(np.int64),  # 1-based; 0 = unknown
            "opened_day": opened,
            "closed_day": closed,
            "fraudulent": np.arange(n) >= n0 + n_new,
        }
    )


def _customers(cfg: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Customers at the start and those who join later (``joined_day``)."""
    joined = np.concatenate(
        [
            np.full(cfg.n_customers, BEFORE_START),
            np.repeat(
                np.arange(cfg.n_days),
                _per_day(rng, cfg.new_customers_per_day_per_1k, cfg.n_customers, cfg.n_days),
            ),
        ]
    ).astype(np.int64)
    n = joined.size
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "x": rng.uniform(0, 100, n),
            "y": rng.uniform(0, 100, n),
            "mean_amount": rng.uniform(5, 100, n),
            "tx_per_day": rng.uniform(0, 4, n),
            "n_cards": rng.choice([1, 2], size=n, p=[0.7, 0.3]),
            "joined_day": joined,
        }
    )


def _cards(cfg: SimulationConfig, rng: np.random.Generator, customers: pd.DataFrame):
    """One row per card: issued when its customer joins, replaced now and then (the old
    card closes the day the new one is issued), dormant once for some."""
    n_cards = customers["n_cards"].to_numpy()
    customer = np.repeat(np.arange(len(customers)), n_cards)
    issued = customers["joined_day"].to_numpy()[customer]
    slot = np.concatenate([np.arange(k) for k in n_cards])  # which of the customer's cards
    closed = np.full(customer.size, NEVER, dtype=np.int64)
    # Replacements, day by day: the replaced card closes, a new id takes its place.
    replaced_per_day = _per_day(
        rng, cfg.card_replacements_per_day_per_1k_cards, customer.size, cfg.n_days
    )
    new_customer, new_issued, new_slot = [], [], []
    for day, count in enumerate(replaced_per_day):
        open_now = np.flatnonzero((issued < day) & (closed == NEVER))
        if count == 0 or open_now.size == 0:
            continue
        old = rng.choice(open_now, size=min(int(count), open_now.size), replace=False)
        closed[old] = day
        # Appended rows are not replaceable again in this loop: their ids come after.
        new_customer.append(customer[old])
        new_issued.append(np.full(old.size, day))
        new_slot.append(slot[old])
    if new_customer:
        customer = np.concatenate([customer, *new_customer])
        issued = np.concatenate([issued, *new_issued])
        slot = np.concatenate([slot, *new_slot])
        closed = np.concatenate([closed, np.full(customer.size - closed.size, NEVER)])
    n = customer.size
    dormant = rng.random(n) < cfg.dormant_share
    low, high = cfg.dormant_days
    length = rng.integers(low, high + 1, n)
    start = np.maximum(issued, 0) + 5 + rng.integers(0, max(cfg.n_days - 10, 1), n)
    return pd.DataFrame(
        {
            "card_id": np.arange(1, n + 1, dtype=np.int64),
            "customer_id": customer + 1,
            "slot": slot,
            "issued_day": issued.astype(np.int64),
            "closed_day": closed.astype(np.int64),
            "dormant_from": np.where(dormant, start, NEVER).astype(np.int64),
            "dormant_until": np.where(dormant, start + length, NEVER).astype(np.int64),
        }
    )


def _active(cards: pd.DataFrame, n_days: int) -> np.ndarray:
    """``[cards, days]``: whether the card's owner uses it that day."""
    day = np.arange(n_days)[None, :]
    c = {k: cards[k].to_numpy()[:, None] for k in ("issued_day", "closed_day")}
    dormant = (day >= cards["dormant_from"].to_numpy()[:, None]) & (
        day < cards["dormant_until"].to_numpy()[:, None]
    )
    return (day >= c["issued_day"]) & (day < c["closed_day"]) & ~dormant


def _nearby_terminals(
    customers: pd.DataFrame, terminals: pd.DataFrame, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of genuine terminals within ``radius`` of each customer (at least the
    nearest three, so a closure never leaves a customer with nowhere to buy)."""
    genuine = np.flatnonzero(~terminals["fraudulent"].to_numpy())
    tx, ty = terminals["x"].to_numpy()[genuine], terminals["y"].to_numpy()[genuine]
    flat, offsets = [], [0]
    for cx, cy in zip(customers["x"].to_numpy(), customers["y"].to_numpy(), strict=True):
        dist2 = (tx - cx) ** 2 + (ty - cy) ** 2
        near = np.flatnonzero(dist2 <= radius**2)
        if near.size < 3:
            near = np.argsort(dist2)[:3]
        flat.append(genuine[near])
        offsets.append(offsets[-1] + near.size)
    return np.concatenate(flat), np.asarray(offsets)


def _open_on(terminals: pd.DataFrame, index: np.ndarray, day: np.ndarray) -> np.ndarray:
    opened = terminals["opened_day"].to_numpy()[index]
    closed = terminals["closed_day"].to_numpy()[index]
    return (opened <= day) & (day < closed)


def _time_of_day_ms(rng: np.random.Generator, n: int) -> np.ndarray:
    """Purchase times concentrated around midday, as in the Handbook."""
    seconds = rng.normal(86_400 / 2, 20_000, n)
    return (np.mod(seconds, 86_400) * MS_PER_SECOND).astype(np.int64)


def _frame(cfg, day, time_ms, customer, card, terminal, amount, scenario) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts_ms": cfg.start_ms + np.asarray(day, dtype=np.int64) * MS_PER_DAY + time_ms,
            "customer_id": np.asarray(customer, dtype=np.int64),
            "card_id": np.asarray(card, dtype=np.int64),
            "terminal_id": np.asarray(terminal, dtype=np.int64),
            "amount": np.asarray(amount, dtype=np.float64),
            "fraud_scenario": np.full(len(card), scenario, dtype=np.int8)
            if np.isscalar(scenario)
            else scenario,
        }
    )


def simulate(cfg: SimulationConfig) -> SimulatedData:
    """Generate customers, cards, terminals and labelled transactions."""
    rng = np.random.default_rng(cfg.seed)
    terminals = _terminals(cfg, rng)
    customers = _customers(cfg, rng)
    cards = _cards(cfg, rng, customers)
    near_flat, near_offsets = _nearby_terminals(customers, terminals, cfg.radius)
    card_customer = cards["customer_id"].to_numpy() - 1
    card_ids = cards["card_id"].to_numpy()
    per_customer = customers["n_cards"].to_numpy()[card_customer]
    tx_rate = customers["tx_per_day"].to_numpy()[card_customer] / per_customer

    # Genuine transactions: a Poisson count per card and active day.
    active = _active(cards, cfg.n_days)
    counts = rng.poisson(tx_rate[:, None] * active).ravel()
    card_index = np.repeat(np.repeat(np.arange(len(cards)), cfg.n_days), counts)
    day = np.repeat(np.tile(np.arange(cfg.n_days), len(cards)), counts)
    cust = card_customer[card_index]
    n_near = np.diff(near_offsets)[cust]
    # A random nearby terminal open that day: redraw a few times where the pick is closed.
    terminal_index = np.zeros(card_index.size, dtype=np.int64)
    todo = np.arange(card_index.size)
    for _ in range(6):
        pick = near_offsets[cust[todo]] + (rng.random(todo.size) * n_near[todo]).astype(np.int64)
        candidate = near_flat[pick]
        ok = _open_on(terminals, candidate, day[todo])
        terminal_index[todo[ok]] = candidate[ok]
        todo = todo[~ok]
    keep = np.ones(card_index.size, dtype=bool)
    keep[todo] = False  # nowhere open nearby today: the purchase does not happen
    card_index, day, cust, terminal_index = (
        card_index[keep],
        day[keep],
        cust[keep],
        terminal_index[keep],
    )
    n_legit = card_index.size
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
    n_compromised = _per_day(
        rng, cfg.compromised_terminals_per_day_per_1k_terminals, cfg.n_terminals, cfg.n_days
    )
    genuine_terminals = np.flatnonzero(~terminals["fraudulent"].to_numpy())
    for d in range(cfg.n_days):
        open_today = genuine_terminals[
            _open_on(terminals, genuine_terminals, np.full(genuine_terminals.size, d))
        ]
        for t in rng.choice(open_today, size=min(n_compromised[d], open_today.size), replace=False):
            hit = (
                (terminal_index == t)
                & (day >= d)
                & (day < d + cfg.compromised_terminal_days)
                & (scenario == 0)
            )
            scenario[hit] = 2

    terminal_ids = terminals["terminal_id"].to_numpy()
    frames = [
        _frame(
            cfg,
            day,
            _time_of_day_ms(rng, n_legit),
            cust + 1,
            card_ids[card_index],
            terminal_ids[terminal_index],
            amount,
            scenario,
        ),
        _account_takeovers(cfg, rng, customers, terminals, cards),
        _card_tests(cfg, rng, terminals, cards),
        _fraudulent_merchants(cfg, rng, customers, terminals, cards, active),
    ]
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
    customers = customers.merge(
        cards.groupby("customer_id")["card_id"].apply(list).rename("card_ids"),
        left_on="customer_id",
        right_index=True,
    )
    return SimulatedData(tx, customers, terminals, cfg, cards)


def _open_terminals(terminals: pd.DataFrame, day: int, categories=None) -> np.ndarray:
    """Indices of the genuine terminals open on ``day`` (in ``categories`` if given)."""
    ok = ~terminals["fraudulent"].to_numpy() & _open_on(
        terminals, np.arange(len(terminals)), np.full(len(terminals), day)
    )
    if categories is not None:
        ok &= np.isin(terminals["terminal_category"].to_numpy(), categories)
    return np.flatnonzero(ok)


def _account_takeovers(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    customers: pd.DataFrame,
    terminals: pd.DataFrame,
    cards: pd.DataFrame,
) -> pd.DataFrame:
    """Scenarios 3 and 7: a taken-over card buys, for some days, far from home and much
    bigger. A share of the victims are cards in the middle of a dormant period."""
    issued, closed = cards["issued_day"].to_numpy(), cards["closed_day"].to_numpy()
    dormant_from = cards["dormant_from"].to_numpy()
    dormant_until = cards["dormant_until"].to_numpy()
    per_day = _per_day(rng, cfg.takeovers_per_day_per_1k_cards, len(cards), cfg.n_days)
    victims, first_days, scenarios = [], [], []
    for d, count in enumerate(per_day):
        usable = (issued <= d) & (closed > d)
        sleeping = np.flatnonzero(usable & (dormant_from + 30 <= d) & (dormant_until > d))
        awake = np.flatnonzero(usable)
        for _ in range(count):
            if sleeping.size and rng.random() < cfg.dormant_takeover_share:
                victims.append(rng.choice(sleeping))
                scenarios.append(7)
            elif awake.size:
                victims.append(rng.choice(awake))
                scenarios.append(3)
            else:
                continue
            first_days.append(d)
    victims = np.asarray(victims, dtype=np.int64)
    # Purchases per victim: a few a day over the takeover.
    n_tx = rng.poisson(2.0 * cfg.takeover_days, victims.size) + 1
    victim = np.repeat(victims, n_tx)
    day = np.repeat(np.asarray(first_days, dtype=np.int64), n_tx) + rng.integers(
        0, cfg.takeover_days, n_tx.sum()
    )
    # Anywhere (mostly terminals new to the card), among those open that day.
    genuine = np.flatnonzero(~terminals["fraudulent"].to_numpy())
    terminal_index = np.full(victim.size, -1, dtype=np.int64)
    todo = np.arange(victim.size)
    while todo.size:
        candidate = genuine[rng.integers(0, genuine.size, todo.size)]
        ok = _open_on(terminals, candidate, day[todo])
        terminal_index[todo[ok]] = candidate[ok]
        todo = todo[~ok]
    n = victim.size
    customer = cards["customer_id"].to_numpy()[victim] - 1
    mean = customers["mean_amount"].to_numpy()[customer]
    return _frame(
        cfg,
        day,
        _time_of_day_ms(rng, n),
        customer + 1,
        cards["card_id"].to_numpy()[victim],
        terminals["terminal_id"].to_numpy()[terminal_index],
        mean * rng.uniform(2.5, 7.0, n),
        np.repeat(np.asarray(scenarios, dtype=np.int8), n_tx),
    )


def _burst(cfg, rng, card_row: int, customer: int, t0: int, online: np.ndarray, scenario: int):
    """Tiny amounts within minutes at online merchants, then one to three large ones."""
    n_small, n_large = int(rng.integers(3, 9)), int(rng.integers(1, 4))
    gaps = rng.uniform(15, 120, n_small + n_large) * MS_PER_SECOND
    gaps[n_small:] = rng.uniform(60, 20 * 60, n_large) * MS_PER_SECOND
    times = t0 + np.cumsum(gaps).astype(np.int64)
    amounts = np.concatenate([rng.uniform(0.1, 2.0, n_small), rng.uniform(150, 1_200, n_large)])
    n = n_small + n_large
    return pd.DataFrame(
        {
            "ts_ms": times,
            "customer_id": np.full(n, customer, dtype=np.int64),
            "card_id": np.full(n, card_row + 1, dtype=np.int64),
            "terminal_id": rng.choice(online, size=n),
            "amount": amounts,
            "fraud_scenario": np.full(n, scenario, dtype=np.int8),
        }
    )


def _card_tests(
    cfg: SimulationConfig, rng: np.random.Generator, terminals: pd.DataFrame, cards: pd.DataFrame
) -> pd.DataFrame:
    """Scenarios 4 and 6: card testing on established cards, and on cards issued in the
    last ``fresh_card_days`` days (fresh card numbers are tested before their owner buys)."""
    issued, closed = cards["issued_day"].to_numpy(), cards["closed_day"].to_numpy()
    customer = cards["customer_id"].to_numpy()
    online_codes = [MERCHANT_CATEGORIES.index(c) + 1 for c in ONLINE_CATEGORIES]
    terminal_ids = terminals["terminal_id"].to_numpy()
    per_day = _per_day(rng, cfg.card_tests_per_day_per_1k_cards, len(cards), cfg.n_days)
    rows = []
    for d in range(cfg.n_days):
        # Open today and tomorrow: a burst that starts late runs past midnight.
        online = terminal_ids[
            np.intersect1d(
                _open_terminals(terminals, d, online_codes),
                _open_terminals(terminals, d + 1, online_codes),
            )
        ]
        if online.size == 0:
            continue
        usable = np.flatnonzero((issued <= d) & (closed > d))
        fresh = np.flatnonzero((issued > d - cfg.fresh_card_days) & (issued <= d) & (issued >= 0))
        fresh = fresh[rng.random(fresh.size) < cfg.fresh_card_test_daily_rate]
        tested = [(v, 4) for v in rng.choice(usable, size=min(per_day[d], usable.size))]
        tested += [(v, 6) for v in fresh]
        for victim, scenario in tested:
            start = cfg.start_ms + d * MS_PER_DAY + int(_time_of_day_ms(rng, 1)[0])
            rows.append(
                _burst(cfg, rng, int(victim), int(customer[victim]), start, online, scenario)
            )
    if not rows:
        return _frame(cfg, [], np.zeros(0, dtype=np.int64), [], [], [], [], 4)
    return pd.concat(rows, ignore_index=True)


def _fraudulent_merchants(
    cfg: SimulationConfig,
    rng: np.random.Generator,
    customers: pd.DataFrame,
    terminals: pd.DataFrame,
    cards: pd.DataFrame,
    active: np.ndarray,
) -> pd.DataFrame:
    """Scenario 5: each fraudulent merchant charges eight or so cards a day, from
    anywhere, card-not-present, at any hour, from the day it onboards until it vanishes."""
    frames = []
    merchants = terminals[terminals["fraudulent"].to_numpy()]
    mean_amount = customers["mean_amount"].to_numpy()
    for terminal_id, opened, closed in merchants[
        ["terminal_id", "opened_day", "closed_day"]
    ].itertuples(index=False):
        for d in range(int(opened), min(int(closed), cfg.n_days)):
            users = np.flatnonzero(active[:, d])
            n = min(int(rng.poisson(8)) + 1, users.size)
            victim = rng.choice(users, size=n, replace=False)
            customer = cards["customer_id"].to_numpy()[victim]
            frames.append(
                _frame(
                    cfg,
                    np.full(n, d),
                    rng.integers(0, MS_PER_DAY, n),
                    customer,
                    cards["card_id"].to_numpy()[victim],
                    np.full(n, terminal_id),
                    mean_amount[customer - 1] * rng.uniform(1.5, 4.0, n) + rng.uniform(10, 80, n),
                    5,
                )
            )
    if not frames:
        return _frame(cfg, [], np.zeros(0, dtype=np.int64), [], [], [], [], 5)
    return pd.concat(frames, ignore_index=True)


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
        "open_world": open_world(data),
    }


def open_world(data: SimulatedData) -> dict:
    """How open the world is: what appeared, closed or slept during the period."""
    terminals, cards = data.terminals, data.cards
    if cards is None or "opened_day" not in terminals:
        return {}
    genuine = ~terminals["fraudulent"].to_numpy()
    return {
        "terminals_onboarded": int(((terminals["opened_day"] >= 0) & genuine).sum()),
        "terminals_closed": int(((terminals["closed_day"] < data.config.n_days) & genuine).sum()),
        "fraudulent_merchants": int((~genuine).sum()),
        "cards_issued": int((cards["issued_day"] >= 0).sum()),
        "cards_replaced": int((cards["closed_day"] < data.config.n_days).sum()),
        "cards_dormant": int((cards["dormant_from"] < data.config.n_days).sum()),
    }
