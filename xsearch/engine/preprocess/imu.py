"""IMU recordings (CSV or .npy) -> ImageBind's (W, 6, 2000) windows.

ImageBind publishes no IMU loader; it was trained on Ego4D IMU: 6 channels
(accelerometer x, y, z in m/s^2, gyroscope x, y, z in rad/s) in 5-second
windows of 2000 samples (400 Hz). The recipe, documented in
docs/preprocessing.md:

- channels in the order [accel x, y, z, gyro x, y, z], raw units, no
  normalisation beyond resampling;
- linear interpolation onto a 400 Hz grid; the input rate comes from the
  timestamps, else from ``sample_rate``, else the data is taken to be 400 Hz;
- a recording lasts ``rows / rate`` seconds (each sample covers one period),
  i.e. ``round(duration * 400)`` resampled samples;
- up to 5 s: one window, zero-padded; longer: consecutive 5-second windows,
  plus one more ending at the last sample (overlapping the previous one, so it
  holds only real data) when the leftover is at least MIN_TAIL_SAMPLES; more
  than MAX_WINDOWS windows: MAX_WINDOWS of them spread evenly over the recording.

The caller embeds the windows as a batch and averages them, like audio clips.
"""
from __future__ import annotations

import csv
import math
import numbers
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from xsearch.errors import MediaError, UsageError

IMU_RATE = 400.0  # Hz: 2000 samples per 5-second window, as the IMU tower expects
WINDOW_SAMPLES = 2000
NUM_CHANNELS = 6
CHANNEL_NAMES = ("accel x", "accel y", "accel z", "gyro x", "gyro y", "gyro z")
MAX_WINDOWS = 32  # hours of data would otherwise give thousands of windows
MIN_TAIL_SAMPLES = WINDOW_SAMPLES // 4  # 1.25 s: a shorter leftover adds too little to embed

# Timestamp units when the column name does not say: by the median step between rows.
# steps >= NS_MIN_STEP -> nanoseconds; >= MS_MIN_STEP -> milliseconds; else seconds.
NS_MIN_STEP = 1e4  # 10 us in ns; 10,000 ms (0.1 Hz) or 10,000 s would make no sense for an IMU
MS_MIN_STEP = 0.5  # 2 Hz in seconds; 500 us in ms (2 kHz) is the fastest usual logger
UNIT_SECONDS = {"s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
                "ms": 1e-3, "msec": 1e-3, "us": 1e-6, "usec": 1e-6, "ns": 1e-9, "nsec": 1e-9}

_SEP = r"[ _.\-]?"
_ACCEL_RE = re.compile(rf"^(?:accelerometer|acceleration|accel|acc){_SEP}([xyz])$")
_GYRO_RE = re.compile(rf"^(?:gyroscope|gyro|gyr){_SEP}([xyz])$")
_TIME_RE = re.compile(rf"^(?:timestamp|time|ts|t){_SEP}({'|'.join(UNIT_SECONDS)})?$")
_UNIT_SUFFIX_RE = re.compile(r"^(.*?)\s*[\(\[]\s*([^\)\]]*?)\s*[\)\]]$")  # "acc_x (m/s^2)", "time [ns]"
ACCEPTED_NAMES = (
    "accel/acc/accelerometer/acceleration and gyro/gyr/gyroscope followed by x, y or z, "
    "optionally separated by '_', ' ', '.' or '-' (e.g. acc_x, AccX, accelerometer.x, gyro z), "
    "case-insensitive; an optional timestamp column (timestamp, time, t, ts, with an optional unit "
    "such as time_s or timestamp_ns)"
)

DELIMITERS = (",", ";", "\t", "|")
MISSING_TOKENS = ("", "nan", "na", "n/a", "null", "none")
HEADER_READ_LIMIT = 65536  # characters of the header line read by looks_like_imu_csv
HEADER_MAX_BLANK_LINES = 16  # leading blank lines looks_like_imu_csv looks past
CHUNK_ROWS = 65536  # rows parsed per numpy conversion


@dataclass
class _Columns:
    """Field indices of the six channels (in CHANNEL_NAMES order) and of the timestamp, from the header."""

    channels: list[int]
    names: list[str]
    time: int | None
    time_name: str | None
    time_unit: float | None  # seconds per unit when the name says so


# --------------------------------------------------------------------------- public


def load_imu(path: str | os.PathLike, *, sample_rate: float | None = None) -> torch.Tensor:
    """An IMU file (CSV with a header, or .npy 6xN / Nx6) -> float32 tensor (W, 6, 2000), W >= 1."""
    return torch.from_numpy(to_windows(*read_samples(path, sample_rate=sample_rate)))


def read_samples(path: str | os.PathLike, *, sample_rate: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """An IMU file -> (6, N) samples, their times in seconds, and the sampling period."""
    if sample_rate is not None and not _is_positive_number(sample_rate):
        raise UsageError(f"IMU sample_rate must be a positive number of Hz, got {sample_rate!r}")
    if os.fspath(path).lower().endswith(".npy"):
        data, times = _read_imu_npy(path), None
    else:
        data, times = _read_imu_csv(path)
    rate = sample_rate or IMU_RATE
    if times is None:
        times = np.arange(data.shape[1], dtype=np.float64) / rate
        step = 1.0 / rate
    else:
        step = _median_step(times, default=1.0 / rate)
    return data, times, step


def _is_positive_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def looks_like_imu_csv(path: str | os.PathLike) -> bool:
    """Whether the file's first line names at least one accelerometer and one gyroscope column."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            line = ""
            for _ in range(HEADER_MAX_BLANK_LINES + 1):  # the loader skips leading blank lines too
                line = f.readline(HEADER_READ_LIMIT)
                if line.strip() or not line:
                    break
    except (OSError, UnicodeDecodeError):
        return False
    fields = _split_header(line)
    return any(_match_channel(f)[0] == "accel" for f in fields) and any(_match_channel(f)[0] == "gyro" for f in fields)


def to_windows(data: np.ndarray, times: np.ndarray, step: float) -> np.ndarray:
    """(6, N) samples at increasing ``times`` (s) -> (W, 6, 2000) float32 at 400 Hz, linearly interpolated.

    ``step`` is the input sampling period: the recording lasts ``times[-1] - times[0] + step``.
    """
    duration = float(times[-1] - times[0]) + step
    total = max(1, int(round(duration * IMU_RATE)))
    starts = window_starts(total)
    out = np.zeros((len(starts), NUM_CHANNELS, WINDOW_SAMPLES), np.float32)
    for i, start in enumerate(starts):
        n = min(WINDOW_SAMPLES, total - start)
        query = times[0] + (start + np.arange(n)) / IMU_RATE
        for c in range(NUM_CHANNELS):
            out[i, c, :n] = np.interp(query, times, data[c])  # holds the last value past the end
    return out


def window_starts(total: int) -> list[int]:
    """First sample of each 2000-sample window over ``total`` resampled samples."""
    if total <= WINDOW_SAMPLES:
        return [0]
    n_full, tail = divmod(total, WINDOW_SAMPLES)
    starts = [k * WINDOW_SAMPLES for k in range(n_full)]
    if tail >= MIN_TAIL_SAMPLES:
        starts.append(total - WINDOW_SAMPLES)  # end-aligned: real data instead of zero padding
    if len(starts) > MAX_WINDOWS:
        last = total - WINDOW_SAMPLES
        starts = [int(round(i * last / (MAX_WINDOWS - 1))) for i in range(MAX_WINDOWS)]
    return starts


# --------------------------------------------------------------------------- header


def _split_header(line: str) -> list[str]:
    line = line.rstrip("\r\n")
    return next(csv.reader([line], delimiter=_detect_delimiter(line)), [])


def _detect_delimiter(line: str) -> str:
    counts = {d: line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _normalise_name(field: str) -> tuple[str, str | None]:
    """Lower-cased column name without quotes/padding, and a bracketed unit if any ("time [ns]")."""
    name = field.strip().strip('"\'').strip().lower()
    m = _UNIT_SUFFIX_RE.match(name)
    return (m.group(1), m.group(2)) if m else (name, None)


def _match_channel(field: str) -> tuple[str | None, str | None]:
    """("accel" | "gyro" | None, axis) for a header field."""
    name, _unit = _normalise_name(field)
    for kind, regex in (("accel", _ACCEL_RE), ("gyro", _GYRO_RE)):
        m = regex.match(name)
        if m:
            return kind, m.group(1)
    return None, None


def _match_time(field: str) -> tuple[bool, float | None]:
    """Whether a field names a timestamp, and its unit in seconds if the name gives one."""
    name, unit = _normalise_name(field)
    m = _TIME_RE.match(name)
    if not m:
        return False, None
    unit = m.group(1) or unit
    return True, UNIT_SECONDS.get(unit) if unit else None


def _find_columns(path: str | os.PathLike, header: list[str]) -> _Columns:
    found: dict[str, list[int]] = {}
    time_cols: list[int] = []
    for i, field in enumerate(header):
        kind, axis = _match_channel(field)
        if kind:
            found.setdefault(f"{kind} {axis}", []).append(i)
        elif _match_time(field)[0]:
            time_cols.append(i)
    missing = [c for c in CHANNEL_NAMES if c not in found]
    if missing:
        sensors = sorted({"accelerometer" if c.startswith("accel") else "gyroscope" for c in missing})
        raise MediaError(
            path,
            f"missing {' and '.join(sensors)} column(s) for {', '.join(missing)}; "
            f"the header has {_quote_list(header)}; accepted names: {ACCEPTED_NAMES}",
        )
    for channel, cols in found.items():
        if len(cols) > 1:
            names = _quote_list(header[i] for i in cols)
            raise MediaError(path, f"several columns could be {channel}: {names}; keep only one")
    channels = [found[c][0] for c in CHANNEL_NAMES]
    time = time_cols[0] if time_cols else None  # several (e.g. "timestamp" and "time"): the first one
    return _Columns(
        channels=channels,
        names=[header[i].strip() for i in channels],
        time=time,
        time_name=None if time is None else header[time].strip(),
        time_unit=None if time is None else _match_time(header[time])[1],
    )


def _quote_list(names) -> str:
    return ", ".join(repr(n.strip()) for n in names) or "no columns"


# --------------------------------------------------------------------------- CSV body


def _read_imu_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(6, N) float64 samples (missing values filled) and timestamps in seconds from the first row, or None.

    A fast pass (np.loadtxt) reads clean files; a file it refuses, or one whose checks fail, is read again
    with the csv module so that errors name the right line.
    """
    try:
        values, lines, cols = _read_csv_values(path, fast=True)
        if values is not None:
            return _csv_to_samples(path, values, lines, cols)
    except MediaError:
        pass
    values, lines, cols = _read_csv_values(path, fast=False)
    return _csv_to_samples(path, values, lines, cols)


def _read_csv_values(path, *, fast: bool) -> tuple[np.ndarray | None, np.ndarray | None, _Columns]:
    """The wanted columns as (N, 6 or 7) float64 (NaN where missing), each row's line number, and the columns."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            header_line, header_lineno = _first_nonblank_line(f)
            if header_line is None:
                raise MediaError(path, "file is empty; expected a CSV with a header row and IMU samples")
            delimiter = _detect_delimiter(header_line)
            header = next(csv.reader([header_line.rstrip("\r\n")], delimiter=delimiter))
            cols = _find_columns(path, header)
            if not fast:
                return (*_parse_rows(path, csv.reader(f, delimiter=delimiter), cols, header_lineno), cols)
            values = _loadtxt(f, delimiter, cols)
    except MediaError:
        raise
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except UnicodeDecodeError as e:
        raise MediaError(path, f"not a UTF-8 text CSV ({e.reason} at byte {e.start})") from e
    except (OSError, csv.Error) as e:
        raise MediaError(path, f"cannot read CSV ({e})") from e
    lines = None if values is None else header_lineno + 1 + np.arange(len(values))  # exact unless blank lines
    return values, lines, cols


def _loadtxt(f, delimiter: str, cols: _Columns) -> np.ndarray | None:
    """np.loadtxt on the rest of the file, or None when it cannot parse it (empty cells, words, short rows)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data"
            return np.loadtxt(f, delimiter=delimiter, usecols=_wanted(cols), ndmin=2, comments=None,
                              quotechar='"', dtype=np.float64)
    except ValueError:
        return None


def _wanted(cols: _Columns) -> list[int]:
    return cols.channels + ([cols.time] if cols.time is not None else [])


def _csv_to_samples(path, values: np.ndarray, lines: np.ndarray, cols: _Columns):
    if values.shape[0] == 0:
        raise MediaError(path, "CSV has a header but no data rows")
    names = cols.names + ([cols.time_name] if cols.time is not None else [])
    _reject_infinite(path, values, lines, names)
    times = None
    if cols.time is not None:
        values, lines, times = _clean_timestamps(path, values, lines, cols)
    data = _fill_missing(path, values[:, :NUM_CHANNELS].T, times, cols.names)
    return data, times


def _first_nonblank_line(f) -> tuple[str | None, int]:
    lineno = 0
    for line in iter(f.readline, ""):
        lineno += 1
        if line.strip():
            return line, lineno
    return None, lineno


def _parse_rows(path, reader, cols: _Columns, line_offset: int) -> tuple[np.ndarray, np.ndarray]:
    """All data rows -> (N, 6 or 7) float64 (NaN where missing) and each row's line number in the file."""
    wanted = _wanted(cols)
    need = max(wanted) + 1
    blocks: list[np.ndarray] = []
    line_blocks: list[np.ndarray] = []
    rows: list[list[str]] = []
    lines: list[int] = []
    for row in reader:
        if not any(field.strip() for field in row):
            continue  # blank line or delimiters only
        lineno = reader.line_num + line_offset
        if len(row) < need:
            raise MediaError(
                path, f"line {lineno} has {len(row)} fields but the header names {need} or more; is a value missing?"
            )
        rows.append([row[i] for i in wanted])
        lines.append(lineno)
        if len(rows) >= CHUNK_ROWS:
            blocks.append(_convert_chunk(path, rows, lines, cols))
            line_blocks.append(np.asarray(lines, dtype=np.int64))
            rows, lines = [], []
    if rows:
        blocks.append(_convert_chunk(path, rows, lines, cols))
        line_blocks.append(np.asarray(lines, dtype=np.int64))
    if not blocks:
        return np.zeros((0, len(wanted))), np.zeros(0, np.int64)
    return np.concatenate(blocks), np.concatenate(line_blocks)


def _convert_chunk(path, rows: list[list[str]], lines: list[int], cols: _Columns) -> np.ndarray:
    try:
        return np.array(rows, dtype=np.float64)  # fast path: every field is a plain number
    except ValueError:
        pass
    names = cols.names + ([cols.time_name] if cols.time is not None else [])
    out = np.empty((len(rows), len(names)), np.float64)
    for r, (row, lineno) in enumerate(zip(rows, lines)):
        for c, text in enumerate(row):
            out[r, c] = _parse_number(path, text, names[c], lineno)
    return out


def _parse_number(path, text: str, column: str, lineno: int) -> float:
    token = text.strip()
    if token.lower() in MISSING_TOKENS:
        return math.nan
    try:
        return float(token)
    except ValueError:
        raise MediaError(
            path, f"column {column!r}, line {lineno}: {text.strip()[:40]!r} is not a number"
        ) from None


def _reject_infinite(path, values: np.ndarray, lines: np.ndarray, names: list[str]) -> None:
    bad = np.isinf(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise MediaError(path, f"column {names[c]!r}, line {lines[r]}: infinite value")


def _clean_timestamps(path, values: np.ndarray, lines: np.ndarray, cols: _Columns):
    """Check the timestamp column, merge rows that repeat a timestamp, convert to seconds from the first row."""
    raw = values[:, NUM_CHANNELS]
    missing = np.isnan(raw)
    if missing.any():
        raise MediaError(path, f"column {cols.time_name!r}, line {lines[np.argmax(missing)]}: timestamp is missing")
    diffs = np.diff(raw)
    if (diffs < 0).any():
        i = int(np.argmax(diffs < 0))
        raise MediaError(
            path,
            f"column {cols.time_name!r} goes backwards at line {lines[i + 1]}: {raw[i + 1]:g} comes after "
            f"{raw[i]:g} (line {lines[i]}); rows must be in time order",
        )
    if (diffs == 0).any():
        values, lines = _merge_repeated_times(values, lines, np.concatenate([[True], diffs > 0]))
        raw = values[:, NUM_CHANNELS]
    unit = cols.time_unit or _guess_time_unit(raw)
    return values, lines, (raw - raw[0]) * unit


def _merge_repeated_times(values: np.ndarray, lines: np.ndarray, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sharing a timestamp -> one row, each channel averaged over the rows that have a value.

    Interleaved logs write accelerometer and gyroscope readings on separate rows with the same time.
    """
    starts = np.flatnonzero(first)
    present = ~np.isnan(values)
    sums = np.add.reduceat(np.where(present, values, 0.0), starts, axis=0)
    counts = np.add.reduceat(present.astype(np.int64), starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        merged = np.where(counts > 0, sums / counts, np.nan)
    return merged, lines[starts]


def _guess_time_unit(raw: np.ndarray) -> float:
    """Seconds per timestamp unit, from the median step (rule in the module constants)."""
    if raw.size < 2:
        return 1.0
    step = float(np.median(np.diff(raw)))
    if step >= NS_MIN_STEP:
        return 1e-9
    if step >= MS_MIN_STEP:
        return 1e-3
    return 1.0


def _median_step(times: np.ndarray, default: float) -> float:
    return float(np.median(np.diff(times))) if times.size >= 2 else default


def _fill_missing(path, data: np.ndarray, times: np.ndarray | None, names: list[str]) -> np.ndarray:
    """Linear interpolation (in time) over missing values of each channel; nearest value at the ends."""
    x = np.arange(data.shape[1], dtype=np.float64) if times is None else times
    for c in range(data.shape[0]):
        nan = np.isnan(data[c])
        if nan.all():
            raise MediaError(path, f"column {names[c]!r} has no numeric values")
        if nan.any():
            data[c, nan] = np.interp(x[nan], x[~nan], data[c, ~nan])
    return data


# --------------------------------------------------------------------------- .npy


def _read_imu_npy(path: str | os.PathLike) -> np.ndarray:
    """(6, N) float64 from a 6 x N or N x 6 array (6 x 6 is read as 6 x N); missing values filled."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except (OSError, ValueError, EOFError) as e:
        raise MediaError(path, f"not a readable NumPy file ({e})") from e
    if arr.ndim != 2 or NUM_CHANNELS not in arr.shape:
        raise MediaError(path, f"IMU array has shape {arr.shape}; expected (6, N) or (N, 6) with channels "
                               "accel x, y, z, gyro x, y, z")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise MediaError(path, f"IMU array has dtype {arr.dtype}; expected numbers")
    data = np.array(arr if arr.shape[0] == NUM_CHANNELS else arr.T, dtype=np.float64)
    if data.shape[1] == 0:
        raise MediaError(path, "IMU array has no samples")
    inf = np.isinf(data)
    if inf.any():
        c, i = np.argwhere(inf)[0]
        raise MediaError(path, f"channel {c} ({CHANNEL_NAMES[c]}), sample {i}: infinite value")
    return _fill_missing(path, data, None, [f"channel {c} ({n})" for c, n in enumerate(CHANNEL_NAMES)])
