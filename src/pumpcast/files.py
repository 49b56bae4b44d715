"""Writing files so that a crash never leaves one half-written: a temporary name in the same folder, then an
atomic rename. Every file pumpcast writes (store, model file, reports, forecasts, checkpoints' side files)
goes through here. Also the one containment check for names read from files (`inside`) and the pause points
at which crash tests kill a writer (`pause_point`)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pumpcast.schema import DataError


def _umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], Any], suffix: str = "") -> None:
    """Call write(tmp_path) and rename the result onto path, so path is either old or new, never partial."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a file name to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise DataError(f"{path}: cannot create its folder ({exc.strerror}: {exc.filename})") from exc
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like any new file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_safe(obj: Any) -> Any:
    """NaN and infinities become null (strict JSON readers reject them); NumPy values become Python ones."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write strict JSON atomically."""
    atomic_write(Path(path), lambda p: p.write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False)))


def inside(folder: Path, name: Any, source: Path | str, field: str) -> Path:
    """folder / name for a name read from a file (a journal, metadata, a model file), refused in one line
    unless it is a string naming something strictly inside folder (no absolute path, no `..`, no link out)."""
    root = Path(folder).resolve()
    if not isinstance(name, str) or not name or "\x00" in name:
        raise DataError(f"{source}: {field} {name!r} is not a file name; refused, nothing was read or written")
    path = (root / name).resolve()
    if path == root or not path.is_relative_to(root):
        raise DataError(
            f"{source}: {field} {name!r} points outside {folder}; refused, nothing was read or written"
        )
    return Path(folder) / name


def pause_point(name: str) -> None:
    """A place where a test can stop a writer: with PUMPCAST_PAUSE_AT=name in the environment, the process that
    reaches it writes its pid to the file PUMPCAST_PAUSE_FILE and waits there until it is killed, so that a
    kill -9 lands exactly there on any machine, fast or slow. Does nothing otherwise."""
    if os.environ.get("PUMPCAST_PAUSE_AT") != name:
        return
    target = Path(os.environ["PUMPCAST_PAUSE_FILE"])
    atomic_write(target, lambda p: p.write_text(str(os.getpid())))
    while True:
        time.sleep(3600)
