"""The token store: one compressed, chunked HDF5 file per token plus JSON/NumPy side files, in the seed's layout.

    DIR/sequences/token_{id}.h5   raw features, availability mask, timestamps, events, schema attributes
    DIR/token_metadata.json       key (address or pair@start) -> id, source, interval, time range, features
    DIR/normalization_params.npy  per-feature normalisation fitted on training windows only
    DIR/split_info.json           the split: strategy, ratios, seed, token ids and index ranges

Writes are transactions. A write that touches several tokens (generate, ingest, re-ingest) stages each new
token file under a hidden name, then commits by writing one journal file (DIR/.transaction.json: the renames
and the new metadata), then applies it (renames, metadata) and removes the journal. A crash before the
journal leaves the old store (the staged files are orphans that the next writer or `check` removes); a
crash after it leaves a committed write that readers already see and the next writer or `check` finishes.
Every token file records the transaction that wrote it, and readers compare it with the metadata, so a
reader never mixes an old metadata entry with a new file. One writer at a time holds the lock file. A journal
is applied only when it renames staged token files of sequences/ onto token files of sequences/.

`check(repair=True)` never deletes: it rebuilds the metadata from the token files and moves what it cannot
place into DIR/quarantine/<time>-<id>/, which nothing reads again.
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import re
import signal
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import filelock
import h5py
import numpy as np
import pandas as pd

from pumpcast.files import atomic_write, atomic_write_json, inside, pause_point
from pumpcast.schema import (
    EVENT_DTYPE,
    EXTRA_FEATURES,
    FEATURES,
    SCHEMA_VERSION,
    DataError,
    PumpcastError,
    TokenSeries,
    array_to_events,
    events_to_array,
)
from pumpcast.timeutil import iso

CHUNK_ROWS = 1024
STAGED = ".staged"  # suffix of a token file written by a transaction that has not committed yet
TOKEN_FILE = re.compile(r"token_(\d+)\.h5")
STAGED_FILE = re.compile(r"\.token_(\d+)\.h5\.[0-9a-f]+\.staged")
#: Where `check --repair` moves what it cannot place in the store (nothing is ever deleted).
QUARANTINE = "quarantine"


def die_with_parent(parent_pid: int) -> None:
    """Worker initializer: make this process receive SIGKILL when its parent dies (Linux), so workers of a
    killed writer stop writing at once; exit now if the parent died while this process was starting."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


class Transaction:
    """The tokens one write stages: ids assigned from the metadata, entries of the staged files."""

    def __init__(self, meta: dict[str, Any]):
        self.txid = uuid.uuid4().hex[:12]
        self.meta = meta
        self.entries: list[dict[str, Any]] = []

    def assign(self, keys: Iterable[str]) -> dict[str, int]:
        """Id of each key: its stored id, else the next free one."""
        return TokenDataManager.assign_ids(self.meta, keys)

    def add(self, entries: Iterable[dict[str, Any]]) -> None:
        self.entries.extend(entries)


@dataclass(frozen=True)
class TokenEntry:
    """What the metadata says of one stored token (readers use this, not the raw JSON)."""

    id: int
    key: str
    source: str
    interval_ms: int
    steps: int
    events: int
    txid: str

    @classmethod
    def of(cls, token_id: str | int, e: dict[str, Any]) -> TokenEntry:
        return cls(
            int(token_id),
            str(e.get("key", "")),
            str(e.get("source", "")),
            int(e["interval_ms"]),
            int(e["steps"]),
            int(e.get("events", 0)),
            str(e.get("txid", "")),
        )


@dataclass
class StoreCheck:
    """What `TokenDataManager.check` found (and, with repair, did): one line per problem, leftover file, repair."""

    problems: list[str] = field(default_factory=list)  # disagreements and damage (after a repair: what is left)
    orphans: list[str] = field(default_factory=list)  # files no write explains (a repair quarantines them)
    repairs: list[str] = field(default_factory=list)  # what the repair did, one line each
    quarantined: list[str] = field(default_factory=list)  # files in DIR/quarantine/, of this repair and earlier
    quarantine: Path | None = None  # this repair's quarantine folder, when it moved anything
    tokens: int = 0


class TokenDataManager:
    """Reads and writes one store directory; see the module docstring for its layout."""

    def __init__(self, data_dir: str | Path, lock_timeout: float = 0.0):
        self.dir = Path(data_dir)
        if self.dir.exists() and not self.dir.is_dir():
            raise DataError(f"{self.dir}: is a file, not a store directory; give data_dir a folder")
        self.sequences = self.dir / "sequences"
        self.metadata_path = self.dir / "token_metadata.json"
        self.normalization_path = self.dir / "normalization_params.npy"
        self.split_path = self.dir / "split_info.json"
        self.lock_timeout = lock_timeout
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None  # (stat of the file, metadata)

    # ---------------------------------------------------------------- metadata
    @property
    def journal_path(self) -> Path:
        return self.dir / ".transaction.json"

    def _journal(self) -> dict[str, Any] | None:
        """The committed transaction not yet applied, if any (it is the store's current state), checked: it may
        only rename staged files of this store onto token files of this store."""
        try:
            journal = json.loads(self.journal_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError) as exc:  # written atomically, so this is damage, not a crash
            raise DataError(
                f"{self.journal_path}: damaged transaction journal ({type(exc).__name__}); "
                f"run pumpcast check --repair --data-dir {self.dir}"
            ) from exc
        problem = self._journal_problem(journal)
        if problem:
            raise DataError(
                f"{self.journal_path}: {problem}; refused, nothing renamed; "
                f"run pumpcast check --repair --data-dir {self.dir} (it moves the journal to quarantine)"
            )
        return journal

    def _journal_problem(self, journal: Any) -> str:
        """Why a journal cannot be applied ('' when it can)."""
        if not isinstance(journal, dict) or not isinstance(journal.get("metadata"), dict):
            return "the journal holds no metadata"
        renames = journal.get("renames")
        if not isinstance(renames, dict):
            return "the journal's renames are not a JSON object"
        for staged, final in renames.items():
            for what, name in (("staged file", staged), ("rename target", final)):
                try:
                    inside(self.sequences, name, self.journal_path, what)
                except DataError:
                    return f"its {what} {name!r} is not inside {self.sequences}"
            token, source = TOKEN_FILE.fullmatch(final), STAGED_FILE.fullmatch(staged)
            if token is None or source is None or token[1] != source[1]:
                return f"it renames {staged!r} to {final!r}, which is not a staged and a token file of one token"
        return ""

    def metadata(self) -> dict[str, Any]:
        """The store's metadata (a committed transaction's when one is being applied); an empty store's when
        there is none yet. Checked for the schema version and its types."""
        journal = self._journal()
        if journal is not None:
            return self._checked(journal["metadata"], self.journal_path)
        if not self.metadata_path.exists():
            return {
                "schema_version": SCHEMA_VERSION,
                "features": list(FEATURES),
                "index": {},
                "tokens": {},
            }
        try:
            meta = json.loads(self.metadata_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{self.metadata_path}: unreadable token metadata ({exc}); restore or rebuild it") from exc
        return self._checked(meta, self.metadata_path)

    def _checked(self, meta: Any, path: Path) -> dict[str, Any]:
        """Metadata with the structure readers rely on, or a one-line error naming the field."""
        if not isinstance(meta, dict):
            raise DataError(f"{path}: token metadata must be a JSON object, got {type(meta).__name__}; restore it")
        version = meta.get("schema_version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise DataError(f"{path}: schema_version {version!r} is not a number; restore the metadata")
        self._check_version(version, path)
        tokens, index = meta.get("tokens"), meta.get("index")
        if not isinstance(tokens, dict) or not isinstance(index, dict):
            raise DataError(f"{path}: 'tokens' and 'index' must be JSON objects; restore the metadata")
        for key, tid in index.items():
            if not (isinstance(tid, int) and not isinstance(tid, bool) and tid >= 0):
                raise DataError(f"{path}: index entry {key!r}: id {tid!r} is not a token id; restore the metadata")
        for tid, entry in tokens.items():
            ok = isinstance(entry, dict) and str(tid).isascii() and str(tid).isdigit()
            for name in ("steps", "interval_ms"):
                value = entry.get(name) if ok else None
                if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                    raise DataError(f"{path}: token {tid}: {name} {value!r} is not a positive integer; restore it")
        return meta

    @staticmethod
    def _check_version(version: int, path: Path) -> None:
        if int(version) > SCHEMA_VERSION:
            raise DataError(
                f"{path}: written by a newer pumpcast (store schema {version} > {SCHEMA_VERSION}); upgrade pumpcast"
            )

    def token_ids(self) -> list[int]:
        """Ids of the stored tokens, ascending."""
        return sorted(int(i) for i in self.metadata()["tokens"])

    def __len__(self) -> int:
        return len(self.metadata()["tokens"])

    def token_path(self, token_id: int) -> Path:
        return self.sequences / f"token_{token_id}.h5"

    def entries(self) -> dict[int, TokenEntry]:
        """What the metadata says of every token, by id (no HDF5 reads)."""
        return {int(t): TokenEntry.of(t, e) for t, e in self.metadata()["tokens"].items()}

    def intervals(self, token_ids: Iterable[int] | None = None) -> dict[int, int]:
        """Bar length (ms) of the given tokens (default: all), from the metadata."""
        entries = self.entries()
        ids = list(entries) if token_ids is None else [int(t) for t in token_ids]
        return {t: entries[t].interval_ms for t in ids if t in entries}

    def require(self, token_ids: Iterable[int]) -> None:
        """A one-line DataError naming the ids not in the store (and those it holds), before any work starts."""
        known = set(self.token_ids())
        missing = [int(t) for t in token_ids if int(t) not in known]
        if missing:
            raise DataError(f"token(s) {missing} not in the store {self.dir}; it holds ids {sorted(known)}")

    def lengths(self) -> dict[int, int]:
        """Steps per token, from the metadata (no HDF5 reads)."""
        return {t: e.steps for t, e in self.entries().items()}

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
            raise DataError(
                f"{self.dir}: another process is writing this store (lock {self.dir / '.lock'}); "
                "wait for it to finish and run again"
            ) from exc

    def write(self, tokens: Iterable[TokenSeries], allow_mixed_intervals: bool = False) -> list[int]:
        """Store tokens in one transaction: a key already stored is replaced (same id), a new key gets the next
        id. All of them or none are in the store afterwards, whenever the process dies. Tokens whose bar
        interval differs from the store's are refused unless allow_mixed_intervals."""
        tokens = list(tokens)
        seen: dict[str, str] = {}
        for tok in tokens:
            if tok.key in seen:
                raise DataError(f"{tok.key}: given twice ({seen[tok.key]} and {tok.source}); store one of them")
            seen[tok.key] = tok.source
        with self.transaction() as txn:
            self.check_interval(txn.meta, {t.interval_ms for t in tokens}, allow_mixed_intervals)
            for tok in tokens:
                tok.token_id = txn.assign([tok.key])[tok.key]
                txn.add([self.stage_token(tok, txn.txid)])
        return [e["id"] for e in txn.entries]

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Hold the lock, finish any committed transaction a crash left, stage files through the yielded
        Transaction, and commit them all at the end (nothing is committed if the block raises)."""
        with self.lock():
            self.recover()
            txn = Transaction(copy.deepcopy(self.metadata()))
            unlisted = sorted(set(self._token_files()) - {int(t) for t in txn.meta["tokens"]})
            if unlisted:  # a new token would get one of their ids and overwrite the only copy of its data
                raise DataError(
                    f"{self.dir}: sequences/ holds token files the metadata does not list (ids {unlisted[:10]}); "
                    f"run pumpcast check --repair --data-dir {self.dir} first (it rebuilds their entries)"
                )
            try:
                yield txn
            except BaseException:
                self._remove_staged()
                raise
            self._commit(txn)

    def check_interval(self, meta: dict[str, Any], intervals: set[int], allow_mixed: bool) -> None:
        """Refuse bars of another length than the store's: a model reads steps, and mixed lengths make one
        step mean two durations."""
        stored = {int(e["interval_ms"]) for e in meta["tokens"].values()}
        if not allow_mixed and len(stored | intervals) > 1:
            have = ", ".join(f"{ms // 1000} s" for ms in sorted(stored)) or "none"
            new = ", ".join(f"{ms // 1000} s" for ms in sorted(intervals))
            raise DataError(
                f"{self.dir}: holds bars of {have}, the new ones are {new}; use another store (data_dir) or "
                "allow_mixed_intervals (--allow-mixed-intervals)"
            )

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

    def _commit(self, txn: Transaction) -> None:
        """The journal write is the commit point; applying it afterwards is idempotent."""
        meta, renames = txn.meta, {}
        for e in txn.entries:
            renames[e["staged"]] = self.token_path(e["id"]).name
            meta["tokens"][str(e["id"])] = {k: v for k, v in e.items() if k not in ("id", "staged")}
        meta["index"] = {k: v for k, v in meta["index"].items() if str(v) in meta["tokens"]}
        meta["schema_version"] = SCHEMA_VERSION
        meta["features"] = list(FEATURES)
        meta["tokens"] = dict(sorted(meta["tokens"].items(), key=lambda kv: int(kv[0])))
        pause_point("before-commit")
        atomic_write_json(self.journal_path, {"txid": txn.txid, "renames": renames, "metadata": meta})
        pause_point("committed")
        self._apply()

    def _apply(self) -> None:
        """Finish the committed transaction, if any (its journal was checked: it renames inside sequences/ only)."""
        journal = self._journal()
        if journal is None:
            return
        for i, (staged, final) in enumerate(journal["renames"].items()):
            if (self.sequences / staged).exists():
                os.replace(self.sequences / staged, self.sequences / final)
            if i == 0:
                pause_point("applying")
        atomic_write_json(self.metadata_path, journal["metadata"])
        self.journal_path.unlink()

    def recover(self) -> None:
        """Under the lock: finish a committed transaction and remove files staged by one that never
        committed (its writer is dead: the lock was free)."""
        self._apply()
        self._remove_staged()

    def _remove_staged(self) -> None:
        """Files staged by a transaction that never committed: a write that did not happen (its input is where it
        was read from), so a writer removes them; `check --repair` moves them to quarantine instead."""
        for p in self.sequences.glob(f".*{STAGED}") if self.sequences.is_dir() else ():
            p.unlink(missing_ok=True)

    def _token_files(self) -> dict[int, Path]:
        """Token id -> its file, for every token file in sequences/."""
        if not self.sequences.is_dir():
            return {}
        out = {}
        for p in self.sequences.iterdir():
            m = TOKEN_FILE.fullmatch(p.name)
            if m:
                out[int(m[1])] = p
        return out

    def stage_token(self, tok: TokenSeries, txid: str) -> dict[str, Any]:
        """Write one token's HDF5 file under its staged name (tok.token_id must be set); returns its metadata
        entry for the transaction's commit."""
        staged = f".{self.token_path(tok.token_id).name}.{txid}{STAGED}"
        self._write_token(tok, self.sequences / staged, txid)
        pause_point("staged")
        return self.entry(tok) | {"txid": txid, "staged": staged}

    @staticmethod
    def entry(tok: TokenSeries) -> dict[str, Any]:
        """A token's metadata entry."""
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
            "volume_unit": tok.volume_unit,
            "quote_asset": tok.quote_asset,
        }

    def _write_token(self, tok: TokenSeries, path: Path, txid: str) -> None:
        feats = np.asarray(tok.features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != len(FEATURES) or feats.shape[0] < 1:
            raise DataError(f"token {tok.key}: features must have shape (T, {len(FEATURES)}), got {feats.shape}")
        chunk = (min(CHUNK_ROWS, feats.shape[0]), len(FEATURES))
        extras = None if tok.extras is None else np.asarray(tok.extras, dtype=np.float64)
        if extras is not None and extras.shape != (feats.shape[0], len(EXTRA_FEATURES)):
            raise DataError(f"token {tok.key}: extras must have shape (T, {len(EXTRA_FEATURES)}), got {extras.shape}")

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset(
                    "features",
                    data=feats,
                    chunks=chunk,
                    compression="gzip",
                    compression_opts=1,
                    shuffle=True,
                )
                f.create_dataset(
                    "mask",
                    data=np.isfinite(feats),
                    chunks=chunk,
                    compression="gzip",
                    shuffle=True,
                )
                f.create_dataset(
                    "timestamps",
                    data=np.asarray(tok.timestamps, dtype=np.int64),
                    chunks=(chunk[0],),
                    compression="gzip",
                    shuffle=True,
                )
                f.create_dataset("events", data=events_to_array(tok.events), dtype=EVENT_DTYPE)
                if extras is not None:
                    f.create_dataset("extras", data=extras, chunks=(chunk[0], extras.shape[1]), compression="gzip")
                    f.create_dataset("extras_mask", data=np.isfinite(extras), compression="gzip")
                    f.attrs["extra_names"] = json.dumps(list(EXTRA_FEATURES))
                f.attrs["schema_version"] = SCHEMA_VERSION
                f.attrs["feature_names"] = json.dumps(list(FEATURES))
                f.attrs["interval_ms"] = int(tok.interval_ms)
                f.attrs["token_id"] = int(tok.token_id)
                f.attrs["key"] = tok.key
                f.attrs["symbol"] = tok.symbol
                f.attrs["source"] = tok.source
                f.attrs["events_known"] = bool(tok.events_known)
                f.attrs["volume_unit"] = tok.volume_unit
                f.attrs["quote_asset"] = tok.quote_asset
                f.attrs["txid"] = txid

        atomic_write(path, write, suffix=".h5")

    # ---------------------------------------------------------------- reading
    def read(self, token_id: int) -> TokenSeries:
        """One stored token, checked against the metadata; a one-line error for a missing, corrupt, truncated
        or too-new file. A write that commits while this reads is seen whole (the read is retried)."""
        for _ in range(3):
            entry = self.metadata()["tokens"].get(str(token_id))
            if entry is None:
                raise DataError(
                    f"{self.dir}: token {token_id} is not in the store; it holds ids {self.token_ids()[:20]}"
                )
            path = self._current_file(token_id)
            tok, txid = self._read_file(path, token_id)
            if txid == entry.get("txid", "") and tok.features.shape[0] == entry["steps"]:
                return tok
        raise DataError(
            f"{path}: holds {tok.features.shape[0]} steps of write {txid or '-'}, the metadata says "
            f"{entry['steps']} of write {entry.get('txid') or '-'}; run pumpcast check --data-dir {self.dir}"
        )

    def _current_file(self, token_id: int) -> Path:
        """The token's file in the store's current state: staged by a committed transaction not applied yet,
        or its usual path."""
        final = self.token_path(token_id)
        journal = self._journal()
        for staged, name in (journal or {}).get("renames", {}).items():
            if name == final.name and (self.sequences / staged).exists():
                return self.sequences / staged
        return final

    def _read_file(self, path: Path, token_id: int) -> tuple[TokenSeries, str]:
        if not path.exists():
            raise DataError(f"{path}: token {token_id}'s file is missing; run pumpcast check --data-dir {self.dir}")
        try:
            with h5py.File(path, "r") as f:
                self._check_version(f.attrs.get("schema_version", 0), path)
                names = json.loads(f.attrs["feature_names"])
                if names != list(FEATURES):
                    raise DataError(f"{path}: features {names} differ from {list(FEATURES)}; re-ingest the token")
                feats = np.asarray(f["features"][()], dtype=np.float64)
                mask = np.asarray(f["mask"][()], dtype=bool)
                stamps = np.asarray(f["timestamps"][()], dtype=np.int64)
                if feats.ndim != 2 or feats.shape[1] != len(FEATURES) or mask.shape != feats.shape:
                    raise DataError(f"{path}: features/mask have shapes {feats.shape}/{mask.shape}; re-ingest it")
                if stamps.shape != (feats.shape[0],):
                    raise DataError(f"{path}: {stamps.shape[0]} timestamps for {feats.shape[0]} steps; re-ingest it")
                extras = self._read_extras(f, path, feats.shape[0])
                tok = TokenSeries(
                    key=str(f.attrs["key"]),
                    symbol=str(f.attrs["symbol"]),
                    source=str(f.attrs["source"]),
                    interval_ms=int(f.attrs["interval_ms"]),
                    timestamps=stamps,
                    features=np.where(mask, feats, np.nan),
                    events=array_to_events(f["events"][()]),
                    token_id=int(token_id),
                    events_known=bool(f.attrs.get("events_known", True)),
                    volume_unit=str(f.attrs.get("volume_unit", "quote")),
                    quote_asset=str(f.attrs.get("quote_asset", "")),
                    extras=extras,
                )
                return tok, str(f.attrs.get("txid", ""))
        except PumpcastError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise DataError(
                f"{path}: corrupt or truncated HDF5 file ({type(exc).__name__}: {exc}); re-ingest or regenerate it"
            ) from exc

    @staticmethod
    def _read_extras(f: h5py.File, path: Path, steps: int) -> np.ndarray | None:
        """The optional extra features in EXTRA_FEATURES order (NaN where masked or not stored); None if the file
        has none. Extras this version does not know are ignored; known ones it lacks are NaN."""
        if "extras" not in f:
            return None
        names = json.loads(f.attrs["extra_names"])
        values, mask = np.asarray(f["extras"][()], dtype=np.float64), np.asarray(f["extras_mask"][()], dtype=bool)
        if values.shape != (steps, len(names)) or mask.shape != values.shape:
            raise DataError(f"{path}: extras have shape {values.shape} for {steps} steps and {names}; re-ingest it")
        out = np.full((steps, len(EXTRA_FEATURES)), np.nan)
        for i, name in enumerate(names):
            if name in EXTRA_FEATURES:
                out[:, EXTRA_FEATURES.index(name)] = np.where(mask[:, i], values[:, i], np.nan)
        return out

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
            raise DataError(f"{self.split_path}: unreadable split info ({exc}); delete it to re-split") from exc

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
            raise DataError(f"{self.normalization_path}: unreadable ({exc}); delete it to refit") from exc

    # ---------------------------------------------------------------- fsck
    def check(self, repair: bool = False) -> StoreCheck:
        """Every way the metadata and the token files disagree or a file is damaged (one line each), and the
        files no write explains. Finishes a committed write first (as any writer would). Holds the lock: a
        running writer makes this a clear error.

        With repair, nothing is deleted: the metadata is rebuilt from the token files (each records the write
        that made it) and whatever cannot be placed (an unreadable or duplicate token file, a damaged journal
        or metadata, staged and temporary files, side files that do not fit) is moved to a new folder under
        DIR/quarantine/, each move said in one line."""
        report = StoreCheck()
        with self.lock():
            try:
                self._apply()
            except DataError as exc:
                if not repair:
                    report.problems.append(str(exc))
                    return report
                self._quarantine(self.journal_path, "a damaged or unsafe transaction journal, not applied", report)
            try:
                meta = self.metadata()
            except DataError as exc:
                if not repair:
                    report.problems.append(str(exc))
                    return report
                self._quarantine(self.metadata_path, "unreadable token metadata; rebuilt from the token files", report)
                meta = self.metadata()
            if repair:
                meta = self._rebuild(meta, report)
            report.tokens = len(meta["tokens"])
            for tid, entry in meta["tokens"].items():
                report.problems.extend(self._check_token(int(tid), entry))
            listed = {int(t) for t in meta["tokens"]}
            for tid, path in sorted(self._token_files().items()):
                if tid not in listed:
                    report.problems.append(
                        f"{path}: token {tid} is not in the metadata; pumpcast check --repair rebuilds its entry"
                    )
            report.problems.extend(self._check_side_files(meta, report if repair else None))
            report.orphans = [str(p) for p in self._leftovers()]
            report.quarantined = sorted(str(p) for p in (self.dir / QUARANTINE).glob("*/**/*") if p.is_file())
        return report

    def _leftovers(self) -> list[Path]:
        """Files in sequences/ that are no token file, and temporary files of interrupted writes."""
        listing = sorted(self.sequences.iterdir()) if self.sequences.is_dir() else []
        inner = [p for p in listing if not TOKEN_FILE.fullmatch(p.name)]
        return inner + sorted(self.dir.glob(".*.tmp"))

    def _quarantine(self, path: Path, why: str, report: StoreCheck) -> None:
        """Move path (if it exists) into this repair's quarantine folder, keeping its place in the store."""
        if not path.exists():
            return
        if report.quarantine is None:
            stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%SZ")
            report.quarantine = self.dir / QUARANTINE / f"{stamp}-{uuid.uuid4().hex[:6]}"
        target = report.quarantine / path.relative_to(self.dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        report.repairs.append(f"moved {path} to {target}: {why}")

    def _rebuild(self, meta: dict[str, Any], report: StoreCheck) -> dict[str, Any]:
        """The metadata rebuilt from the token files (under the lock, for check --repair): entries of missing
        files dropped, of unreadable files quarantined, of files that disagree re-read from the file, unlisted
        readable files adopted (unless another token holds their key: quarantined); written atomically when it
        changed (the old one kept in quarantine)."""
        tokens = copy.deepcopy(meta["tokens"])
        files, readable = self._token_files(), {}
        for tid in sorted(set(files) | {int(t) for t in tokens}):  # first what is gone or unreadable
            path = files.get(tid)
            if path is None:
                del tokens[str(tid)]
                report.repairs.append(f"dropped token {tid} from the metadata: its file {self.token_path(tid)} is gone")
                continue
            try:
                readable[tid] = self._read_file(path, tid)
            except DataError as exc:
                tokens.pop(str(tid), None)
                self._quarantine(path, f"unreadable ({str(exc).split(': ', 1)[-1]})", report)
        for tid, (tok, txid) in sorted(readable.items()):  # then the entries, from the files
            entry, found = tokens.get(str(tid)), self.entry(tok) | {"txid": txid}
            del found["id"]
            if entry is not None and all(entry.get(k, "") == found[k] for k in ("txid", "steps", "key", "interval_ms")):
                continue
            holder = next((t for t, e in tokens.items() if e.get("key") == tok.key and t != str(tid)), None)
            if holder is not None:
                tokens.pop(str(tid), None)
                self._quarantine(files[tid], f"holds key {tok.key!r}, which token {holder} holds too", report)
                continue
            tokens[str(tid)] = found
            report.repairs.append(
                f"{'rebuilt' if entry is not None else 'added'} the metadata entry of token {tid} from {files[tid]}"
            )
        for p in self._leftovers():
            self._quarantine(p, "left over by an interrupted write (staged, temporary or unknown file)", report)
        if tokens == meta["tokens"] and self.metadata_path.exists():
            return meta
        rebuilt = {
            "schema_version": SCHEMA_VERSION,
            "features": list(FEATURES),
            "index": {e["key"]: int(t) for t, e in sorted(tokens.items(), key=lambda kv: int(kv[0]))},
            "tokens": dict(sorted(tokens.items(), key=lambda kv: int(kv[0]))),
        }
        if self.metadata_path.exists():
            self._quarantine(self.metadata_path, "the metadata before this repair", report)
        atomic_write_json(self.metadata_path, rebuilt)
        return self.metadata()

    def _check_token(self, token_id: int, entry: dict[str, Any]) -> list[str]:
        path = self.token_path(token_id)
        try:
            tok, txid = self._read_file(path, token_id)
        except PumpcastError as exc:
            return [str(exc)]
        out = []
        if tok.features.shape[0] != entry["steps"]:
            out.append(f"{path}: {tok.features.shape[0]} steps, the metadata says {entry['steps']}")
        if txid != entry.get("txid", ""):
            out.append(f"{path}: written by write {txid or '-'}, the metadata names write {entry.get('txid') or '-'}")
        if tok.interval_ms != entry["interval_ms"] or (np.diff(tok.timestamps) != tok.interval_ms).any():
            out.append(f"{path}: timestamps are not every {entry['interval_ms']} ms")
        price = tok.features[:, 0]
        if not (np.isfinite(price) & (price > 0)).all():
            out.append(f"{path}: price has missing or non-positive values")
        if (np.nan_to_num(tok.features[:, 1:5]) < 0).any():
            out.append(f"{path}: volume, liquidity or trade counts are negative")
        return out

    def _check_side_files(self, meta: dict[str, Any], repair: StoreCheck | None = None) -> list[str]:
        """Problems of the split and normalisation files; with a repair report, such a file is quarantined
        instead (the next training run makes a new split or refits the normalisation)."""
        out = []
        lengths = {int(t): e["steps"] for t, e in meta["tokens"].items()}
        split_problems = []
        try:
            split = self.load_split()
            for name, ranges in (split or {}).get("ranges", {}).items():
                for t, (a, b) in ranges.items():
                    if int(t) not in lengths or not 0 <= a <= b <= lengths[int(t)]:
                        split_problems.append(f"{self.split_path}: {name} range {a}-{b} of token {t} does not fit")
        except (PumpcastError, TypeError, ValueError, AttributeError) as exc:
            split_problems.append(f"{self.split_path}: unreadable ({exc})")
        norm_problems = []
        try:
            norm = self.load_normalization()
            if norm is not None and not (
                np.isfinite(norm["input_scale"]).all()
                and (norm["input_scale"] > 0).all()
                and np.isfinite(norm["target_scale"]).all()
                and (norm["target_scale"] > 0).all()
            ):
                norm_problems.append(f"{self.normalization_path}: scales must be finite and positive; delete it")
        except (PumpcastError, ValueError, KeyError, IndexError) as exc:
            norm_problems.append(f"{self.normalization_path}: unreadable ({exc})")
        for path, found in ((self.split_path, split_problems), (self.normalization_path, norm_problems)):
            if found and repair is not None:
                self._quarantine(path, f"{found[0].split(': ', 1)[1]}; the next training run makes a new one", repair)
            else:
                out.extend(found)
        return out

    # ---------------------------------------------------------------- export
    def export_csv(self, token_id: int, output: str | Path, events_output: str | Path | None = None) -> None:
        """Write one token's bars as CSV (time, the six features, and the extras of a token that has them; empty
        where absent), and its events."""
        tok = self.read(token_id)
        frame = tok.to_pandas()
        frame["time"] = frame["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        atomic_write(
            Path(output),
            lambda p: frame.to_csv(p, index=False, float_format="%.10g"),
            suffix=".csv",
        )
        if events_output is not None:
            ev = pd.DataFrame(
                [(e.type, e.start, e.peak, e.end, e.magnitude) for e in tok.events],
                columns=["type", "start", "peak", "end", "magnitude"],
            )
            for col in ("start", "peak", "end"):
                ev[f"{col}_time"] = [iso(tok.timestamps[s]) if 0 <= s < len(tok.timestamps) else "" for s in ev[col]]
            atomic_write(Path(events_output), lambda p: ev.to_csv(p, index=False), suffix=".csv")
