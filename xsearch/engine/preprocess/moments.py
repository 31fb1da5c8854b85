"""Moments: a recording cut into windows, each window one model input, read window by window.

Windows start at 0, hop, 2*hop, ... and last ``window`` seconds; the last one ends with the recording
(a partial window) unless it is shorter than ``MIN_TAIL`` of a window, when it is dropped; a recording
shorter than one window is one (partial) window. Each window goes through its modality's recipe:

- audio: resampled to 16 kHz on its own, cut into 2 s clips (one for the default 2 s window), each
  mean-removed and turned into the 128-bin filterbank of the whole-file pipeline; clips are averaged;
- video: the first and last frame whose timestamps fall in the window (ImageBind's 2 frames per clip),
  short side 224, the centre 224 crop;
- imu: 400 Hz resampling as the whole-file recipe, 2,000-sample (5 s) clips, zero-padded past the end.

Audio and video are decoded in one pass that keeps only the current window(s), so a recording of any
length takes bounded memory. Identical content at the same offset in its window gives identical input.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
import torchaudio

from xsearch.errors import MediaError

MIN_TAIL = 0.25  # a last partial window shorter than this fraction of a window adds too little to embed

Window = tuple[float, float, torch.Tensor]  # (start s, end s, model input of one item)


def spans(duration: float, window: float, hop: float, *, start: float = 0.0,
          stop: float | None = None) -> list[tuple[float, float]]:
    """The (start, end) seconds of each window over a recording of known ``duration``."""
    end_all = duration if stop is None else min(duration, stop)
    out: list[tuple[float, float]] = []
    s = start
    while s < end_all:
        e = min(s + window, end_all)
        if e - s >= MIN_TAIL * window or not out:
            out.append((s, e))
        if e >= end_all:
            break
        s += hop
    return out


# ---------------------------------------------------------------- audio


def _audio_input(samples: np.ndarray, sample_rate: int) -> torch.Tensor:
    """(channels, n) samples of one window -> (clips, 1, 128, 204), 2 s clips of the audio recipe."""
    from xsearch.engine.preprocess.audio import CLIP_DURATION, SAMPLE_RATE, _clips_from_16k

    w = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    if sample_rate != SAMPLE_RATE:
        w = torchaudio.functional.resample(w, orig_freq=sample_rate, new_freq=SAMPLE_RATE)
    clip = CLIP_DURATION * SAMPLE_RATE
    n = max(1, math.ceil(w.shape[1] / clip - 1e-9))
    return _clips_from_16k(w, [(i * clip, min((i + 1) * clip, w.shape[1])) for i in range(n)])


def audio_windows(path: str | os.PathLike, window: float = 2.0, hop: float = 2.0, *, start: float = 0.0,
                  stop: float | None = None, track: bool = False) -> Iterator[Window]:
    """Windows of an audio file (``track``: of a media file's first audio stream; none when it has no
    audio stream or an empty one), streamed block by block."""
    from xsearch.engine.preprocess import audio as A

    path = os.fsdecode(path)
    if track:
        A.check_readable_file(path)
        try:
            src = A._AvSource(path)
        except MediaError as e:
            if e.reason == A._NO_AUDIO_STREAM:
                return
            raise
    else:
        src = A._open_source(path)
    sr = int(src.sample_rate)
    if sr <= 0:
        return
    size, step = max(1, round(window * sr)), max(1, round(hop * sr))
    first, limit = round(start * sr), None if stop is None else round(stop * sr)
    buf = np.zeros((src.channels, 0), np.float32)
    buf_at = 0  # sample index of buf[:, 0]
    nxt = first  # start of the next window
    emitted, reached = 0, 0  # windows given, and the sample the last one ended at
    try:
        for block in src.blocks():
            A._check_finite(path, block)
            buf = np.concatenate([buf, block], axis=1) if buf.shape[1] else block
            while nxt + size <= buf_at + buf.shape[1] and (limit is None or nxt < limit):
                e = nxt + size if limit is None else min(nxt + size, limit)
                yield nxt / sr, e / sr, _audio_input(buf[:, nxt - buf_at: e - buf_at], sr)
                emitted, reached = emitted + 1, e
                nxt += step
            if limit is not None and nxt >= limit:
                return
            drop = min(max(0, nxt - buf_at), buf.shape[1])
            buf, buf_at = buf[:, drop:], buf_at + drop
    except (RuntimeError, sf.SoundFileError) as e:
        raise MediaError(path, f"corrupt or truncated audio ({e})") from e
    total = buf_at + buf.shape[1]
    end = total if limit is None else min(total, limit)
    if nxt < end and reached < end and (end - nxt >= MIN_TAIL * size or not emitted):
        yield nxt / sr, end / sr, _audio_input(buf[:, nxt - buf_at: end - buf_at], sr)


# ---------------------------------------------------------------- video


def video_windows(path: str | os.PathLike, window: float = 2.0, hop: float = 2.0, *, start: float = 0.0,
                  stop: float | None = None) -> Iterator[Window]:
    """Windows of a video's frames (2 frames each, centre crop), decoded in one pass."""
    from xsearch.engine.preprocess import video as V
    from xsearch.engine.preprocess.image import IMAGE_SIZE

    path = os.fsdecode(path)
    container = V._open(path)
    av = V._av()

    def emit(w: V._Window, end: Fraction) -> Window:
        clip = V.frames_to_clip([f.to_ndarray(format="rgb24") for f in w.pick(V.FRAMES_PER_CLIP)])
        return float(w.start), float(end), V._uniform_crop(clip, IMAGE_SIZE, 1).contiguous()

    try:
        stream = V._video_stream(container, path)
        stream.thread_type = "AUTO"
        fps = V._fps(stream)
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1000)
        start_pts = stream.start_time or 0
        cursor = V._Cursor(time_base, start_pts, fps)
        win, step = Fraction(window).limit_denominator(1000), Fraction(hop).limit_denominator(1000)
        first = Fraction(start).limit_denominator(1000)
        limit = None if stop is None else Fraction(stop).limit_denominator(1000)
        if first > V.SEEK_GAP_SECONDS:
            container.seek(start_pts + int(first / time_base), stream=stream, backward=True, any_frame=False)
        pending: list[V._Window] = []
        nxt, emitted, reached = first, 0, Fraction(-1)
        prev: tuple[Fraction, object] | None = None
        for frame in container.decode(stream):
            t = cursor.time_of(frame)
            while nxt <= t and (limit is None or nxt < limit):
                w = V._Window(nxt, nxt + win if limit is None else min(nxt + win, limit))
                if prev is not None:
                    w.offer(*prev)  # the nearest earlier frame, for a window no frame falls in
                pending.append(w)
                nxt += step
            for w in pending:
                w.offer(t, frame)
            for w in [w for w in pending if t >= w.end]:
                pending.remove(w)
                yield emit(w, w.end)
                emitted, reached = emitted + 1, w.end
            prev = (t, frame)
            if limit is not None and t >= limit and not pending:
                return
        if cursor.seen == 0:
            raise MediaError(path, "no decodable video frames")
        # The recording ends one frame period after its last frame.
        last = (cursor.max_t or Fraction(0)) + (1 / fps if fps else 0)
        for w in pending:
            end = min(w.end, last)
            if w.count and reached < end and (end - w.start >= MIN_TAIL * win or not emitted):
                yield emit(w, end)
                emitted, reached = emitted + 1, end
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise MediaError(path, f"corrupt or truncated video ({e})") from e
    finally:
        container.close()


# ---------------------------------------------------------------- imu


def imu_windows(path: str | os.PathLike, window: float = 5.0, hop: float = 5.0, *, start: float = 0.0,
                stop: float | None = None, sample_rate: float | None = None) -> Iterator[Window]:
    """Windows of an IMU recording: (clips, 6, 2000) each, 2,000 samples (5 s at 400 Hz) a clip."""
    from xsearch.engine.preprocess.imu import IMU_RATE, NUM_CHANNELS, WINDOW_SAMPLES, read_imu

    data, times, step = read_imu(path, sample_rate=sample_rate)
    duration = float(times[-1] - times[0]) + step
    for s, e in spans(duration, window, hop, start=start, stop=stop):
        n = max(1, int(round((e - s) * IMU_RATE)))
        clips = max(1, math.ceil(n / WINDOW_SAMPLES))
        out = np.zeros((NUM_CHANNELS, clips * WINDOW_SAMPLES), np.float32)
        query = times[0] + s + np.arange(n) / IMU_RATE
        for c in range(NUM_CHANNELS):
            out[c, :n] = np.interp(query, times, data[c])
        yield s, e, torch.from_numpy(out.reshape(NUM_CHANNELS, clips, WINDOW_SAMPLES).swapaxes(0, 1).copy())


def windows(kind: str, path: str | os.PathLike, window: float, hop: float, *, start: float = 0.0,
            stop: float | None = None) -> Iterator[Window]:
    """``kind``: audio, video, imu, or "video-audio" (a video's sound track as audio windows)."""
    if kind == "audio":
        return audio_windows(path, window, hop, start=start, stop=stop)
    if kind == "video-audio":
        return audio_windows(path, window, hop, start=start, stop=stop, track=True)
    if kind == "video":
        return video_windows(path, window, hop, start=start, stop=stop)
    if kind == "imu":
        return imu_windows(path, window, hop, start=start, stop=stop)
    raise ValueError(f"no moments for {kind}")
