"""Synthetic token markets whose 1-minute statistics match real small markets, with every event known.

Each token trades against a constant-product pool (x * y = k). On a DEX venue the pool is the market:
liquidity = pool value = 2y and market cap = price x supply are features. On a CEX venue the same curve stands
for the order book's depth, and the pair has no pool: liquidity and market cap are absent, as in real CEX files.

The recorded price is the step's last trade, not the pool's mid price: on a DEX a buy fills above the pool
price and a sell below it (fee and slippage); on a CEX a buy fills at the ask and a sell at the bid, on the
venue's price grid. So one-step returns bounce (negative lag-1 autocorrelation), and a step with no trade
keeps the price. Trading activity is a sum of processes from minutes to days (volatility with long memory),
trade sizes are log-normal with rare whale trades (heavy tails in calm periods), the buy share follows a
slowly drifting sentiment, and scheduled events push it all: news, trading bursts, pump-and-dumps (a crowd
that arrives at once and leaves over hours around a pump group that steers the price), liquidity changes and
rug pulls. Every event is returned with the token as ground truth. `pumpcast.realism` and
benchmarks/realism.py score the statistics against the real shared events.

Tokens are simulated in fixed blocks of BLOCK tokens, vectorised across the block with one random generator
per block, so token i depends only on (seed, i, timesteps, venue), never on how many tokens were asked for,
and memory is bounded by one block.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy.signal import lfilter
from tqdm.auto import tqdm

from pumpcast.config import VENUES, DataConfig, IngestConfig
from pumpcast.schema import (
    BUYS,
    EXTRA_FEATURES,
    FEATURES,
    LIQUIDITY,
    MARKET_CAP,
    PRICE,
    SELLS,
    VOLUME,
    ConfigError,
    Event,
    TokenSeries,
)
from pumpcast.store import TokenDataManager, die_with_parent
from pumpcast.timeutil import parse_interval

log = logging.getLogger(__name__)

#: Tokens simulated together; part of the random stream's definition, so changing it changes the data.
BLOCK = 512
#: Swap fee, paid to liquidity providers outside the reserves so that swaps keep k exactly.
FEE = 0.003
#: Time scales (steps) of the activity components and the standard deviation of each one's log intensity:
#: several scales give volatility the long memory of real markets, which one exponential decay cannot, and a
#: near-white one (0.3 steps) the minute-to-minute noise of real volume (calm log volume's lag-1 autocorrelation
#: is 0.16-0.39 on the real events; without it, 0.43, and a volume spike was easier to see than a real one).
ACTIVITY_SCALES = (0.3, 2.0, 5.0, 30.0, 300.0, 3000.0)
ACTIVITY_SD = (0.95, 1.0, 0.65, 0.8, 0.9, 0.55)
#: Log-normal spread of a step's trade sizes per side.
SIZE_SD = 1.0
#: Whale trades in calm markets: chance per step, scale over a mean trade, and Pareto tail.
WHALE_RATE = 0.003
WHALE_SIZE = 10.0
WHALE_TAIL = 3.8
#: Time scale (steps) and log standard deviation of a CEX book's depth.
DEPTH_SCALE = 30.0
DEPTH_SD = 0.4
#: Chance that a step's last trade repeats the side of the previous last trade (orders split over minutes).
SIDE_PERSIST = 0.6
#: Pump groups announce on round times: a pump starts on a multiple of this many steps (the hour at 1-minute
#: bars; all 19 shared real events start at HH:00).
ANNOUNCE_EVERY = 60
#: Taker orders: a rush order (one taker buy filled in several trades at one millisecond) fills RUSH_FILLS
#: trades. Each RUSH_FILLS buy trades of a step are one rush order with the step's rush chance: a token's calm
#: chance (RUSH_CALM, real calm: 7-14% of buy orders are rush orders) or, from a pump's start until its peak,
#: RUSH_PUMP (real: 12-27% over the first 3 minutes), fading with the crowd. Sells split alike at the calm chance.
RUSH_FILLS = 3
RUSH_CALM = (0.15, 0.35)
RUSH_PUMP = (0.4, 0.6)


@dataclass
class SyntheticToken:
    """One simulated token: raw features (T, 6), its events, and what the features come from: the pool's
    reserves after each step (on a CEX, the curve that stands for the book's depth), the side of each step's
    last trade (whose price is the recorded price) and the CEX price grid."""

    token_id: int
    features: np.ndarray
    events: list[Event]
    reserves: np.ndarray = field(repr=False)  # (T, 2): token reserve x, quote reserve y after each step
    last_side: np.ndarray = field(repr=False)  # (T,) int8: the step's last trade, +1 buy, -1 sell, 0 no trade
    tick: float = float("nan")  # price grid of a CEX pair; NaN on a DEX
    extras: np.ndarray | None = field(default=None, repr=False)  # (T, len(EXTRA_FEATURES)): taker sides, orders


@dataclass
class _Schedule:
    """Per-step drivers of one block, (T, B) each, built from the scheduled events."""

    flow_mult: np.ndarray
    size_mult: np.ndarray  # trade size multiple (pump crowds trade bigger)
    crowd_logit: np.ndarray  # buy-count lean of a pump's crowd, whose fewer sellers sell bigger
    buy_logit: np.ndarray
    liq_change: np.ndarray  # fraction of both reserves added (+) or removed (-) at this step
    dev_dump: np.ndarray  # tokens sold by the developer, as a multiple of the token reserve
    pump_target: np.ndarray  # target log price relative to the pump's reference; 0 outside pumps (no pull)
    pump_pull: np.ndarray  # how hard flow is pulled to the target (1 = exactly)
    pump_ref: np.ndarray  # True at the step whose opening price is the pump's reference
    rush: np.ndarray  # chance that RUSH_FILLS buy trades are one rush order
    events: list[list[Event]]


def _schedule(rng: np.random.Generator, T: int, B: int) -> _Schedule:
    """Draw each token's events and turn them into per-step drivers."""
    s = _Schedule(
        flow_mult=np.ones((B, T)),
        size_mult=np.ones((B, T)),
        crowd_logit=np.zeros((B, T)),
        buy_logit=np.zeros((B, T)),
        liq_change=np.zeros((B, T)),
        dev_dump=np.zeros((B, T)),
        pump_target=np.zeros((B, T)),
        pump_pull=np.zeros((B, T)),
        pump_ref=np.zeros((B, T), dtype=bool),
        rush=np.repeat(rng.uniform(*RUSH_CALM, (B, 1)), T, axis=1),
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
            t0 = max(3 * ANNOUNCE_EVERY, t0 - t0 % ANNOUNCE_EVERY)
            if all(abs(t0 - u) > 300 for u in starts) and t0 + 200 < rug:
                starts.append(t0)
        for t0 in sorted(starts):
            acc = int(rng.integers(30, 121))
            s.flow_mult[b, t0 - acc : t0] *= 1.5
            s.buy_logit[b, t0 - acc : t0] += 0.3
            gain = 10 ** rng.uniform(np.log10(0.03), np.log10(0.7))
            rise = min(int(rng.exponential(1.2)), 5)
            retrace = rng.uniform(0.6, 1.9)
            tau = rng.uniform(5.0, 30.0)
            length = int(rng.integers(40, 121))
            peak, end = t0 + rise, t0 + rise + length
            g = np.log1p(gain)
            s.pump_ref[b, t0] = True
            s.pump_target[b, t0 : peak + 1] = g * (np.arange(1, rise + 2) / (rise + 1))
            d = np.arange(1, length + 1)
            s.pump_target[b, peak + 1 : end + 1] = g * (1 - retrace * (1 - np.exp(-d / tau)) / (1 - np.exp(-60 / tau)))
            s.pump_pull[b, t0 : peak + 1] = 1.0
            s.pump_pull[b, peak + 1 : end + 1] = 0.5
            # The crowd arrives at once and leaves slowly (a power-law decay over hours), trading bigger.
            surge = 10 ** rng.uniform(2.2, 3.0)
            bigger = rng.uniform(1.5, 4.0)
            tail = min(T, peak + 1 + 12 * 60)
            after = np.arange(1, tail - peak)
            fade = (1 + after / rng.uniform(1.0, 4.0)) ** -rng.uniform(0.8, 1.2) * np.exp(-after / 240)
            s.flow_mult[b, t0 : peak + 1] *= surge
            s.flow_mult[b, peak + 1 : tail] *= 1 + surge * fade
            s.size_mult[b, t0 : peak + 1] *= bigger
            s.size_mult[b, peak + 1 : tail] *= 1 + (bigger - 1) * fade
            s.crowd_logit[b, t0 : peak + 1] += 1.5
            s.crowd_logit[b, peak + 1 : end + 1] += 0.3
            calm_rush = s.rush[b, 0]
            rush = rng.uniform(*RUSH_PUMP)
            s.rush[b, t0 : peak + 1] = rush
            s.rush[b, peak + 1 : tail] = calm_rush + (rush - calm_rush) * fade
            ev.append(Event("pump_and_dump", t0, peak, end, float(gain)))
        # News: flow shocks of either sign that decay.
        for t0 in np.sort(rng.integers(0, T, size=rng.poisson(T / 1500.0))):
            shock = (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(0.3, 1.0)
            half = rng.uniform(5.0, 30.0)
            decay = np.exp(-np.log(2) * steps[: min(T - t0, int(30 * half))] / half)  # to 1e-9
            s.buy_logit[b, t0 : t0 + decay.size] += shock * decay
            s.flow_mult[b, t0 : t0 + decay.size] *= 1 + rng.uniform(1.0, 5.0) * decay
            ev.append(Event("news", int(t0), int(t0), int(min(T - 1, t0 + 3 * half)), float(shock)))
        # Trading bursts: activity jumps without direction.
        for t0 in np.sort(rng.integers(0, T, size=rng.poisson(T / 1000.0))):
            n = int(rng.integers(3, 21))
            mult = rng.uniform(3.0, 15.0)
            s.flow_mult[b, t0 : t0 + n] *= mult
            ev.append(Event("trading_burst", int(t0), int(t0), int(min(T - 1, t0 + n - 1)), float(mult)))
        # Liquidity providers add and withdraw.
        for t0 in np.sort(rng.integers(0, rug, size=rng.poisson(rug / 3000.0))):
            f = rng.uniform(0.2, 1.0)
            s.liq_change[b, t0] += f
            ev.append(Event("liquidity_add", int(t0), int(t0), int(t0), float(f)))
        for t0 in np.sort(rng.integers(0, rug, size=rng.poisson(rug / 3000.0))):
            f = -rng.uniform(0.2, 0.6)
            s.liq_change[b, t0] += f
            ev.append(Event("liquidity_withdrawal", int(t0), int(t0), int(t0), float(f)))
        if rug < T:
            f = -rng.uniform(0.9, 0.99)
            s.liq_change[b, rug] = f
            if rug + 1 < T:
                s.dev_dump[b, rug + 1] = rng.uniform(1.0, 4.0)
            s.flow_mult[b, rug:] *= 0.3
            s.buy_logit[b, rug:] -= 0.5
            ev.append(Event("rug_pull", rug, min(T - 1, rug + 1), min(T - 1, rug + 1), float(-f)))
        ev.sort(key=lambda e: (e.start, e.type))
    # Drawn token by token (rows), read step by step (rows of the transpose).
    for f in fields(s):
        if f.name != "events":
            setattr(s, f.name, np.ascontiguousarray(getattr(s, f.name).T))
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


def _ou(rng: np.random.Generator, T: int, B: int, tau: float, sd: float) -> np.ndarray:
    """(T, B) stationary AR(1) paths with time scale tau steps and standard deviation sd (float32: these are
    log intensities, not prices)."""
    phi = np.exp(-1.0 / tau)
    zi = phi * sd * rng.standard_normal((B, 1), dtype=np.float32)
    noise = rng.standard_normal((B, T), dtype=np.float32)
    return np.ascontiguousarray(lfilter([sd * np.sqrt(1 - phi**2)], [1.0, -phi], noise, axis=1, zi=zi)[0].T)


def _simulate_block(seed: int, block: int, T: int, venue: str = "dex") -> list[SyntheticToken]:
    """Simulate the BLOCK tokens of one block for T steps, vectorised across tokens.

    Order flow is drawn for all steps at once; only the pool (and the pump groups that trade against it,
    which watch its price) advances step by step.
    """
    rng = np.random.default_rng([seed, block])
    B = BLOCK
    # Token scales: prices from 1e-9 to 1e2, pools from a few thousand to ten million (quote units).
    p0 = 10 ** rng.uniform(-9, 2, B)
    y = 10 ** rng.uniform(3.5, 7.0, B) / 2
    x = y / p0
    supply = x * 10 ** rng.uniform(0.5, 2.0, B)
    mu = 10 ** rng.uniform(-0.9, 0.6, B)  # calm trades per step: real small pairs trade 0.15-4 times a minute
    size = 10 ** rng.uniform(-4.4, -3.4, B)  # mean trade as a share of the quote reserve
    rel_tick = 10 ** rng.uniform(-3.5, -1.7, B)  # CEX price tick over the first price (real: 0.03%-2%)
    half_spread = 10 ** rng.uniform(-3.4, -2.7, B)  # CEX half spread over price, at least half a tick
    sched = _schedule(rng, T, B)

    # Activity with long memory: log intensity is a sum of AR(1) paths from minutes to days.
    log_act = sum(_ou(rng, T, B, tau, sd) for tau, sd in zip(ACTIVITY_SCALES, ACTIVITY_SD, strict=True))
    lam = (mu * np.exp(log_act - sum(sd**2 for sd in ACTIVITY_SD) / 2)) * sched.flow_mult
    n = rng.poisson(lam).astype(float)
    sentiment = _ou(rng, T, B, 1000.0, 0.1)
    lean = sentiment + sched.buy_logit + sched.crowd_logit
    n_buy = np.zeros((T, B))
    busy = n > 0
    n_buy[busy] = rng.binomial(n[busy].astype(np.int64), 1 / (1 + np.exp(-lean[busy])))
    n_sell = n - n_buy
    # Trade sizes: log-normal per side and step, and rare whale trades (heavy tails in calm periods).
    trade = size * sched.size_mult
    buy_rel = n_buy * trade * rng.lognormal(-(SIZE_SD**2) / 2, SIZE_SD, (T, B))
    sell_rel = n_sell * trade * np.exp(sched.crowd_logit) * rng.lognormal(-(SIZE_SD**2) / 2, SIZE_SD, (T, B))
    whale = (rng.random((T, B)) < WHALE_RATE) * size * WHALE_SIZE * rng.pareto(WHALE_TAIL, (T, B))
    whale_buy = rng.random((T, B)) < 0.5
    buy_rel += np.where(whale_buy, whale, 0.0)
    sell_rel += np.where(whale_buy, 0.0, whale)
    n_buy += (whale > 0) & whale_buy
    n_sell += (whale > 0) & ~whale_buy
    # The step's last trade: a buy with probability buys / trades, or (split orders) the side of the last
    # trade before it with probability SIDE_PERSIST; it is an average trade of its side.
    traded = n_buy + n_sell
    steps = np.arange(T)[:, None]
    fresh = np.where(rng.random((T, B)) * traded < n_buy, 1, -1)
    anchor = np.where((traded > 0) & (rng.random((T, B)) >= SIDE_PERSIST), steps, 0)
    last = np.take_along_axis(fresh, np.maximum.accumulate(anchor, 0), 0)
    last = np.where(traded == 0, 0, np.where(n_buy == 0, -1, np.where(n_sell == 0, 1, last))).astype(np.int8)
    last_buy = np.where(last > 0, buy_rel / np.maximum(n_buy, 1), 0.0)
    last_sell = np.where(last < 0, sell_rel / np.maximum(n_sell, 1), 0.0)
    volume_rel = buy_rel + sell_rel
    # A CEX book's depth breathes: in a thin minute the same trade moves the price more (volatility that
    # clusters apart from volume). A DEX pool's depth changes only when liquidity is added or removed.
    thin = np.exp(_ou(rng, T, B, DEPTH_SCALE, DEPTH_SD)) if venue == "cex" else np.ones((T, B))
    bulk_buy, bulk_sell = (buy_rel - last_buy) * thin, (sell_rel - last_sell) * thin
    last_buy *= thin
    last_sell *= thin
    del lam, n, sentiment, lean, trade, sell_rel, whale, whale_buy, traded, fresh, anchor

    fill = np.empty((T, B))  # execution price of the step's last trade (DEX)
    volume = np.empty((T, B))
    buy_volume = np.empty((T, B))
    group_buys = np.zeros((T, B), dtype=bool)  # the pump group bought: one rush order of RUSH_FILLS trades
    rx, ry = np.empty((T, B)), np.empty((T, B))
    ref = np.log(y / x)
    starting = sched.pump_ref.any(axis=1)  # steps where some token's pump starts
    keep = 1 - FEE
    for t in range(T):
        # The step's trades but the last, then the pump group's, then the last one (whose price is recorded).
        x1, y1 = swap_buy(x, y, bulk_buy[t] * y)
        x1, y1 = swap_sell(x1, y1, (bulk_sell[t] * y / y1 + sched.dev_dump[t]) * x1)
        if starting[t]:
            ref = np.where(sched.pump_ref[t], np.log(y / x), ref)
        gap = sched.pump_pull[t] * (ref + sched.pump_target[t] - np.log(y1 / x1))
        # price = y^2 / k: the group buys or sells until the quote reserve is exp(gap / 2) times larger.
        y2 = y1 * np.exp(gap / 2)
        x2 = x1 * y1 / y2
        forced = np.abs(y2 - y1) / np.where(y2 > y1, keep, 1.0)  # quote paid in (with fee) or paid out
        group_buys[t] = (forced > 0) & (gap > 0)
        n_buy[t] += RUSH_FILLS * group_buys[t]
        # Average price of the last trade: a buy pays above the pool price, a sell gets below it.
        lb, st = last_buy[t] * y2, last_sell[t] * x2
        fill[t] = np.where(last[t] > 0, (y2 + lb * keep) / (x2 * keep), y2 * keep / (x2 + st * keep))
        # In a step where only the pump group (or a dumping developer) traded, its trade is the last one.
        alone = (last[t] == 0) & ((forced > 0) | (sched.dev_dump[t] > 0))
        if alone.any():
            side = np.where(gap > 0, 1, -1)[alone]
            last[t, alone] = side
            n_sell[t, alone] += side < 0  # a buying group's trades are counted above
            fill[t, alone] = (y2 / x2)[alone]
        x3, y3 = swap_sell(*swap_buy(x2, y2, lb), st)
        volume[t] = volume_rel[t] * y + forced / thin[t] + sched.dev_dump[t] * y  # dumped tokens at the step's price
        buy_volume[t] = buy_rel[t] * y + np.where(gap > 0, forced, 0.0) / thin[t]
        # Liquidity providers add or remove both reserves in proportion: price unchanged, k changes.
        grow = 1 + sched.liq_change[t]
        x, y = x3 * grow, y3 * grow
        rx[t], ry[t] = x, y
    del bulk_buy, bulk_sell, last_buy, last_sell, volume_rel, thin, buy_rel
    extras = _taker_orders(rng, n_buy, n_sell, group_buys, sched.rush, volume, buy_volume)

    mid = ry / rx
    if venue == "cex":
        # An order book's last trade is at the ask (buy) or the bid (sell), on the venue's price grid.
        tick = p0 * rel_tick
        half = np.maximum(tick / 2, half_spread * mid)
        bid = np.maximum(np.floor((mid - half) / tick), 1.0) * tick
        ask = np.maximum(np.ceil((mid + half) / tick), 2.0) * tick
        quote = np.where(last > 0, ask, np.where(last < 0, bid, np.maximum(np.round(mid / tick), 1.0) * tick))
    else:
        tick = np.full(B, np.nan)
        quote = np.where(last != 0, fill, mid)
    # A step without a trade keeps the last traded price.
    price = np.take_along_axis(quote, np.maximum.accumulate(np.where((last != 0) | (steps == 0), steps, 0), 0), 0)
    # Token-major arrays, so that each token's series is one contiguous slice.
    feats = np.full((B, T, len(FEATURES)), np.nan)
    feats[..., PRICE] = price.T
    feats[..., VOLUME] = volume.T
    feats[..., BUYS] = n_buy.T
    feats[..., SELLS] = n_sell.T
    if venue == "dex":
        feats[..., LIQUIDITY] = 2 * ry.T
        feats[..., MARKET_CAP] = price.T * supply[:, None]
    reserves = np.stack([rx.T, ry.T], axis=-1)
    sides = np.ascontiguousarray(last.T)
    extras = np.ascontiguousarray(extras.transpose(1, 0, 2))
    return [
        SyntheticToken(
            block * B + b,
            feats[b],
            [_realised(e, feats[b, :, PRICE]) for e in sched.events[b]],
            reserves[b],
            sides[b],
            float(tick[b]),
            extras[b],
        )
        for b in range(B)
    ]


def _taker_orders(
    rng: np.random.Generator,
    n_buy: np.ndarray,
    n_sell: np.ndarray,
    group_buys: np.ndarray,
    rush: np.ndarray,
    volume: np.ndarray,
    buy_volume: np.ndarray,
) -> np.ndarray:
    """(T, B, len(EXTRA_FEATURES)) taker extras of every step, as ingest builds them from trades: buy and sell
    quote volume, taker orders per side (trades less the extra fills of multi-fill orders) and rush orders (the
    crowd's, at the step's rush chance, and the pump group's)."""
    crowd = rng.binomial((n_buy - RUSH_FILLS * group_buys).astype(np.int64) // RUSH_FILLS, rush)
    rush_orders = crowd + group_buys
    split_sells = rng.binomial(n_sell.astype(np.int64) // RUSH_FILLS, rush[:1])
    columns = {
        "buy_volume": buy_volume,
        "sell_volume": np.maximum(volume - buy_volume, 0.0),
        "buy_orders": n_buy - (RUSH_FILLS - 1) * rush_orders,
        "sell_orders": n_sell - (RUSH_FILLS - 1) * split_sells,
        "rush_orders": rush_orders,
    }
    return np.stack([columns[name] for name in EXTRA_FEATURES], axis=-1).astype(np.float64)


def _realised(event: Event, price: np.ndarray) -> Event:
    """Pumps carry the peak gain the market actually reached (flow noise moves it off the plan)."""
    if event.type != "pump_and_dump" or event.start < 1:
        return event
    gain = float(price[event.peak] / price[event.start - 1] - 1)
    return Event(event.type, event.start, event.peak, event.end, gain)


def _check_venue(venue: str) -> None:
    """A one-line error for a venue the simulator does not know, before anything is simulated."""
    if venue not in VENUES:
        raise ConfigError(f"venue {venue!r} is not one of {', '.join(VENUES)}", "venue")


def generate(
    num_tokens: int, timesteps: int, seed: int = 0, first_token: int = 0, venue: str = "dex"
) -> Iterator[SyntheticToken]:
    """Yield tokens first_token .. first_token + num_tokens - 1 of a venue, one block in memory at a time."""
    if timesteps < 2:
        raise ValueError("timesteps must be at least 2")
    _check_venue(venue)
    last = first_token + num_tokens
    for block in range(first_token // BLOCK, (last - 1) // BLOCK + 1 if num_tokens > 0 else 0):
        for tok in _simulate_block(seed, block, timesteps, venue):
            if first_token <= tok.token_id < last:
                yield tok


#: Synthetic bars start here (2024-01-01T00:00Z) so that exports carry real-looking times.
SYNTHETIC_EPOCH_MS = 1_704_067_200_000


def to_series(token: SyntheticToken, seed: int, interval_ms: int = 60_000, venue: str = "dex") -> TokenSeries:
    """A simulated token as a store record, keyed by venue, seed and index so regenerating replaces it."""
    steps = token.features.shape[0]
    return TokenSeries(
        key=_key(venue, seed, token.token_id),
        symbol=f"SYN{token.token_id}",
        source=f"synthetic:seed={seed}" if venue == "dex" else f"synthetic:{venue}:seed={seed}",
        interval_ms=interval_ms,
        timestamps=SYNTHETIC_EPOCH_MS + np.arange(steps, dtype=np.int64) * interval_ms,
        features=token.features,
        events=token.events,
        extras=token.extras,
    )


def _key(venue: str, seed: int, index: int) -> str:
    """Store key of synthetic token `index`: DEX keys are those of earlier releases, so regenerating replaces."""
    return f"synthetic:{seed}:{index}" if venue == "dex" else f"synthetic:{venue}:{seed}:{index}"


def _write_block(args: tuple[str, str, int, int, int, int, dict[int, int], str]) -> list[dict]:
    """Worker: simulate one block and stage the requested tokens' files; returns their metadata entries."""
    data_dir, txid, seed, block, timesteps, interval_ms, ids, venue = args
    store = TokenDataManager(data_dir)
    entries = []
    for tok in _simulate_block(seed, block, timesteps, venue):
        if tok.token_id in ids:
            series = to_series(tok, seed, interval_ms, venue)
            series.token_id = ids[tok.token_id]
            entries.append(store.stage_token(series, txid))
    return entries


def generate_to_store(
    data_dir: str | Path,
    num_tokens: int,
    timesteps: int,
    seed: int = 0,
    interval: str = DataConfig.interval,
    workers: int | None = None,
    allow_mixed_intervals: bool = IngestConfig.allow_mixed_intervals,
    venue: str = "dex",
    first_token: int = 0,
) -> list[int]:
    """Simulate tokens first_token..num_tokens-1 of a venue into the store (regenerating replaces the same keys);
    returns their store ids.

    Blocks are simulated and written by `workers` processes (default: one per core, at most one per block),
    which die with this process; everything is committed in one store transaction, after every file is
    staged, so an interrupted run leaves the store as it was.
    """
    import multiprocessing as mp

    if num_tokens < 1 or timesteps < 2 or not 0 <= first_token < num_tokens:
        raise ConfigError(
            "num_tokens must be >= 1 (and above first_token) and timesteps >= 2", "num_tokens", "timesteps"
        )
    _check_venue(venue)
    interval_ms = parse_interval(interval)
    store = TokenDataManager(data_dir)
    wanted = range(first_token, num_tokens)
    blocks = range(first_token // BLOCK, (num_tokens - 1) // BLOCK + 1)
    workers = min(workers or os.cpu_count() or 1, len(blocks))
    stored = len(store)
    log.info(
        "generating %d synthetic %s token(s) x %d steps into %s%s",
        len(wanted),
        venue.upper(),
        timesteps,
        data_dir,
        f" (the store holds {stored} token(s); same keys are replaced, new ones added)" if stored else "",
    )
    with store.transaction() as txn:
        store.check_interval(txn.meta, {interval_ms}, allow_mixed_intervals)
        key_ids = txn.assign(_key(venue, seed, i) for i in wanted)
        ids = {i: key_ids[_key(venue, seed, i)] for i in wanted}
        tasks = [
            (
                str(data_dir),
                txn.txid,
                seed,
                b,
                timesteps,
                interval_ms,
                {i: ids[i] for i in range(max(first_token, b * BLOCK), min(num_tokens, (b + 1) * BLOCK))},
                venue,
            )
            for b in blocks
        ]
        bar = tqdm(total=len(wanted), desc="tokens", unit="token", disable=len(tasks) < 2 or not sys.stderr.isatty())
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
    return [ids[i] for i in wanted]


def ensure_store(data: DataConfig) -> TokenDataManager:
    """The store in data.data_dir, filled with data.num_tokens synthetic tokens if it is empty, so every command
    that needs data starts from the embedded defaults. Asked for more tokens than a store of synthetic tokens
    holds (num_tokens other than the default), the missing ones are added and those it holds kept as they are:
    `--num-tokens 10` after a 5-token quickstart means 10 tokens. A store with real tokens is used as it is
    (said when num_tokens asked for more)."""
    store = TokenDataManager(data.data_dir)
    held = len(store)
    if held >= data.num_tokens or (held and data.num_tokens == DataConfig().num_tokens):
        return store  # a store with data meets the default size as it is; an asked-for size is met
    if held and not all(e.source.startswith("synthetic") for e in store.entries().values()):
        log.warning(
            "%s holds %d token(s), real ones among them: num_tokens=%d adds synthetic tokens only to a synthetic "
            "store (pumpcast generate adds them anyway)",
            data.data_dir,
            held,
            data.num_tokens,
        )
        return store
    log.info(
        "%s %s: making synthetic data first",
        data.data_dir,
        f"holds {held} of num_tokens={data.num_tokens} token(s)" if held else "is empty",
    )
    generate_to_store(
        data.data_dir, data.num_tokens, data.timesteps, data.seed, data.interval, venue=data.venue, first_token=held
    )
    return store
