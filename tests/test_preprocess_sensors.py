"""Depth, thermal and IMU loaders: the documented recipes, their errors, and that the model accepts the output."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xsearch.engine.imagebind import ImageBindConfig, ImageBindModel
from xsearch.engine.preprocess import depth as depth_mod
from xsearch.engine.preprocess.depth import (
    DISPARITY_MEAN,
    DISPARITY_STD,
    INVALID_VALUE,
    disparity_stats,
    load_depth,
)
from xsearch.engine.preprocess.imu import MAX_WINDOWS, load_imu, looks_like_imu_csv
from xsearch.engine.preprocess.thermal import load_thermal
from xsearch.errors import MediaError, UsageError

K = 0.075 * 518.86  # default baseline * focal length


def standardised(depth_m: float) -> float:
    """What a valid pixel at depth_m (inside the clamp range) becomes, computed by hand."""
    return (K / depth_m - DISPARITY_MEAN) / DISPARITY_STD


def check_map(x: torch.Tensor) -> None:
    assert x.shape == (1, 224, 224)
    assert x.dtype == torch.float32
    assert torch.isfinite(x).all()


@pytest.fixture(scope="module")
def tiny_model(golden_dir: Path) -> ImageBindModel:
    cfg = ImageBindConfig.from_json(golden_dir / "tiny" / "config.json")
    return ImageBindModel(cfg, modalities=("depth", "thermal", "imu")).eval()


def save_png16(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr.astype(np.uint16)).save(path)
    return path


# --------------------------------------------------------------------------- depth


def test_disparity_constants_match_their_derivation():
    mean, std = disparity_stats()
    assert DISPARITY_MEAN == pytest.approx(mean, abs=1e-4)
    assert DISPARITY_STD == pytest.approx(std, abs=1e-4)
    assert INVALID_VALUE == pytest.approx(-DISPARITY_MEAN / DISPARITY_STD)


def test_depth_constant_png_gives_hand_computed_disparity(tmp_path):
    p = save_png16(tmp_path / "d.png", np.full((480, 640), 2000))  # 2 m everywhere
    x = load_depth(p)
    check_map(x)
    # 0.075 * 518.86 / 2 = 19.45725 px -> (19.45725 - 12.2713) / 12.3403
    assert torch.allclose(x, torch.full_like(x, standardised(2.0)), atol=1e-5)
    assert standardised(2.0) == pytest.approx(0.58231, abs=1e-4)


def test_depth_png_holes_get_invalid_value(tmp_path):
    arr = np.full((448, 448), 1000)  # 1 m; 448 -> 224 halves every coordinate
    arr[:, :224] = 0  # left half: no measurement
    x = load_depth(save_png16(tmp_path / "holes.png", arr))
    check_map(x)
    assert torch.allclose(x[0, :, :100], torch.tensor(INVALID_VALUE), atol=1e-5)
    assert torch.allclose(x[0, :, 124:], torch.tensor(standardised(1.0)), atol=1e-5)


def test_depth_clamped_to_documented_range(tmp_path):
    near = load_depth(save_png16(tmp_path / "near.png", np.full((224, 224), 100)))  # 0.1 m -> 0.5 m
    far = load_depth(save_png16(tmp_path / "far.png", np.full((224, 224), 30000)))  # 30 m -> 10 m
    assert torch.allclose(near, torch.tensor(standardised(depth_mod.DEPTH_MIN_M)), atol=1e-5)
    assert torch.allclose(far, torch.tensor(standardised(depth_mod.DEPTH_MAX_M)), atol=1e-5)
    assert far.min() > INVALID_VALUE  # far but valid stays distinguishable from "no data"


def test_depth_scale_and_camera_options(tmp_path):
    p = save_png16(tmp_path / "cm.png", np.full((224, 224), 200))  # centimetres
    x = load_depth(p, scale=0.01)
    assert torch.allclose(x, torch.tensor(standardised(2.0)), atol=1e-5)
    y = load_depth(p, scale=0.01, baseline=0.15)  # twice the baseline: twice the disparity
    assert torch.allclose(y, torch.tensor((2 * K / 2.0 - DISPARITY_MEAN) / DISPARITY_STD), atol=1e-5)
    with pytest.raises(UsageError, match="scale"):
        load_depth(p, scale=0)


def test_depth_npy_with_nan_inf_negative_holes(tmp_path):
    arr = np.full((300, 400), 2.5, dtype=np.float32)  # metres
    arr[:150, :] = np.nan
    arr[:150, :200] = np.inf
    arr[:150, :50] = -1.0
    np.save(tmp_path / "d.npy", arr)
    x = load_depth(tmp_path / "d.npy")
    check_map(x)
    # 300 -> 224: row 150 maps to ~112; stay away from the seam
    assert torch.allclose(x[0, :100], torch.tensor(INVALID_VALUE), atol=1e-5)
    assert torch.allclose(x[0, 125:], torch.tensor(standardised(2.5)), atol=1e-5)


def test_depth_npz_single_array_and_depth_key(tmp_path):
    arr = np.full((224, 300), 3.0)
    np.savez(tmp_path / "one.npz", whatever=arr)
    np.savez_compressed(tmp_path / "two.npz", rgb=np.zeros((224, 300, 3)), depth=arr)
    expected = torch.tensor(standardised(3.0))
    assert torch.allclose(load_depth(tmp_path / "one.npz"), expected, atol=1e-5)
    assert torch.allclose(load_depth(tmp_path / "two.npz"), expected, atol=1e-5)
    np.savez(tmp_path / "bad.npz", a=arr, b=arr)
    with pytest.raises(MediaError, match="'depth'"):
        load_depth(tmp_path / "bad.npz")


def test_depth_float_tiff_in_metres(tmp_path):
    Image.fromarray(np.full((224, 224), 4.0, dtype=np.float32)).save(tmp_path / "d.tif")
    assert torch.allclose(load_depth(tmp_path / "d.tif"), torch.tensor(standardised(4.0)), atol=1e-5)


def test_depth_resize_keeps_layout(tmp_path):
    arr = np.full((120, 240), 1000)
    arr[:, 120:] = 4000  # left near, right far
    x = load_depth(save_png16(tmp_path / "lr.png", arr))  # -> 224 x 448, crop 112..336
    check_map(x)
    assert torch.allclose(x[0, :, :100], torch.tensor(standardised(1.0)), atol=1e-4)
    assert torch.allclose(x[0, :, 124:], torch.tensor(standardised(4.0)), atol=1e-4)


def test_depth_all_invalid_is_an_error(tmp_path):
    with pytest.raises(MediaError, match="no valid pixels"):
        load_depth(save_png16(tmp_path / "zero.png", np.zeros((64, 64))))
    np.save(tmp_path / "nan.npy", np.full((64, 64), np.nan))
    with pytest.raises(MediaError, match="no valid pixels"):
        load_depth(tmp_path / "nan.npy")


def test_depth_wrong_kind_of_file_is_an_error(tmp_path):
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "rgb.png")
    with pytest.raises(MediaError, match="3 channels") as e:
        load_depth(tmp_path / "rgb.png")
    assert "rgb.png" in str(e.value)
    Image.new("L", (64, 64), 100).save(tmp_path / "gray8.png")
    with pytest.raises(MediaError, match="8-bit"):
        load_depth(tmp_path / "gray8.png")
    np.save(tmp_path / "cube.npy", np.ones((64, 64, 3)))
    with pytest.raises(MediaError, match="2-D"):
        load_depth(tmp_path / "cube.npy")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(MediaError):
        load_depth(tmp_path / "junk.png")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(MediaError, match="NumPy"):
        load_depth(tmp_path / "junk.npy")


def test_depth_output_accepted_by_model(tmp_path, tiny_model):
    arr = np.random.default_rng(0).uniform(500, 8000, (240, 320))
    arr[:20] = 0
    x = load_depth(save_png16(tmp_path / "d.png", arr))
    with torch.no_grad():
        out = tiny_model.embed("depth", x[None])
    assert out.shape == (1, 24) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- thermal


def test_thermal_8bit_constant_and_gradient(tmp_path):
    Image.new("L", (320, 240), 128).save(tmp_path / "c8.png")
    x = load_thermal(tmp_path / "c8.png")
    check_map(x)
    assert torch.allclose(x, torch.tensor(128 / 255), atol=1e-6)
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    y = load_thermal(tmp_path / "ramp.png")
    check_map(y)
    assert y.min() >= 0 and y.max() <= 1
    assert (y[0, :, 1:] >= y[0, :, :-1]).all()  # left-to-right ramp stays monotonic
    assert y[0, 0, 0] < 0.1 and y[0, 0, -1] > 0.9


def test_thermal_16bit_min_max_scaling(tmp_path):
    arr = np.full((224, 224), 1000)
    arr[:, 112:] = 3000
    arr[0, 0] = 2000
    x = load_thermal(save_png16(tmp_path / "t16.png", arr))  # 224 x 224: no resize
    check_map(x)
    assert x[0, 5, 5] == 0.0 and x[0, 5, 200] == 1.0 and x[0, 0, 0] == pytest.approx(0.5)


def test_thermal_16bit_resized_stays_in_unit_range(tmp_path):
    arr = np.zeros((300, 448))
    arr[::7, ::5] = 60000  # sharp edges make bicubic overshoot before clipping
    x = load_thermal(save_png16(tmp_path / "spiky.png", arr))
    check_map(x)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.2


def test_thermal_constant_16bit_is_zeros_not_nan(tmp_path):
    x = load_thermal(save_png16(tmp_path / "flat.png", np.full((100, 150), 777)))
    check_map(x)
    assert (x == 0).all()


def test_thermal_rgb_is_read_as_luminance(tmp_path):
    Image.new("RGB", (224, 224), (255, 0, 0)).save(tmp_path / "red.png")
    x = load_thermal(tmp_path / "red.png")
    check_map(x)
    assert torch.allclose(x, torch.tensor(76 / 255), atol=1e-6)  # PIL: 255 * 299 / 1000 -> 76
    (tmp_path / "junk.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(MediaError):
        load_thermal(tmp_path / "junk.png")


def test_thermal_output_accepted_by_model(tmp_path, tiny_model):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 320), dtype=np.uint8)).save(tmp_path / "t.png")
    with torch.no_grad():
        out = tiny_model.embed("thermal", load_thermal(tmp_path / "t.png")[None])
    assert out.shape == (1, 24) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- IMU


def write_csv(path: Path, header: list[str], rows: np.ndarray | list, sep: str = ",") -> Path:
    lines = [sep.join(header)] + [sep.join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def imu_rows(n: int, rate: float, freq: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Times (s) and six channels: accel x is a sinusoid, the others distinct constants."""
    t = np.arange(n) / rate
    data = np.stack([np.sin(2 * np.pi * freq * t)] + [np.full(n, c) for c in (1.0, 2.0, 3.0, 4.0, 5.0)], axis=1)
    return t, data


def check_windows(w: torch.Tensor, n: int) -> None:
    assert w.shape == (n, 6, 2000)
    assert w.dtype == torch.float32
    assert torch.isfinite(w).all()


@pytest.mark.parametrize(
    "header",
    [
        ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"],
        ["AccX", "AccY", "AccZ", "GyroX", "GyroY", "GyroZ"],
        ["accelerometer.x", "accelerometer.y", "accelerometer.z", "gyroscope.x", "gyroscope.y", "gyroscope.z"],
        ["accel x", "accel y", "accel z", "gyr-x", "gyr-y", "gyr-z"],
        ["ACCELERATION_X (m/s^2)", "Acceleration_Y (m/s^2)", "acceleration_z", "Gyro_X [rad/s]", "gyro_y", "gyro_z"],
    ],
)
def test_imu_header_spellings(tmp_path, header):
    _, data = imu_rows(2000, 400.0)
    # columns shuffled and an unrelated column added: order comes from the names
    order = [3, 0, 5, 1, 4, 2]
    p = write_csv(tmp_path / "imu.csv", ["label"] + [header[i] for i in order],
                  [["a"] + [f"{row[i]:.6f}" for i in order] for row in data])
    assert looks_like_imu_csv(p)
    w = load_imu(p)
    check_windows(w, 1)
    np.testing.assert_allclose(w[0].numpy(), data.T, atol=1e-6)


@pytest.mark.parametrize(
    ("time_name", "rate", "unit"),
    [("timestamp", 100.0, 1.0), ("time_s", 200.0, 1.0), ("timestamp_ns", 200.0, 1e9), ("ts", 100.0, 1e9),
     ("time", 100.0, 1e3)],
)
def test_imu_timestamps_resampled_to_400hz(tmp_path, time_name, rate, unit):
    t, data = imu_rows(int(5 * rate), rate)
    stamps = (1_700_000_000 + t) * unit if unit == 1e9 else t * unit  # ns as epoch times
    rows = [[f"{s:.0f}" if unit != 1.0 else f"{s:.6f}"] + [f"{v:.9f}" for v in row] for s, row in zip(stamps, data)]
    p = write_csv(tmp_path / "imu.csv", [time_name, "acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"], rows)
    w = load_imu(p)
    check_windows(w, 1)  # 5 s at any rate -> exactly 2000 samples
    accel_x = w[0, 0].numpy()
    k = np.arange(2000)
    # linear interpolation of a 3 Hz sine sampled at >= 100 Hz is within 0.005 of the truth
    # (the last samples past the final row hold its value)
    np.testing.assert_allclose(accel_x[:1990], np.sin(2 * np.pi * 3.0 * k[:1990] / 400.0), atol=5e-3)
    assert int(np.argmax(np.abs(np.fft.rfft(accel_x)))) == 15  # 3 Hz * 5 s: frequency preserved
    np.testing.assert_allclose(w[0, 1:].numpy(), np.repeat([[1.0], [2.0], [3.0], [4.0], [5.0]], 2000, 1))


def test_imu_sample_rate_option_without_timestamps(tmp_path):
    _, data = imu_rows(500, 100.0)
    p = write_csv(tmp_path / "imu.csv", ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"], data)
    w = load_imu(p, sample_rate=100)
    check_windows(w, 1)
    assert int(np.argmax(np.abs(np.fft.rfft(w[0, 0].numpy())))) == 15
    assert (w[0, 0, 1996:] != 0).any()  # 500 rows at 100 Hz fill the whole window
    with pytest.raises(UsageError):
        load_imu(p, sample_rate=-5)


def test_imu_short_recording_is_zero_padded(tmp_path):
    data = np.arange(42, dtype=float).reshape(7, 6) + 1
    p = write_csv(tmp_path / "short.csv", ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"], data)
    w = load_imu(p)  # no timestamps, no rate: already 400 Hz
    check_windows(w, 1)
    np.testing.assert_array_equal(w[0, :, :7].numpy(), data.T)
    assert (w[0, :, 7:] == 0).all()


def test_imu_twelve_seconds_gives_three_windows(tmp_path):
    t, data = imu_rows(1200, 100.0)
    rows = [[f"{s:.2f}"] + list(row) for s, row in zip(t, data)]
    p = write_csv(tmp_path / "long.csv", ["t", "acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"], rows)
    w = load_imu(p)
    check_windows(w, 3)  # 0-5 s, 5-10 s, and 7-12 s (end-aligned: no zero padding)
    k = np.arange(2000)
    for window, start_s in zip(w, (0.0, 5.0, 7.0)):
        expected = np.sin(2 * np.pi * 3 * (start_s + k[:1990] / 400))
        np.testing.assert_allclose(window[0, :1990].numpy(), expected, atol=5e-3)
    assert (w[2, 1:] != 0).all()  # constant channels: no zero padding in the last window


def test_imu_tail_rule_and_window_cap(tmp_path):
    def windows(seconds: float) -> torch.Tensor:
        np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(6, int(seconds * 400))))
        return load_imu(tmp_path / "x.npy")

    assert windows(5.5).shape[0] == 1  # 0.5 s left over: less than 1.25 s, dropped
    assert windows(6.5).shape[0] == 2  # 1.5 s left over: one more window ending at the end
    capped = windows(200.0)  # 40 windows' worth
    check_windows(capped, MAX_WINDOWS)
    full = np.load(tmp_path / "x.npy").astype(np.float32)
    np.testing.assert_array_equal(capped[0].numpy(), full[:, :2000])
    np.testing.assert_array_equal(capped[-1].numpy(), full[:, -2000:])


def test_imu_npy_both_layouts(tmp_path):
    _, data = imu_rows(3000, 400.0)
    np.save(tmp_path / "nx6.npy", data)
    np.save(tmp_path / "6xn.npy", data.T.astype(np.float32))
    a, b = load_imu(tmp_path / "nx6.npy"), load_imu(tmp_path / "6xn.npy")
    check_windows(a, 2)
    torch.testing.assert_close(a, b)
    np.testing.assert_allclose(a[0].numpy(), data[:2000].T, atol=1e-6)
    np.save(tmp_path / "bad.npy", np.zeros((5, 100)))
    with pytest.raises(MediaError, match=r"\(6, N\)"):
        load_imu(tmp_path / "bad.npy")


def test_imu_missing_gyro_columns(tmp_path):
    p = write_csv(tmp_path / "acc.csv", ["time", "acc_x", "acc_y", "acc_z"], [[0, 1, 2, 3], [0.01, 1, 2, 3]])
    assert not looks_like_imu_csv(p)
    with pytest.raises(MediaError, match="gyro") as e:
        load_imu(p)
    msg = str(e.value)
    assert "acc.csv" in msg and "'acc_x'" in msg and "gyro/gyr/gyroscope" in msg


def test_imu_non_numeric_value_names_column_and_line(tmp_path):
    rows = [[0.0, 1, 2, 3, 4, 5, 6], [0.01, 1, 2, 3, "fast", 5, 6], [0.02, 1, 2, 3, 4, 5, 6]]
    p = write_csv(tmp_path / "words.csv", ["time", "acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"], rows)
    with pytest.raises(MediaError, match=r"column 'gyro_x', line 3: 'fast' is not a number"):
        load_imu(p)


def test_imu_isolated_missing_values_are_interpolated(tmp_path):
    rows = [[1, 2, 3, 4, 5, 6], [3, "", 3, 4, 5, 6], ["nan", 2, 3, 4, 5, 6], [7, 2, 3, 4, 5, 6]]
    p = write_csv(tmp_path / "gaps.csv", ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"], rows, sep=";")
    w = load_imu(p)
    np.testing.assert_allclose(w[0, 0, :4].numpy(), [1, 3, 5, 7])
    np.testing.assert_allclose(w[0, 1, :4].numpy(), [2, 2, 2, 2])


def test_imu_interleaved_rows_with_same_timestamp_are_merged(tmp_path):
    rows = []
    for i in range(4):
        rows.append([i * 0.0025, i, i, i, "", "", ""])
        rows.append([i * 0.0025, "", "", "", -i, -i, -i])
    p = write_csv(tmp_path / "inter.csv", ["time", "acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"], rows)
    w = load_imu(p)  # 400 Hz timestamps
    np.testing.assert_allclose(w[0, :, :4].numpy(), [[0, 1, 2, 3]] * 3 + [[0, -1, -2, -3]] * 3)


def test_imu_bad_files(tmp_path):
    header = ["time", "acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(MediaError, match="empty"):
        load_imu(tmp_path / "empty.csv")
    with pytest.raises(MediaError, match="no data rows"):
        load_imu(write_csv(tmp_path / "hdr.csv", header, []))
    back = write_csv(tmp_path / "back.csv", header, [[0.0, *range(6)], [0.02, *range(6)], [0.01, *range(6)]])
    with pytest.raises(MediaError, match=r"'time' goes backwards at line 4"):
        load_imu(back)
    with pytest.raises(MediaError, match=r"column 'acc_y', line 2: infinite"):
        load_imu(write_csv(tmp_path / "inf.csv", header, [[0.0, 1, "inf", 3, 4, 5, 6]]))
    with pytest.raises(MediaError, match="'gyro_z' has no numeric values"):
        load_imu(write_csv(tmp_path / "nogz.csv", header, [[0.0, 1, 2, 3, 4, 5, ""], [0.01, 1, 2, 3, 4, 5, ""]]))
    with pytest.raises(MediaError, match="line 2 has 4 fields"):
        load_imu(write_csv(tmp_path / "short.csv", header, [[0.0, 1, 2, 3]]))
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00acc_x\x00\x81")
    assert not looks_like_imu_csv(tmp_path / "bin.csv")
    with pytest.raises(MediaError):
        load_imu(tmp_path / "bin.csv")
    with pytest.raises(MediaError, match="not found"):
        load_imu(tmp_path / "nope.csv")
    assert not looks_like_imu_csv(tmp_path / "nope.csv")


def test_imu_output_accepted_by_model(tmp_path, tiny_model):
    t, data = imu_rows(1200, 100.0)
    p = write_csv(tmp_path / "imu.csv", ["time", "AccX", "AccY", "AccZ", "GyrX", "GyrY", "GyrZ"],
                  [[f"{s:.2f}", *row] for s, row in zip(t, data)])
    w = load_imu(p)
    with torch.no_grad():
        per_window = tiny_model.embed("imu", w)
    assert per_window.shape == (w.shape[0], 24) and torch.isfinite(per_window).all()
    clip = per_window.mean(dim=0)  # the engine averages windows like audio clips
    assert clip.shape == (24,) and math.isfinite(float(clip.norm()))
