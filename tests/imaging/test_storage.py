"""Stored voxel format: dtype rules, exact byte layout for the browser, statistics."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from annotator.imaging import decode_array, encode_array, intensity_stats, to_storage_dtype


@pytest.mark.parametrize(
    ("values", "dtype", "stored"),
    [
        (np.array([0, 255]), np.uint8, "uint8"),
        (np.array([-1024, 3071]), np.int16, "int16"),
        (np.array([0, 65535]), np.uint16, "uint16"),
        (np.array([0.5, 1.5]), np.float32, "float32"),
        (np.array([0.1, 1e6]), np.float64, "float32"),
        (np.array([True, False]), np.bool_, "uint8"),
        (np.array([-5, 5]), np.int8, "int16"),
        (np.array([-1024, 3071]), np.int32, "int16"),
        (np.array([0, 60000]), np.int32, "uint16"),
        (np.array([-1, 70000]), np.int64, "float32"),
    ],
)
def test_voxels_are_converted_to_a_storage_dtype_without_losing_values(values, dtype, stored):
    converted = to_storage_dtype(values.astype(dtype))
    assert converted.dtype == np.dtype(stored)
    np.testing.assert_allclose(converted.astype(np.float64), values.astype(dtype).astype(np.float32))


def test_big_endian_input_is_stored_little_endian():
    big = np.array([[[1, -2]]], dtype=">i2")
    assert encode_array(to_storage_dtype(big)) == encode_array(np.array([[[1, -2]]], dtype="<i2"))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32"])
def test_encoded_bytes_are_gzip_of_raw_little_endian_c_order(dtype):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    data = encode_array(array)
    assert gzip.decompress(data) == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes(order="C")
    restored = decode_array(data, (2, 3, 4), dtype)
    np.testing.assert_array_equal(restored, array)
    restored[0, 0, 0] = 1  # writable


def test_encoding_is_deterministic_so_etags_are_stable():
    array = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    assert encode_array(array) == encode_array(array.copy())


def test_encoding_a_non_storage_dtype_is_refused():
    with pytest.raises(TypeError, match="to_storage_dtype"):
        encode_array(np.zeros((1, 1, 1), dtype=np.float64))


def test_decoding_with_the_wrong_shape_is_refused():
    data = encode_array(np.zeros((2, 2, 2), dtype=np.int16))
    with pytest.raises(ValueError, match="bytes"):
        decode_array(data, (2, 2, 3), "int16")


def test_intensity_stats_are_plain_floats_with_robust_percentiles():
    array = np.concatenate([np.zeros(990), np.full(10, 1000.0)]).astype(np.float32).reshape(10, 10, 10)
    stats = intensity_stats(array)
    assert set(stats) == {"min", "max", "mean", "std", "p0_5", "p99_5"}
    assert all(isinstance(value, float) for value in stats.values())
    assert stats["min"] == 0.0 and stats["max"] == 1000.0
    assert stats["mean"] == pytest.approx(10.0)
    assert stats["p0_5"] == 0.0
    assert stats["p99_5"] == pytest.approx(1000.0)
