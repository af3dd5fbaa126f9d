"""What the viewer downloads: volume metadata, gzip'd voxels with HTTP caching, slice thumbnails."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import phantom_volume


@pytest.fixture
def case(team, make_case):
    return make_case(team.project, name="phantom", assignee=team.annotator, array=phantom_volume((6, 20, 24)))


def test_volume_metadata_describes_the_grid_and_intensities(case, team, api_client):
    body = api_client(team.annotator).get(f"/api/cases/{case.pk}/volume/").json()

    assert body["shape"] == [6, 20, 24]
    assert body["spacing"] == [2.5, 0.8, 0.8]
    assert body["dtype"] == "int16"
    assert len(body["affine"]) == 4 and body["affine"][3] == [0, 0, 0, 1]
    assert body["modality"] == "CT"
    assert set(body["stats"]) == {"min", "max", "mean", "std", "p0_5", "p99_5"}
    assert body["stats"]["min"] < -900 and body["stats"]["max"] > 100
    assert body["voxels_url"] == f"/api/cases/{case.pk}/volume/voxels/"


def test_voxels_arrive_gzip_encoded_and_decode_to_the_volume(case, team, api_client):
    response = api_client(team.annotator).get(f"/api/cases/{case.pk}/volume/voxels/")

    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Volume-Shape"] == "6,20,24" and response["X-Volume-Dtype"] == "int16"
    assert response["Cache-Control"].startswith("private, max-age=")
    raw = gzip.decompress(b"".join(response.streaming_content))
    voxels = np.frombuffer(raw, dtype="<i2").reshape(6, 20, 24)
    assert np.array_equal(voxels, phantom_volume((6, 20, 24)))


def test_voxels_are_not_sent_again_when_the_browser_has_them(case, team, api_client):
    client = api_client(team.annotator)
    etag = client.get(f"/api/cases/{case.pk}/volume/voxels/")["ETag"]

    again = client.get(f"/api/cases/{case.pk}/volume/voxels/", HTTP_IF_NONE_MATCH=etag)

    assert again.status_code == 304
    assert again["ETag"] == etag
    assert not again.content
    stale = client.get(f"/api/cases/{case.pk}/volume/voxels/", HTTP_IF_NONE_MATCH='"something-else"')
    assert stale.status_code == 200


def test_a_slice_renders_as_a_windowed_png(case, team, api_client):
    client = api_client(team.annotator)

    response = client.get(f"/api/cases/{case.pk}/slices/3.png?window=400&level=40")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.mode == "L"
    pixels = np.asarray(image)
    # Air (-1000 HU) is black and the 120 HU core is bright in a 400/40 window.
    assert pixels.min() == 0 and pixels.max() > 150
    assert (
        client.get(
            f"/api/cases/{case.pk}/slices/3.png?window=400&level=40", HTTP_IF_NONE_MATCH=response["ETag"]
        ).status_code
        == 304
    )


def test_coronal_and_sagittal_slices_render_too(case, team, api_client):
    client = api_client(team.annotator)

    assert client.get(f"/api/cases/{case.pk}/slices/10.png?axis=coronal").status_code == 200
    assert client.get(f"/api/cases/{case.pk}/slices/12.png?axis=sagittal").status_code == 200


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("slices/6.png", "slice_out_of_range"),  # the volume has slices 0..5
        ("slices/1.png?axis=oblique", "invalid_axis"),
        ("slices/1.png?window=-5", "invalid_window"),
        ("slices/1.png?window=wide", "invalid_window"),
    ],
)
def test_a_bad_slice_request_gets_a_clear_400(case, team, api_client, path, code):
    response = api_client(team.annotator).get(f"/api/cases/{case.pk}/{path}")

    assert response.status_code == 400
    assert response.json()["code"] == code


def test_decoded_volumes_are_reused_within_the_memory_budget(case, settings):
    from annotator.services import cases

    settings.PROPLABEL_VOXEL_CACHE_BYTES = 10 * 1024**2
    first = cases.read_volume_array(case.volume)
    assert cases.read_volume_array(case.volume) is first
    assert not first.flags.writeable  # shared between callers: nobody may change it in place

    settings.PROPLABEL_VOXEL_CACHE_BYTES = 0
    cases._array_cache.clear()
    assert cases.read_volume_array(case.volume) is not cases.read_volume_array(case.volume)
