"""Synthetic token markets: each token trades against its own constant-product pool (x * y = k).

Price, liquidity, volume, buys, sells and market cap all come from one pool, so they agree with each other:
price = y / x (quote per token), liquidity = pool value = 2y, volume = quote traded, market cap = price x supply.
Order flow is self-exciting (busy minutes follow busy minutes), its buy share follows a slowly drifting
sentiment, and scheduled events (news, trading bursts, pump-and-dumps, liquidity changes, rug pulls) push it.
Every event is returned with the token as ground truth.

Tokens are simulated in fixed blocks of BLOCK tokens, vectorised across the block with one random generator
per block, so token i depends only on (seed, i, timesteps), never on how many tokens were asked for, and
memory is bounded by one block.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pumpcast.config import DataConfig
from pumpcast.schema import FEATURES, ConfigError, Event, TokenSeries
from pumpcast.store import TokenDataManager, die_with_parent
from pumpcast.timeutil import parse_interval

log = logging.getLogger(__name__)

#: Tokens simulated together; part of the random stream's definition, so changing it changes the data.
BLOCK = 512
#: Swap fee, paid to liquidity providers outside the reserves so that swaps keep k exactly.
FEE = 0.003


@dataclass
class SyntheticToken:
    """One simulated token: raw features (T, 6), its events, and the pool reserves behind them."""

    token_id: int
    features: np.ndarray
    events: list[Event]
    reserves: np.ndarray = field(repr=False)  # (T, 2): token reserve x, quote reserve y after each step


@dataclass
class _Schedule:
    """Per-step drivers of one block, (T, B) each, built from the scheduled events."""

    flow_mult: np.ndarray
    buy_logit: np.ndarray
    liq_change: np.ndarray  # fraction of both reserves added (+) or removed (-) at this step
    dev_dump: np.ndarray  # tokens sold by the developer, as a multiple of the token reserve
    pump_target: np.ndarray  # target log price relative to the pump's reference; NaN outside pumps
    pump_pull: np.ndarray  # how hard flow is pulled to the target (1 = exactly)
    pump_ref: np.ndarray  # True at the step whose opening price is the pump's reference
    events: list[list[Event]]


def _schedule(rng: np.random.Generator, T: int, B: int) -> _Schedule:
    """Draw each token's events and turn them into per-step drivers."""
    s = _Schedule(
        flow_mult=np.ones((T, B)),
        buy_logit=np.zeros((T, B)),
        liq_change=np.zeros((T, B)),
        dev_dump=np.zeros((T, B)),
        pump_target=np.full((T, B), np.nan),
        pump_pull=np.zeros((T, B)),
        pump_ref=np.zeros((T, B), dtype=bool),
        events=[[] for _ in range(B)],
    )
    steps = np.arange(T)
    for b in range(B):
        ev = s.events[b]
        # A rug pull ends a token's life as a market in a tenth of tokens; pumps come before it.
        rug = int(rng.integers(T // 2, T)) if (rng.random() < 0.1 and T > 400) else T
        # Pump-and-dumps: about one per 1,500 steps, at least 300 steps apart.
        n_pumps = int(rng.poisson(T / 1500.0))
        starts: list[int] = []
        for _ in range(n_pumps):
            t0 = int(rng.integers(150, max(151, rug - 200)))
            if all(abs(t0 - u) > 300 for u in starts) and t0 + 200 < rug:
                starts.append(t0)
        for t0 in sorted(starts):
            acc = int(rng.integers(30, 121))
            s.flow_mult[t0 - acc : t0, b] *= 1.5
            s.buy_logit[t0 - acc : t0, b] += 0.3
            gain = 10 ** rng.uniform(np.log10(0.03), np.log10(0.7))
            rise = min(int(rng.exponential(1.2)), 5)
            retrace = rng.uniform(0.6, 1.9)
            tau = rng.uniform(5.0, 30.0)
            length = int(rng.integers(40, 121))
            peak, end = t0 + rise, t0 + rise + length
            g = np.log1p(gain)
            s.pump_ref[t0, b] = True
            s.pump_target[t0 : peak + 1, b] = g * (np.arange(1, rise + 2) / (rise + 1))
            d = np.arange(1, length + 1)
            s.pump_target[peak + 1 : end + 1, b] = g * (1 - retrace * (1 - np.exp(-d / tau)) / (1 - np.exp(-60 / tau)))
            s.pump_pull[t0 : peak + 1, b] = 1.0
            s.pump_pull[peak + 1 : end + 1, b] = 0.5
            surge = rng.uniform(30.0, 300.0)
            s.flow_mult[t0 : peak + 1, b] *= surge
            s.flow_mult[peak + 1 : end + 1, b] *= 1 + 0.2 * surge * np.exp(-d / tau)
            s.buy_logit[t0 : peak + 1, b] += 1.5
            s.buy_logit[peak + 1 : end + 1, b] -= 0.8 * np.exp(-d / tau)
            ev.append(Event("pump_and_dump", t0, peak, end, float(gain)))
        # News: flow shocks of either sign that decay.
        for t0 in np.sort(rng.integers(0, T, size=rng.poisson(T / 1500.0))):
            shock = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1.0)
            half = rng.uniform(5.0, 30.0)
            decay = np.exp(-np.log(2) * (steps[t0:] - t0) / half)
            s.buy_logit[t0:, b] += shock * decay
            s.flow_mult[t0:, b] *= 1 + rng.uniform(1.0, 5.0) * decay
            ev.append(Event("news", int(t0), int(t0), int(min(T - 1, t0 + 3 * half)), float(shock)))
        # Trading bursts: activity jumps without direction.
        for t0 in np.sort(rng.integers(0, T, size=rng.poisson(T / 1000.0))):
            n = int(rng.integers(3, 21))
            mult = rng.uniform(3.0, 15.0)
            s.flow_mult[t0 : t0 + n, b] *= mult
            ev.append(Event("trading_burst", int(t0), int(t0), int(min(T - 1, t0 + n - 1)), float(mult)))
        # Liquidity providers add and withdraw.
        for t0 in np.sort(rng.integers(0, rug, size=rng.poisson(rug / 3000.0))):
            f = rng.uniform(0.2, 1.0)
            s.liq_change[t0, b] += f
            ev.append(Event("liquidity_add", int(t0), int(t0), int(t0), float(f)))
        for t0 in np.sort(rng.integers(0, rug, size=rng.poisson(rug / 3000.0))):
            f = -rng.uniform(0.2, 0.6)
            s.liq_change[t0, b] += f
            ev.append(Event("liquidity_withdrawal", int(t0), int(t0), int(t0), float(f)))
        if rug < T:
            f = -rng.uniform(0.9, 0.99)
            s.liq_change[rug, b] = f
            if rug + 1 < T:
                s.dev_dump[rug + 1, b] = rng.uniform(1.0, 4.0)
            s.flow_mult[rug:, b] *= 0.3
            s.buy_logit[rug:, b] -= 0.5
            ev.append(Event("rug_pull", rug, min(T - 1, rug + 1), min(T - 1, rug + 1), float(-f)))
        ev.sort(key=lambda e: (e.start, e.type))
    return s


def swap_buy(x: np.ndarray, y: np.ndarray, quote_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reserves after buying tokens with quote_in (fee kept outside the pool, so x * y is unchanged)."""
    dq = quote_in * (1 - FEE)
    y_new = y + dq
    return x * y / y_new, y_new


def swap_sell(x: np.ndarray, y: np.ndarray, tokens_in: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reserves after selling tokens_in for quote (fee kept outside the pool, so x * y is unchanged)."""
    dx = tokens_in * (1 - FEE)
    x_new = x + dx
    return x_new, x * y / x_new


def _simulate_block(seed: int, block: int, T: int) -> list[SyntheticToken]:
    """Simulate the BLOCK tokens of one block for T steps, vectorised across tokens."""
    rng = np.random.default_rng([seed, block])
    B = BLOCK
    # Token scales: prices from 1e-9 to 1e2, pools from a few thousand to ten million (quote units).
    p0 = 10 ** rng.uniform(-9, 2, B)
    y = 10 ** rng.uniform(3.5, 7.0, B) / 2
    x = y / p0
    supply = x * 10 ** rng.uniform(0.5, 2.0, B)
    mu = 10 ** rng.uniform(-1.3, 0.7, B)  # base trades per step
    alpha = rng.uniform(0.4, 0.85, B)  # branching ratio of the self-exciting flow
    beta = rng.uniform(0.6, 0.95, B)  # per-step decay of excitation
    size = 10 ** rng.uniform(-3.5, -2.3, B)  # mean trade size as a share of the quote reserve
    rho, sent_sd = 0.999, 0.1
    sched = _schedule(rng, T, B)

    feats = np.empty((T, B, len(FEATURES)))
    reserves = np.empty((T, B, 2))
    excite = np.zeros(B)
    sentiment = rng.normal(0.0, sent_sd, B)
    ref = np.log(y / x)
    for t in range(T):
        lam = mu * (1 - alpha) * sched.flow_mult[t] + excite
        n = rng.poisson(lam)
        share = 1 / (1 + np.exp(-(sentiment + sched.buy_logit[t])))
        n_buy = rng.binomial(n, share)
        n_sell = n - n_buy
        noise = rng.lognormal(-0.5, 1.0, (2, B))  # mean 1: size noise per side
        # Busy minutes are many smaller trades: volatility grows with activity, but slower than volume.
        trade = size * y * np.maximum(lam / mu, 1.0) ** -0.25
        buy_q = n_buy * trade * noise[0]
        sell_q = n_sell * trade * noise[1]
        # Pumps: after the crowd's flow, coordinated flow pulls the price towards the event's target path.
        ref = np.where(sched.pump_ref[t], np.log(y / x), ref)
        x1, y1 = swap_buy(x, y, buy_q)
        x1, y1 = swap_sell(x1, y1, sell_q / (y1 / x1) + sched.dev_dump[t] * x1)
        target = ref + sched.pump_target[t]
        in_pump = np.isfinite(target)
        gap = np.where(in_pump, sched.pump_pull[t] * (target - np.log(y1 / x1)), 0.0)
        # price = y^2 / k: raising log price by g needs the quote reserve to grow by exp(g / 2).
        y_goal = y1 * np.exp(gap / 2)
        forced_buy = np.where(gap > 0, (y_goal - y1) / (1 - FEE), 0.0)
        forced_sell = np.where(gap < 0, (x1 * y1 / y_goal - x1) / (1 - FEE), 0.0)
        x1, y1 = swap_buy(x1, y1, forced_buy)
        x2, y2 = swap_sell(x1, y1, forced_sell)
        sold_q = y1 - y2  # quote paid out for the forced sells
        # Liquidity providers add or remove both reserves in proportion: price unchanged, k changes.
        grow = 1 + sched.liq_change[t]
        x, y = x2 * grow, y2 * grow
        price = y / x
        volume = buy_q + forced_buy + sell_q + sold_q + sched.dev_dump[t] * x1 * price
        feats[t, :, 0] = price
        feats[t, :, 1] = volume
        feats[t, :, 2] = 2 * y
        feats[t, :, 3] = n_buy
        feats[t, :, 4] = n_sell
        feats[t, :, 5] = price * supply
        reserves[t, :, 0], reserves[t, :, 1] = x, y
        excite = beta * excite + alpha * (1 - beta) * n
        sentiment = rho * sentiment + sent_sd * np.sqrt(1 - rho**2) * rng.standard_normal(B)

    out = []
    for b in range(B):
        events = [_realised(e, feats[:, b, 0]) for e in sched.events[b]]
        out.append(SyntheticToken(block * B + b, feats[:, b].copy(), events, reserves[:, b].copy()))
    return out


def _realised(event: Event, price: np.ndarray) -> Event:
    """Pumps carry the peak gain the market actually reached (flow noise moves it off the plan)."""
    if event.type != "pump_and_dump" or event.start < 1:
        return event
    gain = float(price[event.peak] / price[event.start - 1] - 1)
    return Event(event.type, event.start, event.peak, event.end, gain)


def generate(num_tokens: int, timesteps: int, seed: int = 0, first_token: int = 0) -> Iterator[SyntheticToken]:
    """Yield tokens first_token .. first_token + num_tokens - 1, one block in memory at a time."""
    if timesteps < 2:
        raise ValueError("timesteps must be at least 2")
    last = first_token + num_tokens
    for block in range(first_token // BLOCK, (last - 1) // BLOCK + 1 if num_tokens > 0 else 0):
        for tok in _simulate_block(seed, block, timesteps):
            if first_token <= tok.token_id < last:
                yield tok


#: Synthetic bars start here (2024-01-01T00:00Z) so that exports carry real-looking times.
SYNTHETIC_EPOCH_MS = 1_704_067_200_000


def to_series(token: SyntheticToken, seed: int, interval_ms: int = 60_000) -> TokenSeries:
    """A simulated token as a store record, keyed by seed and index so regenerating replaces it."""
    steps = token.features.shape[0]
    return TokenSeries(
        key=f"synthetic:{seed}:{token.token_id}",
        symbol=f"SYN{token.token_id}",
        source=f"synthetic:seed={seed}",
        interval_ms=interval_ms,
        timestamps=SYNTHETIC_EPOCH_MS + np.arange(steps, dtype=np.int64) * interval_ms,
        features=token.features,
        events=token.events,
    )


def _write_block(args: tuple[str, str, int, int, int, int, dict[int, int]]) -> list[dict]:
    """Worker: simulate one block and stage the requested tokens' files; returns their metadata entries."""
    data_dir, txid, seed, block, timesteps, interval_ms, ids = args
    store = TokenDataManager(data_dir)
    entries = []
    for tok in _simulate_block(seed, block, timesteps):
        if tok.token_id in ids:
            series = to_series(tok, seed, interval_ms)
            series.token_id = ids[tok.token_id]
            entries.append(store.stage_token(series, txid))
    return entries


def generate_to_store(
    data_dir: str | Path,
    num_tokens: int,
    timesteps: int,
    seed: int = 0,
    interval: str = "1min",
    workers: int | None = None,
    allow_mixed_intervals: bool = False,
) -> list[int]:
    """Simulate tokens 0..num_tokens-1 into the store (regenerating replaces the same keys).

    Blocks are simulated and written by `workers` processes (default: one per core, at most one per block),
    which die with this process; everything is committed in one store transaction, after every file is
    staged, so an interrupted run leaves the store as it was.
    """
    import multiprocessing as mp

    if num_tokens < 1 or timesteps < 2:
        raise ConfigError("num_tokens must be >= 1 and timesteps >= 2", "num_tokens", "timesteps")
    interval_ms = parse_interval(interval)
    store = TokenDataManager(data_dir)
    blocks = range(0, (num_tokens - 1) // BLOCK + 1)
    workers = min(workers or os.cpu_count() or 1, len(blocks))
    stored = len(store)
    log.info(
        "generating %d synthetic token(s) x %d steps into %s%s",
        num_tokens,
        timesteps,
        data_dir,
        f" (the store holds {stored} token(s); same keys are replaced, new ones added)" if stored else "",
    )
    with store.transaction() as txn:
        store.check_interval(txn.meta, {interval_ms}, allow_mixed_intervals)
        key_ids = txn.assign(f"synthetic:{seed}:{i}" for i in range(num_tokens))
        ids = {i: key_ids[f"synthetic:{seed}:{i}"] for i in range(num_tokens)}
        tasks = [
            (
                str(data_dir),
                txn.txid,
                seed,
                b,
                timesteps,
                interval_ms,
                {i: ids[i] for i in range(b * BLOCK, min(num_tokens, (b + 1) * BLOCK))},
            )
            for b in blocks
        ]
        bar = tqdm(total=num_tokens, desc="tokens", unit="token", disable=len(tasks) < 2 or not sys.stderr.isatty())
        if workers > 1:
            with mp.get_context("spawn").Pool(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                for part in pool.imap(_write_block, tasks):
                    txn.add(part)
                    bar.update(len(part))
        else:
            for t in tasks:
                part = _write_block(t)
                txn.add(part)
                bar.update(len(part))
        bar.close()
    return [ids[i] for i in range(num_tokens)]


def ensure_store(data: DataConfig) -> TokenDataManager:
    """The store in data.data_dir, filled with data.num_tokens synthetic tokens first if it is empty: every
    command that needs data and finds none starts from the embedded defaults. A store with data is used as
    it is (said when num_tokens asked for another size)."""
    store = TokenDataManager(data.data_dir)
    if len(store) == 0:
        log.info("%s is empty: making synthetic data first", data.data_dir)
        generate_to_store(data.data_dir, data.num_tokens, data.timesteps, data.seed, data.interval)
    elif len(store) != data.num_tokens and data.num_tokens != DataConfig().num_tokens:
        log.warning(
            "%s already holds %d token(s): num_tokens=%d applies only to an empty store (generate adds tokens)",
            data.data_dir,
            len(store),
            data.num_tokens,
        )
    return store
