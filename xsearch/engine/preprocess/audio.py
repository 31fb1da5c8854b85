"""Audio: decoding, and the original ImageBind audio pipeline (Kaldi filterbanks of three 2 s clips).

Pipeline (``load_and_transform_audio_data`` in the original): float waveform in
[-1, 1] -> resample to 16 kHz (``torchaudio.functional.resample`` defaults) ->
three 2-second clips placed like pytorchvideo's ``ConstantClipsPerVideoSampler``
-> per clip: subtract its mean (in place on the shared waveform, as the original
does, which matters where clips overlap) -> 128-bin Kaldi fbank of channel 0 ->
(128, 204) after pad/cut -> ``(x - mean) / std``.

Decoding uses libsndfile (soundfile) for lossless formats and FFmpeg (PyAV) for lossy codecs
(as the original's torchaudio.load does) and for what libsndfile cannot read (AAC/M4A, the
audio of video containers, ...). Long files are read window by window so that memory stays
bounded; the result equals the whole-file pipeline (see ``_clips_windowed``).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import soundfile as sf
import torch
import torchaudio

from xsearch.errors import MediaError

SAMPLE_RATE = 16000
CLIP_DURATION = 2  # seconds
CLIPS_PER_FILE = 3
NUM_MEL_BINS = 128
TARGET_FRAMES = 204
FBANK_MEAN = -4.268
FBANK_STD = 9.138
FRAME_LENGTH_MS = 25
FRAME_SHIFT_MS = 10
# Files at least this long are read clip window by clip window instead of whole. Must be
# >= 8 s so that the three 2 s windows never overlap (their spacing is (duration - 2) / 3).
WINDOWED_MIN_SECONDS = 60.0
# Window reads take at least this many input samples (see _Resampling.input_range).
_MIN_WINDOW_INPUT = 1 << 15
# Samples per block when streaming through a file.
_BLOCK_FRAMES = 1 << 16
# libsndfile formats whose frame count is exact and whose seek is sample-accurate.
_EXACT_SF_FORMATS = {"WAV", "WAVEX", "W64", "RF64", "AIFF", "AU", "CAF", "FLAC", "IRCAM", "NIST", "VOC", "SVX"}
# libsndfile subtypes decoded by floating-point codecs, whose output depends on the decoder.
_LOSSY_SF_SUBTYPES = {"VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"}
_NO_AUDIO_STREAM = "no audio stream in this file"
# libsndfile's log line for a WAV whose header promises more data than the file holds.
_SHORT_DATA_RE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


# ---------------------------------------------------------------- clip placement and features


def clip_timepoints(
    duration: float, clip_duration: float = CLIP_DURATION, clips: int = CLIPS_PER_FILE
) -> list[tuple[Fraction, Fraction]]:
    """Clip (start, end) times in seconds, exactly as pytorchvideo's ConstantClipsPerVideoSampler
    (the version ImageBind pins) returns them: starts ``i * max(duration - clip, 0) / clips``.

    Note the divisor is ``clips``, not ``clips - 1``: the last clip does not reach the end.
    The original fixtures confirm this.
    """
    clip = Fraction(clip_duration)
    max_start = Fraction(max(duration - clip, 0))
    step = Fraction(max_start, clips)
    return [(step * i, step * i + clip) for i in range(clips)]


def _fbank_clip(clip: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """One mean-removed clip (channels, samples) -> normalised (1, NUM_MEL_BINS, TARGET_FRAMES)."""
    frame = int(sample_rate * FRAME_LENGTH_MS / 1000)
    if clip.shape[-1] < frame:
        # The original asserts here; zero-padding to one frame keeps very short sounds usable.
        clip = torch.nn.functional.pad(clip, (0, frame - clip.shape[-1]))
    fbank = torchaudio.compliance.kaldi.fbank(
        clip,
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=NUM_MEL_BINS,
        dither=0.0,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
    ).transpose(0, 1)
    p = TARGET_FRAMES - fbank.shape[1]
    if p > 0:
        fbank = torch.nn.functional.pad(fbank, (0, p), mode="constant", value=0)
    elif p < 0:
        fbank = fbank[:, :TARGET_FRAMES]
    return ((fbank - FBANK_MEAN) / FBANK_STD).unsqueeze(0)


def _clips_from_16k(waveform: torch.Tensor, bounds: list[tuple[int, int]]) -> torch.Tensor:
    """Cut sample ranges out of a 16 kHz waveform and turn each into a filterbank.

    The original subtracts each clip's mean in place on a view of the shared waveform, so a
    later, overlapping clip sees the earlier clip's samples already shifted. Reproduced on a
    private copy (the fixtures depend on it).
    """
    work = waveform.clone()
    out = []
    for a, b in bounds:
        clip = work[:, a:b]
        if clip.numel():
            clip -= clip.mean()
        out.append(_fbank_clip(clip))
    return torch.stack(out, dim=0)


def _sample_bounds(length16: int) -> list[tuple[int, int]]:
    """[start, end) sample indices of each clip at 16 kHz, as the original slices them."""
    duration = length16 / SAMPLE_RATE
    return [(int(s * SAMPLE_RATE), int(e * SAMPLE_RATE)) for s, e in clip_timepoints(duration)]


def waveform_to_clips(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(channels, samples) float waveform at any rate -> (3, 1, 128, 204), the model's audio input."""
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2 or waveform.shape[-1] == 0:
        raise ValueError(f"expected a non-empty (channels, samples) waveform, got shape {tuple(waveform.shape)}")
    waveform = waveform.to(torch.float32)
    if sample_rate != SAMPLE_RATE:
        waveform = torchaudio.functional.resample(waveform, orig_freq=sample_rate, new_freq=SAMPLE_RATE)
    return _clips_from_16k(waveform, _sample_bounds(waveform.shape[-1]))


# ---------------------------------------------------------------- resampling geometry


@dataclass(frozen=True)
class _Resampling:
    """Where each 16 kHz output sample of torchaudio's polyphase resampler reads its input."""

    orig: int  # input samples per block (rate / gcd)
    new: int  # output samples per block (16000 / gcd)
    width: int  # filter half-width in input samples

    @classmethod
    def for_rate(cls, sample_rate: int) -> _Resampling:
        g = math.gcd(sample_rate, SAMPLE_RATE)
        orig, new = sample_rate // g, SAMPLE_RATE // g
        width = math.ceil(6 * orig / (min(orig, new) * 0.99))  # lowpass_filter_width=6, rolloff=0.99
        return cls(orig, new, width)

    def output_length(self, length: int) -> int:
        """torchaudio's output length, rounding included (it computes the ceil in float32)."""
        if self.orig == self.new:
            return length
        target = int(torch.ceil(torch.as_tensor(self.new * length / self.orig)).long())
        return min(target, (length // self.orig + 1) * self.new)

    def input_range(self, a: int, b: int, length: int) -> tuple[int, int]:
        """Input samples [s, e) that determine outputs [a, b); s is a block boundary."""
        if self.orig == self.new:
            return a, b
        first, last = a // self.new, (b - 1) // self.new
        margin_blocks = -(-self.width // self.orig) + 1
        s = max(0, (first - margin_blocks) * self.orig)
        e = min(length, (last + 1 + margin_blocks) * self.orig + self.width)
        if e - s < _MIN_WINDOW_INPUT:
            # Short slices make torch's conv1d take another kernel (mono input of <= 20480 samples
            # avoids oneDNN), whose rounding differs; in near-silent mel bins that shows. Widen.
            grow = _MIN_WINDOW_INPUT - (e - s)
            s = max(0, (s - grow // 2) // self.orig * self.orig)
            e = min(length, max(e, s + _MIN_WINDOW_INPUT))
            s = min(s, max(0, (e - _MIN_WINDOW_INPUT) // self.orig * self.orig))
        return s, e

    def output_offset(self, s: int) -> int:
        """Global index of the first output sample of a resampled slice starting at block boundary s."""
        return s if self.orig == self.new else (s // self.orig) * self.new


# ---------------------------------------------------------------- decoding sources


class _Source:
    """A decodable audio stream: sample rate, channels, a length hint, and blocks of samples."""

    path: str
    sample_rate: int
    channels: int
    frames_hint: int | None  # from the header; exact only when ``exact`` is set
    exact: bool  # frame count exact and seek() sample-accurate

    def blocks(self) -> Iterator[np.ndarray]:
        """Successive (channels, n) float32 blocks from the start."""
        raise NotImplementedError

    def read_range(self, start: int, stop: int) -> np.ndarray:
        """(channels, stop - start) float32; only for exact sources."""
        raise NotImplementedError


class _SoundfileSource(_Source):
    def __init__(self, path: str, info: sf._SoundFileInfo):
        self.path = path
        self.sample_rate = int(info.samplerate)
        self.channels = int(info.channels)
        self.frames_hint = int(info.frames)
        self.exact = info.format in _EXACT_SF_FORMATS
        self._check_header(info)

    def _check_header(self, info: sf._SoundFileInfo) -> None:
        # libsndfile quietly shortens a WAV whose data chunk was cut off; the original would too,
        # but a cut file is almost always a broken copy, so say so.
        m = _SHORT_DATA_RE.search(getattr(info, "extra_info", "") or "")
        if m and int(m.group(2)) < int(m.group(1)) < 0xFFFFFF00:  # 0xFFFFFFFF: "size unknown" placeholder
            raise MediaError(
                self.path, f"truncated audio file (header announces {m.group(1)} data bytes, file holds {m.group(2)})"
            )

    def blocks(self) -> Iterator[np.ndarray]:
        with sf.SoundFile(self.path) as f:
            for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
                yield block.T

    def read_range(self, start: int, stop: int) -> np.ndarray:
        with sf.SoundFile(self.path) as f:
            f.seek(start)
            data = f.read(stop - start, dtype="float32", always_2d=True)
        if data.shape[0] != stop - start:
            raise MediaError(
                self.path, f"truncated audio: expected {stop - start} samples at {start}, read {data.shape[0]}"
            )
        return data.T


def _av_error(path: str, e: Exception) -> MediaError:
    return MediaError(path, f"not a readable audio file (unknown format, corrupt or truncated: {e})")


class _AvSource(_Source):
    """FFmpeg decoding of the first audio stream of any container PyAV can open."""

    def __init__(self, path: str):
        import av

        from xsearch.engine.preprocess.noise import watch_av

        watch_av()
        self.path = path
        self.exact = False
        try:
            with av.open(path) as container:
                if not container.streams.audio:
                    raise MediaError(path, _NO_AUDIO_STREAM)
                stream = container.streams.audio[0]
                self.channels = int(stream.codec_context.channels or 0)
                self.sample_rate = int(stream.codec_context.sample_rate or 0)
                # The first decoded frame has the real rate/layout (HE-AAC headers can disagree).
                first = next(iter(container.decode(stream)), None)
                if first is not None:
                    self.sample_rate, self.channels = int(first.sample_rate), int(first.layout.nb_channels)
                self.frames_hint = _av_frames_hint(container, stream, self.sample_rate)
        except MediaError:
            raise
        except (av.FFmpegError, OSError, ValueError, IndexError) as e:
            raise _av_error(path, e) from e

    def blocks(self) -> Iterator[np.ndarray]:
        import av

        try:
            with av.open(self.path) as container:
                stream = container.streams.audio[0]
                resampler = None
                for frame in self._frames(container, stream):
                    if resampler is None:
                        # Later frames are converted to the first frame's format, rate and layout.
                        self.sample_rate, self.channels = frame.sample_rate, frame.layout.nb_channels
                        resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.sample_rate)
                    for out in resampler.resample(frame):
                        yield out.to_ndarray().reshape(self.channels, -1)
                if resampler is not None:
                    for out in resampler.resample(None):
                        yield out.to_ndarray().reshape(self.channels, -1)
        except MediaError:
            raise
        except (av.FFmpegError, OSError, ValueError) as e:
            raise _av_error(self.path, e) from e


    def _frames(self, container, stream) -> Iterator:
        """Decoded frames; a packet the codec rejects as invalid data is skipped, as the ffmpeg command
        does, and said (kept with the file as a warning): one damaged stretch of a long MP3 must not
        make the whole file unreadable. A file of nothing but damaged packets ends with no samples."""
        import av

        from xsearch.engine.preprocess.noise import note

        bad = 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.InvalidDataError as e:
                bad += 1
                first = e
                continue
            yield from frames
        if bad:
            note(f"skipped {bad} damaged audio packet(s): {first}")


def _av_frames_hint(container, stream, sample_rate: int) -> int | None:
    """Rough length in samples from the container (None when it does not say)."""
    if stream.duration is not None and stream.time_base is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / 1_000_000
    else:
        return None
    return int(seconds * sample_rate) if sample_rate else None


def check_readable_file(path: str) -> None:
    """MediaError unless path is an existing, non-empty regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise MediaError(path, "file not found") from e
    except OSError as e:
        raise MediaError(path, f"cannot read file ({e.strerror or e})") from e
    if not os.path.isfile(path):
        raise MediaError(path, "not a regular file")
    if st.st_size == 0:
        raise MediaError(path, "file is empty")


def _open_source(path: str | os.PathLike) -> _Source:
    """libsndfile for the formats it decodes exactly, FFmpeg for the rest.

    Lossy codecs go to FFmpeg first: the original's ``torchaudio.load`` (torchaudio 2.11) decodes
    with FFmpeg, and another decoder's MP3/Vorbis/Opus output differs by ~1e-6 per sample, which
    the log filterbank amplifies past the 1e-4 parity tolerance. Integer PCM, float and FLAC decode
    to the same samples in both, and libsndfile seeks them exactly.
    """
    path = os.fsdecode(path)
    check_readable_file(path)
    try:
        info = sf.info(path)
    except (RuntimeError, TypeError, ValueError):
        info = None  # not a libsndfile format (or damaged): let FFmpeg try
    usable = info is not None and info.frames > 0 and info.samplerate > 0
    if usable and info.subtype not in _LOSSY_SF_SUBTYPES:
        return _SoundfileSource(path, info)
    try:
        return _AvSource(path)
    except MediaError as e:
        if usable:
            return _SoundfileSource(path, info)  # a lossy file FFmpeg cannot read: libsndfile's decode
        if info is not None:
            raise MediaError(path, "audio file contains no samples") from e
        raise


def _check_finite(path: str, block: np.ndarray) -> None:
    if not np.isfinite(block).all():
        raise MediaError(path, "audio contains NaN or infinite samples")


def _read_all(src: _Source) -> np.ndarray:
    parts = []
    total = 0
    try:
        for block in src.blocks():
            _check_finite(src.path, block)
            parts.append(block)
            total += block.shape[1]
    except (RuntimeError, sf.SoundFileError) as e:
        raise MediaError(src.path, f"corrupt or truncated audio ({e})") from e
    if total == 0:
        raise MediaError(src.path, "audio stream contains no samples")
    if src.exact and src.frames_hint is not None and total < src.frames_hint:
        raise MediaError(src.path, f"truncated audio: header announces {src.frames_hint} samples, only {total} decode")
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _count_frames(src: _Source) -> int:
    """Exact length: from the header where it is exact, else by decoding (without keeping) everything."""
    if src.exact and src.frames_hint:
        return src.frames_hint
    total = 0
    try:
        for block in src.blocks():
            total += block.shape[1]
    except (RuntimeError, sf.SoundFileError) as e:
        raise MediaError(src.path, f"corrupt or truncated audio ({e})") from e
    if total == 0:
        raise MediaError(src.path, "audio stream contains no samples")
    return total


def _stream_ranges(src: _Source, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """Copy the ranges out of one pass over the decoded blocks (for sources that cannot seek exactly)."""
    bufs = [np.zeros((src.channels, e - s), dtype=np.float32) for s, e in ranges]
    filled = [0] * len(ranges)
    pos, stop = 0, max(e for _, e in ranges)
    for block in src.blocks():
        n = block.shape[1]
        for i, (s, e) in enumerate(ranges):
            lo, hi = max(s, pos), min(e, pos + n)
            if lo < hi:
                bufs[i][:, lo - s : hi - s] = block[:, lo - pos : hi - pos]
                filled[i] += hi - lo
        pos += n
        if pos >= stop:
            break
    if any(f != e - s for f, (s, e) in zip(filled, ranges)):
        raise MediaError(src.path, "audio ended earlier on the second read than on the first")
    return bufs


def _read_ranges(src: _Source, ranges: list[tuple[int, int]]) -> list[np.ndarray]:
    """The samples of each [start, stop) range, seeking where exact, else in one streaming pass."""
    try:
        out = [src.read_range(s, e) for s, e in ranges] if src.exact else _stream_ranges(src, ranges)
    except (RuntimeError, sf.SoundFileError) as e:
        raise MediaError(src.path, f"corrupt or truncated audio ({e})") from e
    for block in out:
        _check_finite(src.path, block)
    return out


def _clips_windowed(src: _Source, length: int) -> torch.Tensor:
    """The pipeline on a long file, reading only the three clip windows (plus a resampling margin).

    Each window is read from a resampler block boundary with enough input on both sides that
    every output sample inside the clip sees exactly the input the whole-file resample sees.
    Clips never overlap here (duration >= WINDOWED_MIN_SECONDS), so the original's in-place
    mean subtraction has no cross-clip effect.
    """
    rs = _Resampling.for_rate(src.sample_rate)
    bounds = _sample_bounds(rs.output_length(length))
    ranges = [rs.input_range(a, b, length) for a, b in bounds]
    windows = _read_ranges(src, ranges)
    out = []
    for (a, b), (s, _), data in zip(bounds, ranges, windows):
        w = torch.from_numpy(data)
        if src.sample_rate != SAMPLE_RATE:
            w = torchaudio.functional.resample(w, orig_freq=src.sample_rate, new_freq=SAMPLE_RATE)
        off = rs.output_offset(s)
        clip = w[:, a - off : b - off]
        out.append(_clips_from_16k(clip, [(0, clip.shape[1])])[0])
    return torch.stack(out, dim=0)


def _clips_from_source(src: _Source) -> torch.Tensor:
    """Whole-file pipeline for ordinary files, windowed reads for long ones."""
    hint = src.frames_hint
    if hint is not None and src.sample_rate and hint < WINDOWED_MIN_SECONDS * src.sample_rate:
        return waveform_to_clips(torch.from_numpy(_read_all(src)), src.sample_rate)
    length = _count_frames(src)
    if length < WINDOWED_MIN_SECONDS * src.sample_rate:
        return waveform_to_clips(torch.from_numpy(_read_all(src)), src.sample_rate)
    return _clips_windowed(src, length)


# ---------------------------------------------------------------- public API


def decode_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Decode a whole file -> ((channels, samples) float32 in [-1, 1], sample rate).

    Integer PCM is scaled as torchaudio.load does (int16 / 32768, ...). Samples that are NaN or
    infinite make the file an error rather than being patched over. Loads everything: use
    ``load_audio`` for model input, which bounds memory on long files.
    """
    src = _open_source(path)
    data = _read_all(src)
    return torch.from_numpy(data), int(src.sample_rate)


def load_audio(path: str | os.PathLike) -> torch.Tensor:
    """An audio file -> (3, 1, 128, 204), exactly the original ImageBind audio input."""
    return _clips_from_source(_open_source(path))


def load_audio_track(path: str | os.PathLike) -> torch.Tensor | None:
    """The first audio stream of a media file through the audio pipeline, or None if it has none."""
    path = os.fsdecode(path)
    check_readable_file(path)
    try:
        src = _AvSource(path)
    except MediaError as e:
        if e.reason == _NO_AUDIO_STREAM:
            return None
        raise
    return _clips_from_source(src)


def load_audio_full(path: str | os.PathLike) -> torch.Tensor:
    """The pipeline on the fully decoded file, never windowed (reference for tests and tools)."""
    waveform, sr = decode_audio(path)
    return waveform_to_clips(waveform, sr)


def load_audio_windowed(path: str | os.PathLike) -> torch.Tensor:
    """The windowed pipeline whatever the length (needs >= 8 s so the clip windows do not overlap)."""
    src = _open_source(path)
    length = _count_frames(src)
    if length < (CLIPS_PER_FILE * CLIP_DURATION + CLIP_DURATION) * src.sample_rate:
        raise MediaError(src.path, "too short for windowed reading (clip windows would overlap)")
    return _clips_windowed(src, length)


def probe_audio(path: str | os.PathLike) -> dict:
    """Cheap metadata from the header: {"duration": s, "sample_rate": Hz, "channels": n}.

    Duration may be an estimate for compressed formats (MP3, AAC) and None when unknown.
    """
    src = _open_source(path)
    frames = src.frames_hint
    duration = frames / src.sample_rate if frames is not None and src.sample_rate else None
    return {"duration": duration, "sample_rate": int(src.sample_rate), "channels": int(src.channels)}
