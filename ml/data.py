"""Training data: nnU-Net v2 raw data sets -> canonical volumes, object extraction, synthetic volumes.

Canonical arrays follow docs/ARCHITECTURE.md: image float32 ``(Z, Y, X)`` (NIfTI voxel axes reversed:
``data.transpose(2, 1, 0)``), labels ``(Z, Y, X)`` (``ml.objects.label_map``), spacing ``(sz, sy, sx)`` in mm.

An *object* is a 3D connected component (26-connectivity) of one label value spanning at least
``MIN_OBJECT_SLICES`` slices and ``MIN_OBJECT_VOXELS`` voxels (the evaluation's definition).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ml.objects import label_map

DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"
"""Where the shared nnU-Net raw data sets sit: ``../shared/data`` beside the repository."""
MIN_OBJECT_SLICES = 2
MIN_OBJECT_VOXELS = 50


@dataclass
class Case:
    """One volume: ``image`` float32 ``(Z, Y, X)``, ``labels`` unsigned ``(Z, Y, X)``, ``spacing`` (sz, sy, sx)."""

    name: str
    dataset: str
    image: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]


@dataclass
class ObjectInfo:
    """One object of a case: its id in the case's object map, label value, and per-slice geometry.

    ``z_first..z_last`` is the slice range; ``areas[i]`` and ``boxes[i]`` (inclusive ``(y0, x0, y1, x1)``,
    all -1 when empty) describe slice ``z_first + i``.
    """

    object_id: int
    label: int
    z_first: int
    z_last: int
    areas: np.ndarray
    boxes: np.ndarray

    @property
    def largest_slice(self) -> int:
        return self.z_first + int(np.argmax(self.areas))


@dataclass
class ObjectVolume:
    """A case with its object map (int16 ``(Z, Y, X)``; 0 = no object, ``k`` = ``objects[k - 1]``)."""

    case: Case
    object_map: np.ndarray
    objects: list[ObjectInfo] = field(default_factory=list)


def read_dataset_json(dataset_dir: pathlib.Path) -> dict:
    path = pathlib.Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise FileNotFoundError(f"{dataset_dir} is not an nnU-Net raw data set: no dataset.json")
    return json.loads(path.read_text())


def list_cases(dataset_dir: pathlib.Path) -> list[str]:
    """Case ids (sorted) that have a label file in ``labelsTr``."""
    info = read_dataset_json(dataset_dir)
    ending = info.get("file_ending", ".nii.gz")
    labels_dir = pathlib.Path(dataset_dir) / "labelsTr"
    return sorted(path.name[: -len(ending)] for path in labels_dir.glob(f"*{ending}"))


def read_case(dataset_dir: pathlib.Path, case_id: str) -> Case:
    """Load ``imagesTr/<case>_0000`` and ``labelsTr/<case>`` as canonical ``(Z, Y, X)`` arrays."""
    import nibabel as nib  # imported lazily: inference never needs it

    dataset_dir = pathlib.Path(dataset_dir)
    ending = read_dataset_json(dataset_dir).get("file_ending", ".nii.gz")
    image_nii = nib.load(str(dataset_dir / "imagesTr" / f"{case_id}_0000{ending}"))
    label_nii = nib.load(str(dataset_dir / "labelsTr" / f"{case_id}{ending}"))
    image = np.ascontiguousarray(np.asarray(image_nii.dataobj, dtype=np.float32).transpose(2, 1, 0))
    labels = np.ascontiguousarray(label_map(np.asarray(label_nii.dataobj), case_id).transpose(2, 1, 0))
    if image.shape != labels.shape:
        raise ValueError(f"{case_id}: image {image.shape} and labels {labels.shape} differ")
    zooms = image_nii.header.get_zooms()[:3]
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return Case(case_id, dataset_dir.name, image, labels, spacing)


def find_objects(labels: np.ndarray) -> tuple[np.ndarray, list[ObjectInfo]]:
    """Objects of a label volume: ``(object_map int16 (Z, Y, X), objects)`` (see module docstring)."""
    object_map = np.zeros(labels.shape, dtype=np.int16)
    objects: list[ObjectInfo] = []
    structure = np.ones((3, 3, 3), dtype=bool)
    for label in np.unique(labels):
        if label == 0:
            continue
        components, count = ndimage.label(labels == label, structure=structure)
        for index, slices in enumerate(ndimage.find_objects(components), start=1):
            if slices is None:
                continue
            component = components[slices] == index
            if component.sum() < MIN_OBJECT_VOXELS or component.shape[0] < MIN_OBJECT_SLICES:
                continue
            object_id = len(objects) + 1
            object_map[slices][component] = object_id
            areas = component.sum(axis=(1, 2)).astype(np.int64)
            boxes = np.full((component.shape[0], 4), -1, dtype=np.int64)
            for z in range(component.shape[0]):
                if areas[z]:
                    rows = np.flatnonzero(component[z].any(axis=1))
                    cols = np.flatnonzero(component[z].any(axis=0))
                    boxes[z] = (
                        rows[0] + slices[1].start,
                        cols[0] + slices[2].start,
                        rows[-1] + slices[1].start,
                        cols[-1] + slices[2].start,
                    )
            objects.append(
                ObjectInfo(object_id, int(label), slices[0].start, slices[0].stop - 1, areas, boxes)
            )
        del components, count
    return object_map, objects


def object_volume(case: Case) -> ObjectVolume:
    object_map, objects = find_objects(case.labels)
    return ObjectVolume(case, object_map, objects)


# ---------------------------------------------------------------------------------------------------------
# Synthetic volumes: random smooth 3D shapes with organ- and lesion-like textures.


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int, int], coarse: int) -> np.ndarray:
    """Zero-mean unit-ish smooth noise ``shape`` made by upsampling a coarse random grid."""
    grid = rng.standard_normal(
        (max(2, shape[0] // coarse + 2), max(2, shape[1] // coarse + 2), max(2, shape[2] // coarse + 2))
    )
    zoom = [target / source for target, source in zip(shape, grid.shape, strict=True)]
    field_ = ndimage.zoom(grid, zoom, order=1)[: shape[0], : shape[1], : shape[2]]
    return field_.astype(np.float32)


def _tube_distance(
    rng: np.random.Generator,
    zz: np.ndarray,
    yy: np.ndarray,
    xx: np.ndarray,
    centre: np.ndarray,
    extent_mm: np.ndarray,
    rib_like: bool = False,
) -> np.ndarray:
    """Normalised distance (< 1 inside) to a curved tube running through z: vessel-, cord- or rib-like.

    The centre line drifts in-plane by up to 1.5 mm per mm of z (steep = an oblique vessel that moves fast
    between axial slices), wanders smoothly, and its radius (1.5-8 mm) changes slowly; the tube ends
    somewhere inside the volume so that both of its ends are visible.

    ``rib_like``: the tube lies close to the axial plane (1.5-4 mm of drift per mm of z, like a rib or a
    costal cartilage), its distance is measured across the tilted axis, so an axial slice cuts it as an
    ellipse stretched along the drift, and it is shortened so that it stays in the field of view.
    """
    z_mm = zz[:, 0, 0]
    if rib_like:
        steepness, heading = rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi)
        slope = steepness * np.array([np.sin(heading), np.cos(heading)])
    else:
        slope = rng.uniform(-1.5, 1.5, size=2) if rng.random() < 0.5 else rng.uniform(-0.3, 0.3, size=2)
    phase, period = rng.uniform(0, 2 * np.pi, size=2), rng.uniform(20.0, 80.0, size=2)
    amplitude = rng.uniform(0.0, 8.0, size=2)
    offset = z_mm - centre[0]
    centre_y = centre[1] + slope[0] * offset + amplitude[0] * np.sin(2 * np.pi * z_mm / period[0] + phase[0])
    centre_x = centre[2] + slope[1] * offset + amplitude[1] * np.sin(2 * np.pi * z_mm / period[1] + phase[1])
    radius = rng.uniform(1.5, 8.0) * (1.0 + 0.25 * np.sin(2 * np.pi * z_mm / rng.uniform(30, 90) + phase[0]))
    half_length = rng.uniform(0.25, 0.6) * extent_mm[0]
    offset_y, offset_x = yy - centre_y[:, None, None], xx - centre_x[:, None, None]
    in_plane = offset_y**2 + offset_x**2
    if rib_like:
        # Distance across the tilted axis (1, slope): the in-plane offset minus its part along the drift.
        along = (offset_y * slope[0] + offset_x * slope[1]) ** 2 / (1.0 + float(slope @ slope))
        in_plane = in_plane - along
        half_length = min(
            half_length, 0.35 * float(min(extent_mm[1], extent_mm[2])) / float(np.hypot(*slope))
        )
    distance = in_plane / (radius[:, None, None] ** 2)
    outside_ends = np.abs(offset) > half_length
    distance[outside_ends] = 10.0
    return distance.astype(np.float32)


def synthetic_case(rng: np.random.Generator, name: str = "synthetic", rib_like_tubes: float = 0.0) -> Case:
    """A random volume with 1-4 smooth objects (blobs or curved tubes, some touching), varied contrast, noise,
    scale and spacing.

    ``rib_like_tubes``: share of the tubes drawn close to the axial plane (see ``_tube_distance``); at 0 no
    extra random number is drawn, so a seed gives the same volumes as before the option existed.

    Returns a ``Case`` whose labels are 1..n (one value per object); shapes about
    ``(20-60, 72-128, 72-128)``; spacing ``sy = sx`` in 0.6-1.5 mm, ``sz`` from isotropic to 5 mm.
    """
    in_plane = float(rng.uniform(0.6, 1.5))
    z_spacing = float(rng.choice([in_plane, in_plane, 1.5, 2.0, 3.0, 5.0]))
    depth = int(rng.integers(20, 61))
    height = int(rng.integers(72, 129))
    width = int(rng.integers(72, 129))
    shape = (depth, height, width)
    zz, yy, xx = np.meshgrid(
        np.arange(depth, dtype=np.float32) * z_spacing,
        np.arange(height, dtype=np.float32) * in_plane,
        np.arange(width, dtype=np.float32) * in_plane,
        indexing="ij",
    )
    background = 0.3 * _smooth_noise(rng, shape, int(rng.integers(6, 20))) + 0.15 * _smooth_noise(
        rng, shape, 3
    )
    image = background + float(rng.uniform(-0.5, 0.5))
    labels = np.zeros(shape, dtype=np.uint8)
    extent_mm = np.array([depth * z_spacing, height * in_plane, width * in_plane], dtype=np.float32)
    centre = extent_mm * rng.uniform(0.35, 0.65, size=3).astype(np.float32)
    count = int(rng.integers(1, 5))
    for value in range(1, count + 1):
        tube = rng.random() < 0.3
        lesion = not tube and rng.random() < 0.35
        radii = rng.uniform(3.0, 10.0, size=3) if lesion else rng.uniform(7.0, 28.0, size=3)
        radii[0] = max(radii[0], 1.6 * z_spacing)
        if value > 1:  # neighbours sit next to (often touching) the first object
            centre = centre + rng.normal(0.0, 1.0, size=3).astype(np.float32) * radii.astype(np.float32)
        if tube:
            rib_like = rib_like_tubes > 0 and rng.random() < rib_like_tubes
            distance = _tube_distance(rng, zz, yy, xx, centre, extent_mm, rib_like)
        else:
            distance = (
                ((zz - centre[0]) / radii[0]) ** 2
                + ((yy - centre[1]) / radii[1]) ** 2
                + ((xx - centre[2]) / radii[2]) ** 2
            )
        wobble = float(rng.uniform(0.1, 0.5)) * _smooth_noise(rng, shape, int(rng.integers(4, 12)))
        inside = (distance + wobble) < 1.0
        if inside.sum() < MIN_OBJECT_VOXELS:
            continue
        labels[inside] = value
        contrast = float(rng.choice([-1.0, 1.0])) * float(rng.uniform(0.25, 1.5))
        texture = float(rng.uniform(0.0, 0.4)) * _smooth_noise(rng, shape, int(rng.integers(2, 6)))
        if lesion and rng.random() < 0.5:  # rim-enhancing lesion: brighter edge, darker core
            texture = texture + 0.6 * contrast * (np.sqrt(np.clip(distance, 0, 1)) - 0.5)
        image[inside] = (background + contrast + texture)[inside]
    noise_level = float(rng.uniform(0.02, 0.35))
    image = image + noise_level * rng.standard_normal(shape).astype(np.float32)
    if rng.random() < 0.5:  # bias field, like MR
        image = image * (1.0 + 0.3 * _smooth_noise(rng, shape, 24))
    image = image * float(10 ** rng.uniform(-1, 3)) + float(rng.uniform(-500, 500))
    return Case(name, "synthetic", image.astype(np.float32), labels, (z_spacing, in_plane, in_plane))


# ---------------------------------------------------------------------------------------------------------
# Pseudo-labelled real images: objects that the image itself defines (after SSL-ALPNet's supervoxels).

PSEUDO_MAX_VOLUME_FRACTION = 0.2
"""A region larger than this share of its volume is background-like (white matter, soft tissue): dropped."""
PSEUDO_MIN_SLICES = 3


def pseudo_labelled_case(case: Case, rng: np.random.Generator, max_objects: int = 40) -> Case:
    """The case's image with labels made from the image alone: its homogeneous 3D regions.

    The image is clipped to its 0.5-99.5 percentiles and smoothed (0.7 voxel in-plane, less across thick
    slices), cut into 3-6 intensity classes (``intensity_class_edges``), each class opened once (so that
    regions do not join through one-voxel bridges) and split into 6-connected regions. Regions of at least
    ``MIN_OBJECT_VOXELS`` voxels over at least ``PSEUDO_MIN_SLICES`` slices and at most
    ``PSEUDO_MAX_VOLUME_FRACTION`` of the volume become objects (up to ``max_objects``, chosen at random).

    Every such object is bounded by an intensity change on every side, so training on them teaches what
    transfers to organs and modalities never seen: the guide's appearance, not its shape, defines the
    object. The given labels are never read.

    Returns a ``Case`` (dataset ``"pseudo"``) with labels 1..n, image and spacing unchanged.
    """
    image = case.image
    low, high = np.percentile(image, [0.5, 99.5])
    clipped = np.clip(image, low, high).astype(np.float32)
    finest = min(case.spacing)
    sigma = tuple(0.7 * finest / spacing if spacing > 1.5 * finest else 0.7 for spacing in case.spacing)
    smooth = ndimage.gaussian_filter(clipped, sigma)
    classes_count = int(rng.integers(3, 7))
    edges = intensity_class_edges(smooth, classes_count, rng)
    classes = np.digitize(smooth, edges)
    six = ndimage.generate_binary_structure(3, 1)
    limit = PSEUDO_MAX_VOLUME_FRACTION * image.size
    regions: list[tuple[int, tuple[slice, ...], np.ndarray]] = []
    for level in range(classes_count):
        members = ndimage.binary_opening(classes == level, structure=six)
        components, _ = ndimage.label(members, structure=six)
        for index, slices in enumerate(ndimage.find_objects(components), start=1):
            if slices is None or slices[0].stop - slices[0].start < PSEUDO_MIN_SLICES:
                continue
            component = components[slices] == index
            pieces = [component]
            if component.sum() > limit:  # e.g. heart chambers joined through valves: cut at the necks
                pieces = split_at_necks(component, int(rng.integers(2, 5)))
            for piece in pieces:
                voxels = int(piece.sum())
                if (
                    MIN_OBJECT_VOXELS <= voxels <= limit
                    and np.count_nonzero(piece.any(axis=(1, 2))) >= PSEUDO_MIN_SLICES
                ):
                    regions.append((voxels, slices, piece))
    labels = np.zeros(image.shape, dtype=np.uint8)
    # Larger regions are preferred (an organ rather than a speck of noise), without excluding small ones.
    chosen: np.ndarray = np.array([], dtype=np.int64)
    if regions:
        preference = np.sqrt([voxels for voxels, _, _ in regions])
        count = min(max_objects, 255, len(regions))
        chosen = rng.choice(len(regions), size=count, replace=False, p=preference / preference.sum())
    for value, region_index in enumerate(chosen, start=1):
        _, slices, component = regions[region_index]
        labels[slices][component] = value
    return Case(f"{case.name}_pseudo", "pseudo", case.image, labels, case.spacing)


def intensity_class_edges(image: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """``classes - 1`` increasing cut points between intensity clusters (1D k-means from jittered quantiles).

    Cutting half-way between cluster centres puts the cuts in the valleys of the histogram, so a structure
    that stands out from its surroundings stays in one class with none of the surroundings' noise.
    """
    sample = rng.choice(image.ravel(), size=min(image.size, 20000), replace=False)
    start = np.linspace(0.5, classes - 0.5, classes) / classes + rng.uniform(-0.3, 0.3, classes) / classes
    centres = np.quantile(sample, np.clip(np.sort(start), 0.0, 1.0))
    for _ in range(15):
        nearest = np.argmin(np.abs(sample[:, None] - centres[None, :]), axis=1)
        centres = np.array(
            [sample[nearest == k].mean() if np.any(nearest == k) else centres[k] for k in range(classes)]
        )
        centres.sort()
    return (centres[1:] + centres[:-1]) / 2


def split_at_necks(component: np.ndarray, depth: int) -> list[np.ndarray]:
    """A region cut where it is narrow: erode ``depth`` voxels, give every voxel to its nearest remaining core.

    ``component`` is a boolean ``(Z, Y, X)`` array; returns one boolean array of the same shape per core (the
    region itself when erosion leaves fewer than two cores).
    """
    six = ndimage.generate_binary_structure(3, 1)
    cores, count = ndimage.label(
        ndimage.binary_erosion(component, structure=six, iterations=depth), structure=six
    )
    if count < 2:
        return [component]
    _, nearest = ndimage.distance_transform_edt(cores == 0, return_indices=True)
    owner = cores[tuple(nearest)]
    return [component & (owner == core) for core in range(1, count + 1)]
