"""Everything a model file keeps that is chosen on validation data after training, in one place, in the order
`calibrate` runs it (training.fit calls it; a backtest fold's fit too):

1. the pump head (`calibrate_pump_head`): Platt scaling of its logits, which output raises alarms and the
   alarm threshold for the false-alarm budget; the baselines tuned beside it (detectors.fit_baselines) and the
   ensemble of the model with its best baseline (`fit_ensemble`), each with its threshold;
2. the price forecast of a quantile model (forecast_calibration.calibrate_forecasts: empirical average,
   median shrink, ridge blend);
3. the rollout damping of long forecasts (`fit_damping`).

Validation ranges only choose; training ranges only fit (the baselines' logistic regression, the ridge).
The records these produce live with what they describe: pumps.PumpCalibration, forecast_calibration's
ForecastCalibration, ModelBundle.rollout_damping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from pumpcast import baselines
from pumpcast.channels import covariates
from pumpcast.detection import RangeScores, score_ranges
from pumpcast.detectors import BaselineSet, Ensemble, fit_baselines
from pumpcast.events import ANY, PUMP_TARGETS, TokenScores, judged_kind, pump_labels
from pumpcast.forecast_calibration import calibrate_forecasts
from pumpcast.forecasting import Forecaster, origin_windows
from pumpcast.metrics import EventMetrics, average_precision, choose_threshold, event_metrics
from pumpcast.modelfile import ModelBundle
from pumpcast.pumps import MIN_EVENTS, PumpCalibration, calibrated, fit_platt
from pumpcast.schema import PRICE
from pumpcast.splits import tokens_with_events
from pumpcast.stacking import STACK_GROUPS, Stacker, fit_stacker, stack_inputs
from pumpcast.store import TokenDataManager

log = logging.getLogger(__name__)
#: Training tokens the baselines are tuned and fitted on at most (a large synthetic store needs no more).
BASELINE_TOKENS = 64


def calibrate(
    bundle: ModelBundle,
    store: TokenDataManager,
    val_ranges: dict[int, tuple[int, int]],
    max_false_alarms_per_day: float,
    train_ranges: dict[int, tuple[int, int]] | None = None,
    out_of_fold: Mapping[int, np.ndarray] | None = None,
    cross_fit: int = 0,
) -> ModelBundle:
    """The bundle with what is chosen on validation data only: the pump calibration (with a pump head; on
    out-of-fold logits when given, see calibrate_pump_head), the forecast calibration (a quantile model with
    seq_len >= baselines.WARMUP and > horizon + 1; its ridge fits train_ranges) and the rollout damping."""
    pump = (
        calibrate_pump_head(
            bundle, store, val_ranges, max_false_alarms_per_day, train_ranges, out_of_fold, cross_fit
        )
        if bundle.config.pump_head
        else None
    )
    bundle = replace(bundle, pump=pump)
    forecaster = Forecaster(bundle)
    L, H = bundle.config.seq_len, bundle.config.horizon
    if len(forecaster.quantile_levels) > 1 and L >= baselines.WARMUP and L > H + 1 and train_ranges:
        log.info(
            "calibrating the price forecast (empirical average, shrink, ridge blend) on %d validation token(s)",
            len(val_ranges),
        )

        def first_pass(history: np.ndarray) -> np.ndarray:
            q = forecaster.forecast(history, H, calibrated=False)[0][:, :, PRICE]
            return np.log(q) - np.log(history[:, -1, PRICE])[:, None, None]

        calibration = calibrate_forecasts(
            first_pass,
            store,
            train_ranges,
            val_ranges,
            L,
            H,
            forecaster.quantile_levels,
            bundle.config.groups,
        )
        bundle = replace(bundle, forecast_calibration=calibration)
    log.info("choosing the rollout damping on %d validation token(s)", len(val_ranges))
    damping = fit_damping(Forecaster(bundle), store, val_ranges)
    log.info("rollout damping %g (lowest validation error of long forecasts; 1 = the model's own rollout)", damping)
    return replace(bundle, rollout_damping=damping)


def calibrate_pump_head(
    bundle: ModelBundle,
    store: TokenDataManager,
    val_ranges: dict[int, tuple[int, int]],
    max_false_alarms_per_day: float,
    train_ranges: dict[int, tuple[int, int]] | None = None,
    out_of_fold: Mapping[int, np.ndarray] | None = None,
    cross_fit: int = 0,
) -> PumpCalibration:
    """On validation data only: Platt-scale the pump head, choose which output raises alarms ("now" or "any",
    by validation recall within the false-alarm budget, then fewer false alarms) and its alarm threshold to the
    budget; fit the stacker (stacking.py) and its threshold; name the better of the two the detector; and tune
    the baselines (detectors.fit_baselines: z-scores on the training and validation ranges, which they do not
    fit, the logistic regression fitted on the training ranges). Everything evaluate and detect use later comes
    from here.

    out_of_fold: token id -> raw pump logits (T, 3) of training and validation tokens, each from a sub-model
    that never trained on it (training.cross_fit_logits, `cross_fit` sub-models); the choices are then made on
    all of them instead of the validation tokens' scores by the model itself."""
    K = bundle.config.pump_horizon
    if out_of_fold:
        log.info("calibrating the pump detectors on %d token(s) scored out of fold", len(out_of_fold))
        scored = [RangeScores(store.read(t), logits, {}) for t, logits in sorted(out_of_fold.items())]
        scored = [r for r in scored if r.token.events_known]
    else:
        log.info("calibrating the pump head on %d validation token(s)", len(val_ranges))
        scored = score_ranges(bundle, store, val_ranges, BaselineSet())
    if not scored:
        log.info("no validation token has known events: the pump head stays uncalibrated and raises no alarm")
        return PumpCalibration(
            horizon=K,
            max_false_alarms_per_day=max_false_alarms_per_day,
            note="no validation token with known events: uncalibrated, no alarms",
        )
    read = {r.token.token_id: r.token for r in scored}
    judged = {t.token_id for t in judged_kind(list(read.values()))}
    scored = [r for r in scored if r.token.token_id in judged]
    labels = [pump_labels(len(r.token.features), r.token.events, K, r.token.interval_ms) for r in scored]
    platt, alarm_output, threshold, val_metrics = _calibrate_network(scored, labels, K, max_false_alarms_per_day)
    stacker, stacker_metrics = _fit_stacker(scored, labels, K, max_false_alarms_per_day, bundle.data.seed)
    detector = "model"
    if stacker is not None and _rank(stacker_metrics) > _rank(val_metrics):
        detector = "stacker"
    events = val_metrics.events
    note = ""
    if events < MIN_EVENTS:
        note = (
            f"thresholds rest on {events} validation event(s) (fewer than {MIN_EVENTS}); cross-fit "
            "(--cross-fit K) or add tokens with events"
        )
        log.warning("pump calibration: %s", note)
    with_events = tokens_with_events(store)
    train_ranges = dict(  # enough tokens to tune on, the same ones every time: those with events first
        sorted((train_ranges or {}).items(), key=lambda kv: (kv[0] not in with_events, kv[0]))[:BASELINE_TOKENS]
    )
    tokens = [read[t] if t in read else store.read(t) for t in sorted({*train_ranges, *val_ranges})]
    baselines = fit_baselines(tokens, train_ranges, val_ranges, K, max_false_alarms_per_day)
    probability = PumpCalibration(K, platt, alarm_output=alarm_output).probability
    ensemble = fit_ensemble(scored, probability, baselines, K, max_false_alarms_per_day)
    candidates = {"model": (threshold, val_metrics)} | _stacked(stacker, stacker_metrics)
    _log_choice(candidates, detector, max_false_alarms_per_day)
    return PumpCalibration(
        horizon=K,
        calibration=platt,
        threshold=threshold,
        max_false_alarms_per_day=max_false_alarms_per_day,
        alarm_output=alarm_output,
        baselines=baselines,
        ensemble=ensemble,
        val_metrics=val_metrics.to_dict()
        | ({"stacker": stacker_metrics.to_dict()} if stacker_metrics is not None else {}),
        note=note,
        stacker=stacker,
        detector=detector,
        val_events=events,
        cross_fit=cross_fit if out_of_fold else 0,
    )


def _calibrate_network(
    scored: list[RangeScores], labels: list[np.ndarray], horizon: int, budget: float
) -> tuple[list[list[float]], str, float, EventMetrics]:
    """Platt scaling of the network's logits, the output that raises alarms (by recall within the budget, then
    fewer false alarms) and its threshold, with the metrics behind the choice."""
    keep = [np.isfinite(r.logits[:, 0]) for r in scored]
    all_logits = np.concatenate([r.logits[k] for r, k in zip(scored, keep, strict=True)])
    all_labels = np.concatenate([y[k] for y, k in zip(labels, keep, strict=True)])
    platt = [list(fit_platt(all_logits[:, k], all_labels[:, k])) for k in range(len(PUMP_TARGETS))]
    choices = []
    for output in ("any", "now"):  # "soon" alone is too weak a signal to alarm on
        k = PUMP_TARGETS.index(output)
        its = [
            TokenScores(r.token.token_id, calibrated(r.logits, platt)[:, k], r.token.events, r.steps_per_day)
            for r in scored
        ]
        th = choose_threshold(its, horizon, budget)
        m = event_metrics(its, th, horizon)
        choices.append((-np.nan_to_num(m.recall), m.false_alarms_per_day, output, th, m))
    _, _, alarm_output, threshold, metrics = min(choices, key=lambda c: c[:2])
    return platt, alarm_output, threshold, metrics


def _stacked(stacker: Stacker | None, metrics: EventMetrics | None) -> dict[str, tuple[float, EventMetrics]]:
    return {"stacker": (stacker.threshold, metrics)} if stacker is not None and metrics is not None else {}


def _log_choice(candidates: dict[str, tuple[float, EventMetrics]], detector: str, budget: float) -> None:
    """One line per candidate detector: its threshold and validation metrics, and which one `detect` uses."""
    for name, (threshold, m) in candidates.items():
        log.info(
            "%s: alarms at probability >= %.4g (%d event(s): recall %.2f, %.2f false alarms/day of a budget of %g, "
            "AUPRC %.3f)%s",
            name,
            threshold,
            m.events,
            np.nan_to_num(m.recall),
            m.false_alarms_per_day,
            budget,
            np.nan_to_num(m.auprc),
            " <- detect uses it" if name == detector else "",
        )


def _rank(m: EventMetrics) -> tuple[float, float]:
    """How detectors are compared on validation: events detected within the budget, then AUPRC."""
    return (np.nan_to_num(m.recall), np.nan_to_num(m.auprc))


def _fit_stacker(
    scored: list[RangeScores], labels: list[np.ndarray], horizon: int, budget: float, seed: int
) -> tuple[Stacker | None, EventMetrics | None]:
    """The stacker on the scored tokens and its threshold for the budget, chosen (and its metrics measured) on
    its grouped cross-validated probabilities; (None, None) without two tokens that have a pump."""
    rows = [
        stack_inputs(r.logits, covariates(r.token.features, r.token.extras, r.token.timestamps, STACK_GROUPS))
        for r in scored
    ]
    fitted = fit_stacker(rows, [y[:, ANY] for y in labels], seed)
    if fitted is None:
        return None, None
    stacker, cv = fitted
    items = [
        TokenScores(r.token.token_id, p, r.token.events, r.steps_per_day) for r, p in zip(scored, cv, strict=True)
    ]
    th = choose_threshold(items, horizon, budget)
    return replace(stacker, threshold=th), event_metrics(items, th, horizon)


def fit_ensemble(
    scored: list[RangeScores], probability, baselines: BaselineSet, horizon: int, max_false_alarms_per_day: float
) -> Ensemble | None:
    """The model with the baseline of the highest validation AUPRC (detectors.Ensemble) and its threshold for the
    budget, all on the validation tokens; None without a baseline or a validation event."""
    model = [probability(r.logits) for r in scored]
    labels = np.concatenate(
        [
            pump_labels(len(p), r.token.events, horizon, r.token.interval_ms)[:, ANY]
            for p, r in zip(model, scored, strict=True)
        ]
    )
    best: tuple[float, str, list[np.ndarray]] | None = None
    for name, det in baselines.detectors.items():
        base = [np.where(np.isfinite(p), det.score(r.token), np.nan) for p, r in zip(model, scored, strict=True)]
        ap = average_precision(labels, np.concatenate(base))
        if np.isfinite(ap) and (best is None or ap > best[0]):
            best = (ap, name, base)
    if best is None:
        return None
    _, name, base = best
    both = np.isfinite(np.concatenate(model)) & np.isfinite(np.concatenate(base))
    ens = Ensemble.fit(name, np.concatenate(model)[both], np.concatenate(base)[both])
    items = [
        TokenScores(r.token.token_id, ens.score(p, b), r.token.events, r.steps_per_day)
        for p, b, r in zip(model, base, scored, strict=True)
    ]
    return replace(ens, threshold=choose_threshold(items, horizon, max_false_alarms_per_day))


def fit_damping(
    forecaster: Forecaster,
    store: TokenDataManager,
    ranges: dict[int, tuple[int, int]],
    steps: int = 500,
    every: int = 200,
    grid: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.0),
) -> float:
    """The rollout damping with the lowest mean absolute log-price error over forecasts of up to `steps`
    from origins every `every` steps inside the given (validation) ranges."""
    origins = origin_windows(store, ranges, forecaster.seq_len, every, forecaster.bundle.config.groups)
    if not origins:
        return 1.0
    truth = np.full((len(origins), steps), np.nan)
    for i, (t, origin, feats) in enumerate(origins):
        seen = feats[origin : min(origin + steps, ranges[t][1]), PRICE]
        truth[i, : seen.size] = np.log(seen)
    hist = np.stack([feats[o - forecaster.seq_len : o] for _, o, feats in origins])
    errors = {g: np.nanmean(np.abs(np.log(forecaster.rollout(hist, steps, g)[..., PRICE]) - truth)) for g in grid}
    return float(min(errors, key=lambda g: (errors[g], -g)))
