"""The mask run-length codec: exact round trips, the documented wire format, and refusal of bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest

from annotator.maskcodec import decode_rle, decode_rle_3d, encode_rle, encode_rle_3d


def test_wire_format_starts_with_background_and_alternates():
    mask = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    assert encode_rle(mask) == [1, 3, 2]
    assert encode_rle(np.array([[1, 0]], dtype=bool)) == [0, 1, 1]


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (5, 7), (64, 64), (512, 512)])
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 0.95, 1.0])
def test_random_masks_round_trip_exactly(shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = rng.random(shape) < density
    runs = encode_rle(mask)
    assert sum(runs) == mask.size
    assert all(run > 0 for run in runs[1:])  # only the leading background run may be empty
    np.testing.assert_array_equal(decode_rle(runs, shape), mask)


def test_empty_and_full_masks_have_the_shortest_encodings():
    assert encode_rle(np.zeros((4, 5), dtype=bool)) == [20]
    assert encode_rle(np.ones((4, 5), dtype=bool)) == [0, 20]
    assert not decode_rle([20], (4, 5)).any()
    assert decode_rle([0, 20], (4, 5)).all()


def test_integer_label_slices_encode_their_non_zero_pixels():
    assert encode_rle(np.array([[0, 3, 7]], dtype=np.uint8)) == [1, 2]


def test_3d_masks_round_trip_in_c_order():
    rng = np.random.default_rng(3)
    mask = rng.random((4, 6, 5)) < 0.3
    runs = encode_rle_3d(mask)
    np.testing.assert_array_equal(decode_rle_3d(runs, mask.shape), mask)
    assert runs == encode_rle(mask.reshape(4, 30))


@pytest.mark.parametrize(
    ("runs", "problem"),
    [
        ([3, 2], "sum"),
        ([10, 20], "sum"),
        ([-1, 21], "negative"),
        ([2.5, 17.5], "integers"),
        (["a", "b"], "integers"),
        ([], "empty"),
        ([[1, 2], [3, 4]], "flat"),
    ],
)
def test_bad_run_lists_are_refused_with_a_reason(runs, problem):
    with pytest.raises(ValueError, match=problem):
        decode_rle(runs, (4, 5))


def test_integral_json_floats_are_accepted():
    np.testing.assert_array_equal(decode_rle([1.0, 3.0, 2.0], (2, 3)), [[0, 1, 1], [1, 0, 0]])


def test_encoding_a_3d_array_as_a_slice_is_refused():
    with pytest.raises(ValueError, match="2D"):
        encode_rle(np.zeros((2, 2, 2), dtype=bool))


def test_a_512_slice_encodes_and_decodes_in_well_under_5_ms():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    mask = ((yy - 256) ** 2 + (xx - 240) ** 2 < 120**2) ^ (rng.random((512, 512)) < 0.01)
    encode_rle(mask)  # warm-up
    start = time.perf_counter()
    for _ in range(20):
        decode_rle(encode_rle(mask), (512, 512))
    per_round_trip = (time.perf_counter() - start) / 20
    assert per_round_trip < 0.005
