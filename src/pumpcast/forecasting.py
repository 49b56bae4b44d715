"""Forecasts from a trained model, without the training framework: rollouts on the model's own predictions.

A rollout feeds the last seq_len known steps to the model, appends its next `horizon` predicted steps (all six
features) to the history, and repeats. It never reads a value past the forecast origin: the only inputs are
the history given and the model's own outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from pumpcast.channels import advance_calendar, check_width, columns, covariates, read_inputs
from pumpcast.config import MAX_FORECAST_STEPS
from pumpcast.detection import PumpDetector
from pumpcast.losses import get_loss, mean_weights
from pumpcast.modelfile import ModelBundle, require_fit
from pumpcast.onnxfile import load_bundle
from pumpcast.schema import EXTRA_FEATURES, FEATURES, MARKET_CAP, PRICE, ConfigError, DataError
from pumpcast.windows import LEVEL, relative, to_base

#: A predicted step's normalised value is clipped to this many training standard deviations, so that a
#: long rollout cannot overflow.
CLIP = 20.0


class Forecaster:
    """Load once, forecast many: `Forecaster.load("model_v2.pth").predict([history_frame], steps=100)`."""

    def __init__(self, bundle: ModelBundle, device: str | torch.device = "cpu"):
        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.seq_len = bundle.config.seq_len
        self.horizon = bundle.config.horizon
        self.loss = get_loss(bundle.config.loss)  # decodes the head's outputs

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Forecaster:
        """From a model file (.pth) or an exported network (.onnx, run with onnxruntime)."""
        return cls(load_bundle(path), device)

    @property
    def quantile_levels(self) -> tuple[float, ...]:
        """The levels of `quantiles`' last axis: (0.05, ..., 0.95) for a quantile model, (0.5,) for a point one."""
        return self.loss.levels

    def rollout(self, history: np.ndarray, steps: int, damping: float | None = None) -> np.ndarray:
        """Raw histories (B, T >= seq_len, 6), NaN where absent -> the median forecast path (B, steps, 6).

        Features absent at the last history step stay absent (NaN) in the forecast. The price (and market cap)
        moves the model predicts in its c-th pass are scaled by damping**c: the model file's value, chosen on
        validation data, unless given. 1 = the model's own rollout; 0 = persistence after the first pass.
        """
        return self.quantiles(history, steps, damping)[..., self.loss.levels.index(0.5)]

    def quantiles(self, history: np.ndarray, steps: int, damping: float | None = None) -> np.ndarray:
        """Raw histories (B, T >= seq_len, 6) -> forecast quantiles (B, steps, 6, levels), levels in
        `quantile_levels`; rolled out as `rollout` does, on the median path. A calibrated model's first pass
        of price is calibrated (averaged with the window's empirical quantiles, median shrunk; see
        forecast_calibration.py).

        Beyond the first pass (`horizon` steps), bands are propagated, not sampled: a later pass's quantiles
        of a level feature (price, liquidity, market cap), as offsets in log from its median, are combined with
        the offsets reached at the end of the passes before as if independent (square root of the sum of
        squares); activity features (volume, buys, sells) keep each pass's own quantiles.
        """
        return self.forecast(history, steps, damping)[0]

    def mean(self, history: np.ndarray, steps: int, damping: float | None = None) -> np.ndarray:
        """Raw histories (B, T >= seq_len, 6) -> the mean forecast of price (B, steps), as exp of the mean log
        price: in a calibrated model's first pass the blend of its own mean and its ridge (forecast_calibration.py),
        beyond it (and in uncalibrated models) the mean of the quantiles."""
        return self.forecast(history, steps, damping)[1]

    @torch.inference_mode()
    def forecast(
        self, history: np.ndarray, steps: int, damping: float | None = None, calibrated: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(quantiles (B, steps, 6, levels), mean price (B, steps)); see `quantiles` and `mean`.
        calibrated=False gives the network's own first pass (what the calibration is fitted on)."""
        damping = self.bundle.rollout_damping if damping is None else damping
        if not (isinstance(steps, int | np.integer) and 1 <= steps <= MAX_FORECAST_STEPS):
            raise ConfigError(f"steps must be an integer in [1, {MAX_FORECAST_STEPS}], got {steps!r}", "steps")
        if not (isinstance(damping, float | int) and 0.0 <= damping <= 1.0):
            raise ConfigError(f"rollout_damping must be in [0, 1], got {damping!r}", "rollout_damping")
        history = np.asarray(history, dtype=np.float64)
        if history.ndim != 3:
            raise DataError(f"history must have shape (batch, steps, {len(FEATURES)}), got {history.shape}")
        history = check_width(history, self.bundle.config.groups)
        if history.shape[1] < self.seq_len:
            raise DataError(
                f"history has {history.shape[1]} steps; this model needs at least seq_length={self.seq_len}"
            )
        levels = self.loss.levels
        med = levels.index(0.5)
        absent = ~np.isfinite(history[:, -1, : len(FEATURES)])  # (B, 6)
        window = to_base(history[:, -self.seq_len :])  # (B, L, 6) base values, updated as we go
        out = np.empty((history.shape[0], steps, len(FEATURES), len(levels)))
        mean = np.empty((history.shape[0], steps))
        calibration = self.bundle.forecast_calibration if calibrated else None
        weights = mean_weights(levels)
        norm = self.bundle.normalizer
        done = chunk = 0
        passes = -(-steps // self.horizon)
        bar = tqdm(total=steps, desc="forecast steps", unit="step", disable=passes < 200 or not sys.stderr.isatty())
        while done < steps:
            rel, ref = relative(window, self.seq_len)
            z, mask = norm.normalize(rel, self.seq_len)
            pred, _ = self.model(torch.from_numpy(z).to(self.device), torch.from_numpy(mask).to(self.device))
            q = np.clip(self.loss.quantiles(pred).float().cpu().numpy(), -CLIP, CLIP)  # (B, H, 6, K)
            raw = np.stack([norm.denormalize(q[..., k], ref) for k in range(len(levels))], axis=-1)
            raw[..., 3:5, :] = np.maximum(raw[..., 3:5, :], 0.0)
            raw = np.where(absent[:, None, :, None], np.nan, raw)
            log_mean = None
            if chunk == 0 and calibration is not None:
                last = np.log(history[:, -1, PRICE])[:, None, None]
                changes, change_mean = calibration.apply(
                    np.log(raw[..., PRICE, :]) - last, history, levels, self.seq_len
                )
                raw[..., PRICE, :] = np.exp(last + changes)
                log_mean = last[..., 0] + change_mean
            if damping != 1.0 and chunk:
                for f in (PRICE, MARKET_CAP):  # levels move by damping**chunk times the predicted move
                    last = np.exp(window[:, -1, f])[:, None, None]
                    raw[..., f, :] = last * (raw[..., f, :] / last) ** (damping**chunk)
            if chunk and len(levels) > 1:
                with np.errstate(invalid="ignore"):
                    for f in LEVEL:
                        centre = np.log(raw[..., f, med : med + 1])  # (B, H, 1)
                        now = np.log(raw[..., f, :]) - centre  # (B, H, K) offsets of this pass
                        before = np.log(out[:, done - 1, None, f, :]) - np.log(out[:, done - 1, None, f, med : med + 1])
                        raw[..., f, :] = np.exp(centre + np.copysign(np.hypot(before, now), before + now))
            if log_mean is None:
                log_mean = np.log(raw[..., PRICE, :]) @ weights  # (B, H)
            take = min(self.horizon, steps - done)
            out[:, done : done + take] = raw[:, :take]
            mean[:, done : done + take] = np.exp(log_mean[:, :take])
            window = np.concatenate([window[:, take:], self._future_inputs(window, raw[:, :take, :, med])], axis=1)
            done += take
            chunk += 1
            bar.update(take)
        bar.close()
        return out, mean

    def _future_inputs(self, window: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Base values of predicted steps (B, n, 6 [+ C]) to append to a rollout's window: the predicted features
        and, of the channels, only the clock (advanced from the window's last step); the others are unknown in
        the future and stay absent, so a rollout never reads a future covariate."""
        base = to_base(predicted)
        groups = self.bundle.config.groups
        if not groups:
            return base
        future = np.full((*base.shape[:2], window.shape[2] - len(FEATURES)), np.nan)
        if "calendar" in groups:
            clock = columns(groups, ("calendar",), features=False)
            future[..., clock - len(FEATURES)] = advance_calendar(window[:, -1, clock], base.shape[1], self.interval_ms)
        return np.concatenate([base, future], axis=-1)

    @property
    def interval_ms(self) -> int:
        return self.bundle.data.interval_ms

    def predict(
        self, histories: Sequence[pd.DataFrame | np.ndarray], steps: int, names: Sequence[str] | None = None
    ) -> list[pd.DataFrame]:
        """Forecast each history (frames with the six feature columns, or (T, 6) arrays), batched together;
        `names` (file names, say) are what errors call the histories.

        Returns one frame per history: a row per future step, the six predicted features (the median; and
        `time` when the history frame has a time column), with a quantile model `price_mean` and every
        feature's quantiles (`price_q05`, ..., `price_q95`, `volume_q05`, ...), and with a pump head the pump
        probability at the last bar.
        """
        names = list(names) if names is not None else [f"history {i}" for i in range(len(histories))]
        detector = PumpDetector(self.bundle) if self.bundle.has_pump_head else None
        groups = detector.groups if detector is not None else self.bundle.config.groups  # the detector's are more
        arrays, times = [], []
        for h, name in zip(histories, names, strict=True):
            arr, t = history_inputs(h, groups, name=name)
            require_fit(self.bundle, name, interval_ms=history_interval(t), steps=arr.shape[0])
            arrays.append(arr[-self.seq_len :])
            times.append(t)
        model_cols = columns(groups, self.bundle.config.groups)
        bands, mean = self.forecast(np.stack(arrays)[..., model_cols], steps)  # (B, steps, 6, K), (B, steps)
        levels = self.quantile_levels
        frames = []
        for i, t in enumerate(times):
            frame = pd.DataFrame(bands[i, ..., levels.index(0.5)], columns=list(FEATURES))
            if len(levels) > 1:
                frame["price_mean"] = mean[i]
                for f, name in enumerate(FEATURES):
                    for k, level in enumerate(levels):
                        frame[quantile_column(name, level)] = bands[i, :, f, k]
            frame.insert(0, "step", np.arange(1, steps + 1))
            if detector is not None:  # the probability at the forecast origin (the last history bar)
                frame["pump_probability"] = detector.score(arrays[i], lo=arrays[i].shape[0] - 1)[-1]
            if t is not None:
                interval = self.bundle.data.interval_ms
                last = t.iloc[-1]
                frame.insert(0, "time", [last + pd.Timedelta(milliseconds=interval * k) for k in range(1, steps + 1)])
            frames.append(frame)
        return frames


def quantile_column(feature: str, level: float) -> str:
    """The column of a feature's quantile in forecast frames: price, 0.05 -> price_q05."""
    return f"{feature}_q{round(level * 100):02d}"


def long_format(frames: Sequence[pd.DataFrame], names: Sequence[str]) -> pd.DataFrame:
    """Forecast frames (one per history, as `predict` returns them) as one long frame with a row per token,
    step and feature: token, [time,] step, feature, value (the median), and with a quantile model the
    quantiles q05, ..., q95 (the layout Darts and NeuralForecast users join on)."""
    parts = []
    for name, frame in zip(names, frames, strict=True):
        ids = [c for c in ("time", "step") if c in frame.columns]
        long = frame.melt(id_vars=ids, value_vars=list(FEATURES), var_name="feature", value_name="value")
        suffixes = [c.removeprefix("price_") for c in frame.columns if c.startswith("price_q")]
        for q in suffixes:  # melt stacks feature after feature, in FEATURES order
            long[q] = np.concatenate([frame[f"{f}_{q}"].to_numpy() for f in FEATURES])
        long.insert(0, "token", name)
        parts.append(long)
    return pd.concat(parts, ignore_index=True)


def origin_windows(
    store, ranges: dict[int, tuple[int, int]], seq_len: int, every: int, groups: Sequence[str] = ()
) -> list[tuple[int, int, np.ndarray]]:
    """(token id, origin, the token's inputs: raw features, then the channel groups' columns) for forecast
    origins every `every` steps inside each range, wherever seq_len steps of history exist before the origin
    and at least one step is left after it."""
    out = []
    for t, (a, b) in sorted(ranges.items()):
        feats = read_inputs(store, t, groups)
        out.extend((t, origin, feats) for origin in range(max(a, seq_len), b - 1, every))
    return out


def history_array(history: pd.DataFrame | np.ndarray, name: str = "history") -> tuple[np.ndarray, pd.Series | None]:
    """A history as a (T, 6) float array (NaN where absent) and its times, if any, checked: positive prices,
    numeric non-negative activity, and (with a time column) bars in time order, each once, evenly spaced.
    Anything else is a one-line DataError naming the history, the row and the fix."""
    if isinstance(history, np.ndarray):
        if history.ndim != 2 or history.shape[1] != len(FEATURES):
            raise DataError(f"{name}: expected shape (steps, {len(FEATURES)}), got {history.shape}")
        values, times = history.astype(np.float64), None
    else:
        missing = [f for f in FEATURES if f not in history.columns]
        if missing:
            raise DataError(
                f"{name}: missing column(s) {missing}; a history has time,{','.join(FEATURES)} (leave absent "
                "features empty, as `pumpcast export` writes them)"
            )
        frame = history[list(FEATURES)]
        values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        text = frame.notna().to_numpy() & ~np.isfinite(values)
        if text.any():
            row, col = (int(v[0]) for v in np.nonzero(text))
            raise DataError(
                f"{name}: column {FEATURES[col]!r} row {row + 2} is {frame.iat[row, col]!r}, not a number; "
                "leave absent values empty"
            )
        times = _history_times(history["time"], name) if "time" in history.columns else None
    price = values[:, 0]
    if not (np.isfinite(price) & (price > 0)).all():
        row = int(np.flatnonzero(~(np.isfinite(price) & (price > 0)))[0])
        raise DataError(f"{name}: column 'price' row {row + 2} is not a positive number")
    negative = np.nan_to_num(values[:, 1:5], nan=0.0) < 0
    if negative.any():
        row, col = (int(v[0]) for v in np.nonzero(negative))
        raise DataError(f"{name}: column {FEATURES[col + 1]!r} row {row + 2} is negative; it must be >= 0")
    if np.isinf(values).any():
        row, col = (int(v[0]) for v in np.nonzero(np.isinf(values)))
        raise DataError(f"{name}: column {FEATURES[col]!r} row {row + 2} is infinite")
    return values, times


def history_inputs(
    history: pd.DataFrame | np.ndarray, groups: Sequence[str], name: str = "history"
) -> tuple[np.ndarray, pd.Series | None]:
    """history_array, then the wide inputs (T, 6 + C) of a model that reads the channel groups: a frame's extra
    columns (schema.EXTRA_FEATURES, as `pumpcast export` writes them) and its times feed the channels; what a
    history lacks is absent."""
    values, times = history_array(history, name)
    if not groups:
        return values, times
    extras = frame_extras(history) if isinstance(history, pd.DataFrame) else None
    stamps = None if times is None else times.dt.tz_convert(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    return np.concatenate([values, covariates(values, extras, stamps, groups)], axis=1), times


def frame_extras(frame: pd.DataFrame) -> np.ndarray | None:
    """A bar frame's extras (T, len(EXTRA_FEATURES)), NaN where a column is missing or empty; None when it has
    none of them (as `pumpcast export` writes bars of a source without taker sides)."""
    if not any(c in frame.columns for c in EXTRA_FEATURES):
        return None
    return frame.reindex(columns=list(EXTRA_FEATURES)).apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)


def history_interval(times: pd.Series | None) -> int | None:
    """The bar length (ms) of a history's times (evenly spaced: history_array checks it); None without times
    or with a single bar."""
    if times is None or len(times) < 2:
        return None
    return int((times.iloc[1] - times.iloc[0]) / pd.Timedelta(milliseconds=1))


def _history_times(column: pd.Series, name: str) -> pd.Series:
    """The bars' times: parsed, in order, unique and evenly spaced (a model reads bars, not clock times)."""
    try:
        times = pd.to_datetime(column, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"{name}: column 'time' is not ISO-8601 time ({exc}); write times as `pumpcast export` does"
        ) from exc
    if times.isna().any():
        raise DataError(f"{name}: column 'time' row {int(np.flatnonzero(times.isna())[0]) + 2} is empty")
    step = np.diff(times.dt.tz_convert(None).to_numpy().astype("datetime64[ms]").astype(np.int64))
    if step.size and (step <= 0).any():
        row = int(np.flatnonzero(step <= 0)[0]) + 3
        what = "repeats the time before it" if step[row - 3] == 0 else "is earlier than the row before it"
        raise DataError(f"{name}: row {row} {what}; give each bar once, in time order")
    if step.size and (step != step[0]).any():
        row = int(np.flatnonzero(step != step[0])[0]) + 3
        raise DataError(
            f"{name}: bars are not evenly spaced (row {row} is {step[row - 3] // 1000} s after the one before, "
            f"the first ones {step[0] // 1000} s); fill missing bars (price carried forward, zero activity)"
        )
    return times
