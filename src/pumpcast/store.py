"""The token store: one compressed, chunked HDF5 file per token plus JSON/NumPy side files, in the seed's layout.

    DIR/sequences/token_{id}.h5   raw features, availability mask, timestamps, events, schema attributes
    DIR/token_metadata.json       key (address or pair@start) -> id, source, interval, time range, features
    DIR/normalization_params.npy  per-feature normalisation fitted on training windows only
    DIR/split_info.json           the split: strategy, ratios, seed, token ids and index ranges

Every write goes to a temporary name and is renamed into place, under a lock file, so readers never see a
half-written file and two writers never interleave.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import h5py
import numpy as np
import pandas as pd

from pumpcast.files import atomic_write, atomic_write_json
from pumpcast.schema import (
    EVENT_DTYPE,
    FEATURES,
    SCHEMA_VERSION,
    PumpcastError,
    TokenSeries,
    array_to_events,
    events_to_array,
)
from pumpcast.timeutil import iso

CHUNK_ROWS = 1024


class TokenDataManager:
    """Reads and writes one store directory; see the module docstring for its layout."""

    def __init__(self, data_dir: str | Path, lock_timeout: float = 0.0):
        self.dir = Path(data_dir)
        self.sequences = self.dir / "sequences"
        self.metadata_path = self.dir / "token_metadata.json"
        self.normalization_path = self.dir / "normalization_params.npy"
        self.split_path = self.dir / "split_info.json"
        self.lock_timeout = lock_timeout

    # ---------------------------------------------------------------- metadata
    def metadata(self) -> dict[str, Any]:
        """The store's metadata; an empty store's when there is none yet."""
        if not self.metadata_path.exists():
            return {"schema_version": SCHEMA_VERSION, "features": list(FEATURES), "index": {}, "tokens": {}}
        try:
            meta = json.loads(self.metadata_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PumpcastError(
                f"{self.metadata_path}: unreadable token metadata ({exc}); restore or rebuild it"
            ) from exc
        self._check_version(meta.get("schema_version", 0), self.metadata_path)
        return meta

    @staticmethod
    def _check_version(version: int, path: Path) -> None:
        if int(version) > SCHEMA_VERSION:
            raise PumpcastError(
                f"{path}: written by a newer pumpcast (store schema {version} > {SCHEMA_VERSION}); upgrade pumpcast"
            )

    def token_ids(self) -> list[int]:
        """Ids of the stored tokens, ascending."""
        return sorted(int(i) for i in self.metadata()["tokens"])

    def __len__(self) -> int:
        return len(self.metadata()["tokens"])

    def token_path(self, token_id: int) -> Path:
        return self.sequences / f"token_{token_id}.h5"

    def lengths(self) -> dict[int, int]:
        """Steps per token, from the metadata (no HDF5 reads)."""
        return {int(i): int(t["steps"]) for i, t in self.metadata()["tokens"].items()}

    # ---------------------------------------------------------------- writing
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's write lock, or fail at once with a one-line error if another process holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.dir / ".lock"), timeout=self.lock_timeout)
        try:
            with lock:
                yield
        except filelock.Timeout as exc:
            raise PumpcastError(
                f"{self.dir}: another process is writing this store (lock {self.dir / '.lock'}); "
                "wait for it to finish and run again"
            ) from exc

    def write(self, tokens: Iterable[TokenSeries]) -> list[int]:
        """Store tokens: a key already stored is replaced in place (same id), a new key gets the next id.

        Each token file is written under a temporary name and renamed; the metadata is rewritten once at the
        end, so an interrupted write leaves the previous store readable.
        """
        with self.lock():
            meta = self.metadata()
            entries = []
            for tok in tokens:
                tok.token_id = self.assign_ids(meta, [tok.key])[tok.key]
                entries.append(self.write_token_file(tok))
            self.commit(meta, entries)
        return [e["id"] for e in entries]

    @staticmethod
    def assign_ids(meta: dict[str, Any], keys: Iterable[str]) -> dict[str, int]:
        """Id of each key: its stored id, else the next free one (recorded in meta's index)."""
        out = {}
        next_id = max((int(i) for i in meta["index"].values()), default=-1) + 1
        for key in keys:
            if key not in meta["index"]:
                meta["index"][key], next_id = next_id, next_id + 1
            out[key] = int(meta["index"][key])
        return out

    def commit(self, meta: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        """Record written token files in the metadata, atomically. Call with the lock held."""
        for e in entries:
            meta["tokens"][str(e["id"])] = {k: v for k, v in e.items() if k != "id"}
        meta["index"] = {k: v for k, v in meta["index"].items() if str(v) in meta["tokens"]}
        meta["schema_version"] = SCHEMA_VERSION
        meta["features"] = list(FEATURES)
        meta["tokens"] = dict(sorted(meta["tokens"].items(), key=lambda kv: int(kv[0])))
        atomic_write_json(self.metadata_path, meta)

    def write_token_file(self, tok: TokenSeries) -> dict[str, Any]:
        """Write one token's HDF5 file (tok.token_id must be set) and return its metadata entry."""
        self._write_token(tok)
        return {
            "id": tok.token_id,
            "key": tok.key,
            "symbol": tok.symbol,
            "source": tok.source,
            "interval_ms": tok.interval_ms,
            "first_time": iso(tok.timestamps[0]),
            "last_time": iso(tok.timestamps[-1]),
            "steps": int(tok.features.shape[0]),
            "available": tok.available,
            "events": len(tok.events),
            "events_known": bool(tok.events_known),
        }

    def _write_token(self, tok: TokenSeries) -> None:
        feats = np.asarray(tok.features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != len(FEATURES):
            raise PumpcastError(f"token {tok.key}: features must have shape (T, {len(FEATURES)}), got {feats.shape}")
        chunk = (min(CHUNK_ROWS, feats.shape[0]), len(FEATURES))

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset(
                    "features", data=feats, chunks=chunk, compression="gzip", compression_opts=1, shuffle=True
                )
                f.create_dataset("mask", data=np.isfinite(feats), chunks=chunk, compression="gzip", shuffle=True)
                f.create_dataset(
                    "timestamps",
                    data=np.asarray(tok.timestamps, dtype=np.int64),
                    chunks=(chunk[0],),
                    compression="gzip",
                    shuffle=True,
                )
                f.create_dataset("events", data=events_to_array(tok.events), dtype=EVENT_DTYPE)
                f.attrs["schema_version"] = SCHEMA_VERSION
                f.attrs["feature_names"] = json.dumps(list(FEATURES))
                f.attrs["interval_ms"] = int(tok.interval_ms)
                f.attrs["token_id"] = int(tok.token_id)
                f.attrs["key"] = tok.key
                f.attrs["symbol"] = tok.symbol
                f.attrs["source"] = tok.source
                f.attrs["events_known"] = bool(tok.events_known)

        atomic_write(self.token_path(tok.token_id), write, suffix=".h5")

    # ---------------------------------------------------------------- reading
    def read(self, token_id: int) -> TokenSeries:
        """One stored token, with a one-line error for a missing, corrupt, truncated or too-new file."""
        path = self.token_path(token_id)
        if not path.exists():
            raise PumpcastError(f"{path}: token {token_id} is not in the store {self.dir}; see token_metadata.json")
        try:
            with h5py.File(path, "r") as f:
                self._check_version(f.attrs.get("schema_version", 0), path)
                names = json.loads(f.attrs["feature_names"])
                if names != list(FEATURES):
                    raise PumpcastError(f"{path}: features {names} differ from {list(FEATURES)}; re-ingest the token")
                feats = f["features"][()]
                mask = f["mask"][()]
                return TokenSeries(
                    key=str(f.attrs["key"]),
                    symbol=str(f.attrs["symbol"]),
                    source=str(f.attrs["source"]),
                    interval_ms=int(f.attrs["interval_ms"]),
                    timestamps=f["timestamps"][()],
                    features=np.where(mask, feats, np.nan),
                    events=array_to_events(f["events"][()]),
                    token_id=int(token_id),
                    events_known=bool(f.attrs.get("events_known", True)),
                )
        except PumpcastError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise PumpcastError(
                f"{path}: corrupt or truncated HDF5 file ({type(exc).__name__}: {exc}); re-ingest or regenerate it"
            ) from exc

    def read_features(self, token_id: int) -> np.ndarray:
        """Raw features (T, 6) of one token, NaN where absent."""
        return self.read(token_id).features

    # ---------------------------------------------------------------- side files
    def save_split(self, split_info: dict[str, Any]) -> None:
        with self.lock():
            atomic_write_json(self.split_path, split_info)

    def load_split(self) -> dict[str, Any] | None:
        if not self.split_path.exists():
            return None
        try:
            return json.loads(self.split_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PumpcastError(f"{self.split_path}: unreadable split info ({exc}); delete it to re-split") from exc

    def save_normalization(self, params: np.ndarray) -> None:
        with self.lock():

            def write(tmp: Path) -> None:
                with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a path
                    np.save(fh, params, allow_pickle=False)

            atomic_write(self.normalization_path, write)

    def load_normalization(self) -> np.ndarray | None:
        if not self.normalization_path.exists():
            return None
        try:
            return np.load(self.normalization_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise PumpcastError(f"{self.normalization_path}: unreadable ({exc}); delete it to refit") from exc

    # ---------------------------------------------------------------- export
    def export_csv(self, token_id: int, output: str | Path, events_output: str | Path | None = None) -> None:
        """Write one token's bars as CSV (time, the six features; empty where absent), and its events."""
        tok = self.read(token_id)
        frame = pd.DataFrame(tok.features, columns=list(FEATURES))
        frame.insert(0, "time", pd.to_datetime(tok.timestamps, unit="ms", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"))
        atomic_write(Path(output), lambda p: frame.to_csv(p, index=False, float_format="%.10g"), suffix=".csv")
        if events_output is not None:
            ev = pd.DataFrame(
                [(e.type, e.start, e.peak, e.end, e.magnitude) for e in tok.events],
                columns=["type", "start", "peak", "end", "magnitude"],
            )
            for col in ("start", "peak", "end"):
                ev[f"{col}_time"] = [iso(tok.timestamps[s]) if 0 <= s < len(tok.timestamps) else "" for s in ev[col]]
            atomic_write(Path(events_output), lambda p: ev.to_csv(p, index=False), suffix=".csv")
