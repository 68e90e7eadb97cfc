"""Find where a shared copy sits in the original photo: the crop, scale, mirror, quarter turn and
screenshot border that made the copy from it.

The copy is assumed made as `frame` makes it: a box of the original cropped, mirrored left-right
(`mirrored`), turned counter-clockwise by a multiple of 90 degrees (`rotation`, a lost EXIF
orientation), resized to the copy's content size, framed in a uniform border, then recompressed.

Registration (`locate`), all by OpenCV:
1. Coarse: SIFT features of both photos in grayscale at most `MATCH_SIDE` px long, matched with
   Lowe's ratio test; a similarity (scale, turn, shift) fitted with RANSAC
   (`cv2.estimateAffinePartial2D`). SIFT is not mirror invariant, so the mirrored copy is matched
   as well and the fit with more inliers kept. The turn is snapped to a multiple of 90 degrees.
2. Border: rows and columns at the copy's edges that are uniform and unlike the aligned original
   (or outside it) are the screenshot's frame.
3. Refinement: `cv2.findTransformECC` (affine, on the content only) at the copy's resolution (at
   most `REFINE_SIDE` px), snapped again to scale + quarter turn + mirror; a stretched copy is
   refused here (and on the features' affine fit).
4. Settling: each box edge is moved by a pixel where that brings the original taken through the
   framing (`frame`) closer to the copy, so a copy made with PIL's bicubic filter is reproduced
   exactly. Then the check: the two must look alike (median absolute difference at most
   `MAX_MEDIAN_DIFFERENCE` levels), else the copy was altered beyond a reframing.

Refusals are `CopyNotLocatedError` with `kind` "too_small", "not_this_photo" or "too_altered".
Coordinates: edge coordinates throughout (pixel i spans [i, i + 1)), as 3x3 affine matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np
from PIL import Image

from deepshield.errors import CopyNotLocatedError

MATCH_SIDE = 800
"""Longest side (px) of the grayscale copies features are matched on, at most..."""
MATCH_MIN_SIDE = 480
"""...and at least (a small photo or copy is enlarged, so SIFT finds enough features in it)."""
SIFT_CONTRAST = 0.02
"""SIFT's contrast threshold (OpenCV's default 0.04 finds too few features in small copies)."""
REFINE_SIDE = 1024
"""Longest side (px) of the copy the refinement works at."""
MIN_COPY_SIDE = 32
"""A copy whose content is shorter than this (px) on a side is too small to locate."""
MIN_FEATURES = 12
"""Fewer SIFT features than this in the copy: too small or too plain to locate."""
MIN_INLIERS = 10
"""Matches consistent with one similarity needed to say the copy comes from the original; a
different photo gets 0-7 on the development photos."""
SMALL_COPY_SIDE = 96
"""A copy shorter than this (px) that too few features tie to the original is called too small
to locate rather than another photo (a 50 px copy of a 178 px photo keeps about 9)."""
SCALES = (0.02, 50.0)
"""Copy px per original px a fit may have; outside, it matched noise (another photo)."""
RATIO_TEST = 0.75
"""Lowe's ratio: a match is kept when its distance is under this share of the second best's."""
MAX_TURN_ERROR = 3.0
"""Degrees a fitted turn may be off a multiple of 90 (a copy turned by hand is refused)."""
MAX_STRETCH = (0.05, 0.02)
"""Relative difference of the horizontal and vertical scale allowed (a stretched copy is refused):
for the features' affine fit on the small copies, and for the refined fit, each plus the rounding
of the copy's size (1 px of its shorter side)."""
PURE_LEVELS = 2
"""A border channel within this many levels of 0 or 255 is taken as pure black or white (JPEG
moves them by a level or two)."""
BORDER_UNIFORMITY = 12.0
"""Largest standard deviation (levels of 255) of a border row or column (JPEG rings in it)."""
BORDER_DIFFERENCE = 16.0
"""Smallest median absolute difference (levels) from the aligned original that makes a uniform
edge row a border, not the photo's own plain edge (the perturbation is at most ~6 levels)."""
MAX_BORDER_SHARE = 0.25
"""A frame wider than this share of the copy on a side is refused as too altered."""
MAX_MEDIAN_DIFFERENCE = 12.0
"""Largest median absolute difference (levels) between the copy and the original taken through
the located framing; JPEG 40 of a protected photo gives about 3-5."""

Matrix = np.ndarray
"""A 3x3 affine matrix on edge coordinates (x, y, 1)."""


@dataclass(frozen=True)
class Location:
    """How the copy was made from the original (see the module docstring).

    `box`: (x0, y0, x1, y1) in the original's pixels, x1/y1 exclusive; `scale`: copy px per
    original px; `rotation`: 0, 90, 180 or 270 degrees counter-clockwise, after the mirror;
    `border`: (left, top, right, bottom) px of the copy; `fill`: the border's RGB colour;
    `content_size`: (width, height) of the copy inside the border; `matches`: RANSAC inliers."""

    box: tuple[int, int, int, int]
    scale: float
    mirrored: bool
    rotation: int
    border: tuple[int, int, int, int]
    fill: tuple[int, int, int]
    content_size: tuple[int, int]
    matches: int

    def as_dict(self) -> dict[str, Any]:
        """The report's `located` entry."""
        return {"box": list(self.box), "scale": round(self.scale, 4), "mirrored": self.mirrored, "rotation": self.rotation, "border": list(self.border)}


def frame(rgb: np.ndarray, location: Location, resample: Image.Resampling = Image.Resampling.BICUBIC) -> np.ndarray:
    """The original uint8 [H, W, 3] taken through the located framing, losslessly for the exact
    geometry (crop, mirror, quarter turn), then resized (PIL, antialiased) and framed in the
    border: uint8 [h, w, 3], the copy's size."""
    x0, y0, x1, y1 = location.box
    part = rgb[y0:y1, x0:x1]
    if location.mirrored:
        part = part[:, ::-1]
    part = np.ascontiguousarray(np.rot90(part, k=location.rotation // 90))
    width, height = location.content_size
    if (part.shape[1], part.shape[0]) != (width, height):
        part = np.asarray(Image.fromarray(part).resize((width, height), resample), dtype=np.uint8)
    left, top, right, bottom = location.border
    if not any(location.border):
        return part
    canvas = np.empty((top + height + bottom, left + width + right, 3), dtype=np.uint8)
    canvas[:] = location.fill
    canvas[top : top + height, left : left + width] = part
    return canvas


def locate(original: np.ndarray, copy: np.ndarray, names: tuple[str, str] = ("original", "shared")) -> Location:
    """Where `copy` (uint8 [h, w, 3]) sits in `original` (uint8 [H, W, 3]); `names` label the two
    in error messages. Raises CopyNotLocatedError when it cannot say."""
    original_name, copy_name = names
    if min(copy.shape[:2]) < MIN_COPY_SIDE:
        raise CopyNotLocatedError("too_small", f"{copy_name}: {copy.shape[1]}x{copy.shape[0]} is too small to locate in {original_name} (at least {MIN_COPY_SIDE} px a side)")
    gray_original, gray_copy = _gray(original), _gray(copy)
    to_original, matches = _coarse_fit(gray_original, gray_copy, names)
    centre = (copy.shape[1] / 2, copy.shape[0] / 2)
    to_original = _snap(to_original, centre, names)
    border, fill = _find_border(gray_original, copy, to_original, names)
    refined = _refine(gray_original, gray_copy, to_original, border)
    _check_scales(refined, MAX_STRETCH[1] + 1 / (min(copy.shape[:2]) - max(border)), names)
    to_original = _snap(refined, centre, names)
    border, fill = _find_border(gray_original, copy, to_original, names)
    return _settle(original, copy, _location(to_original, original.shape, copy.shape, border, fill, matches, names), names)


# ----------------------------------------------------------------------------- steps


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _shrunk(gray: np.ndarray, side: int, least: int = 0) -> tuple[np.ndarray, float]:
    """`gray` with its longest side at most `side` (area averaging) and at least `least`
    (bicubic), and the factor applied."""
    factor = min(1.0, side / max(gray.shape)) if max(gray.shape) > least else least / max(gray.shape)
    if factor == 1.0:
        return gray, 1.0
    size = (max(1, round(gray.shape[1] * factor)), max(1, round(gray.shape[0] * factor)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC), size[0] / gray.shape[1]


def _coarse_fit(gray_original: np.ndarray, gray_copy: np.ndarray, names: tuple[str, str]) -> tuple[Matrix, int]:
    """(copy -> original similarity, mirror included, RANSAC inliers) from SIFT matches."""
    original_name, copy_name = names
    sift = cv2.SIFT_create(contrastThreshold=SIFT_CONTRAST)
    small_original, original_factor = _shrunk(gray_original, MATCH_SIDE, MATCH_MIN_SIDE)
    small_copy, copy_factor = _shrunk(gray_copy, MATCH_SIDE, MATCH_MIN_SIDE)
    original_points, original_features = sift.detectAndCompute(small_original, None)
    mirror = _mirror(small_copy.shape[1])
    best: tuple[int, Matrix | None] = (0, None)
    best_pairs: tuple[np.ndarray, np.ndarray, float] | None = None
    for flip in (np.eye(3), mirror):
        candidate = small_copy if flip is not mirror else np.ascontiguousarray(small_copy[:, ::-1])
        copy_points, copy_features = sift.detectAndCompute(candidate, None)
        if copy_features is None or len(copy_points) < MIN_FEATURES:
            raise CopyNotLocatedError(
                "too_small", f"{copy_name}: too small or too plain to locate in {original_name} ({len(copy_points)} features, at least {MIN_FEATURES} needed)"
            )
        if original_features is None or len(original_points) < 2:
            break
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(copy_features, original_features, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO_TEST * p[1].distance]
        if len(good) < MIN_INLIERS:
            continue
        source = np.float32([copy_points[m.queryIdx].pt for m in good]) + 0.5
        target = np.float32([original_points[m.trainIdx].pt for m in good]) + 0.5
        fit, inliers = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=3.0)
        count = int(inliers.sum()) if inliers is not None else 0
        if fit is not None and count > best[0]:
            best_pairs = (source, target, MAX_STRETCH[0] + 1 / min(candidate.shape))
            # working copy (flipped or not) -> working original, then back to full resolution
            best = (count, _scaling(1 / original_factor) @ np.vstack([fit, [0, 0, 1]]) @ flip @ _scaling(copy_factor))
    count, to_original = best
    if best_pairs is not None and count >= MIN_INLIERS:
        _check_stretch(*best_pairs, names)
    if to_original is not None and not SCALES[0] <= 1 / math.sqrt(abs(np.linalg.det(to_original[:2, :2])) + 1e-12) <= SCALES[1]:
        count, to_original = 0, None
    if (to_original is None or count < MIN_INLIERS) and min(gray_copy.shape) < SMALL_COPY_SIDE:
        raise CopyNotLocatedError(
            "too_small", f"{copy_name}: {gray_copy.shape[1]}x{gray_copy.shape[0]} is too small to locate in {original_name} ({count} features agree, at least {MIN_INLIERS} needed)"
        )
    if to_original is None or count < MIN_INLIERS:
        raise CopyNotLocatedError(
            "not_this_photo", f"{copy_name} does not show a part of {original_name} ({count} features agree, at least {MIN_INLIERS} needed): is it a copy of another photo?"
        )
    return to_original, count


def _check_stretch(source: np.ndarray, target: np.ndarray, tolerance: float, names: tuple[str, str]) -> None:
    """Refuse matched points [N, 2] that a general affine map ties with scales in x and y
    differing by more than `tolerance` (a stretched copy, which a similarity cannot express)."""
    affine, inliers = cv2.estimateAffine2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if affine is None or inliers is None or int(inliers.sum()) < MIN_INLIERS:
        return
    _check_scales(affine, tolerance, names)


def _check_scales(affine: np.ndarray, tolerance: float, names: tuple[str, str]) -> None:
    """Refuse an affine map (2x3 or 3x3) whose x and y scales differ by more than `tolerance`."""
    scales = np.linalg.norm(affine[:2, :2], axis=0)
    if abs(scales[0] / scales[1] - 1) > tolerance:
        raise CopyNotLocatedError("too_altered", f"{names[1]} is stretched against {names[0]} (width and height scaled differently): too altered to verify")


def _snap(to_original: Matrix, centre: tuple[float, float], names: tuple[str, str]) -> Matrix:
    """The nearest map of scale x quarter turn x mirror (+ shift) that maps the copy's `centre`
    (x, y) where `to_original` does: refuses turns off a multiple of 90 degrees."""
    linear = to_original[:2, :2]
    mirrored = np.linalg.det(linear) < 0
    unmirrored = linear @ np.diag([-1.0, 1.0]) if mirrored else linear
    angle = math.degrees(math.atan2(unmirrored[1, 0] - unmirrored[0, 1], unmirrored[0, 0] + unmirrored[1, 1]))
    quarter = round(angle / 90) % 4
    off = abs((angle - quarter * 90 + 180) % 360 - 180)
    if off > MAX_TURN_ERROR:
        raise CopyNotLocatedError("too_altered", f"{names[1]} is turned by {angle:.1f} degrees against {names[0]}; verify follows turns by multiples of 90 degrees only")
    scale = float(math.sqrt(abs(np.linalg.det(linear))))
    turn = np.round(np.array([[math.cos(quarter * math.pi / 2), -math.sin(quarter * math.pi / 2)], [math.sin(quarter * math.pi / 2), math.cos(quarter * math.pi / 2)]]))
    snapped = np.eye(3)
    snapped[:2, :2] = scale * turn @ (np.diag([-1.0, 1.0]) if mirrored else np.eye(2))
    snapped[:2, 2] = (to_original @ (*centre, 1.0))[:2] - snapped[:2, :2] @ centre
    return snapped


def _find_border(gray_original: np.ndarray, copy: np.ndarray, to_original: Matrix, names: tuple[str, str]) -> tuple[tuple[int, int, int, int], tuple[int, int, int]]:
    """(left, top, right, bottom) px of the copy's uniform frame, and its RGB colour: edge rows
    and columns that are uniform and either outside the original or unlike it there."""
    height, width = copy.shape[:2]
    gray_copy = _gray(copy).astype(np.float32)
    aligned = cv2.warpAffine(gray_original, _centres(to_original)[:2], (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    inside = cv2.warpAffine(np.ones(gray_original.shape, np.uint8), _centres(to_original)[:2], (width, height), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)
    difference = np.abs(gray_copy - aligned.astype(np.float32))

    def frame_lines(values: np.ndarray, unlike: np.ndarray, within: np.ndarray, limit: int) -> int:
        """How many leading lines (rows of the given arrays) belong to the frame."""
        count = 0
        while count < limit and values[count].std() <= BORDER_UNIFORMITY and (within[count].mean() < 0.5 or np.median(unlike[count]) >= BORDER_DIFFERENCE):
            count += 1
        return count

    leading = (lambda a: a.T, lambda a: a, lambda a: a[:, ::-1].T, lambda a: a[::-1])  # left, top, right, bottom
    sides = [frame_lines(view(gray_copy), view(difference), view(inside), view(gray_copy).shape[0] // 2) for view in leading]
    widest = max(sides)
    frame_level = float(leading[sides.index(widest)](gray_copy)[0].mean())
    for index, view in enumerate(leading):  # a side that looks like photo but is as plain as the frame: the same width (a screenshot's frame)
        lines = view(gray_copy)[:widest]
        if sides[index] < widest and all(line.std() <= BORDER_UNIFORMITY for line in lines) and abs(float(lines.mean()) - frame_level) <= BORDER_UNIFORMITY:
            sides[index] = widest
    left, top, right, bottom = sides
    if max(left / width, right / width, top / height, bottom / height) > MAX_BORDER_SHARE:
        raise CopyNotLocatedError("too_altered", f"{names[1]}: little of it matches {names[0]} (a frame of {left}/{top}/{right}/{bottom} px): too altered to verify")
    ring = np.ones((height, width), bool)
    ring[top : height - bottom, left : width - right] = False
    fill = tuple(_pure(int(v)) for v in np.median(copy[ring], axis=0)) if ring.any() else (0, 0, 0)
    return (left, top, right, bottom), fill  # type: ignore[return-value]


def _pure(level: int) -> int:
    """0 or 255 for a level within `PURE_LEVELS` of them, else the level."""
    return 0 if level <= PURE_LEVELS else 255 if level >= 255 - PURE_LEVELS else level


def _refine(gray_original: np.ndarray, gray_copy: np.ndarray, to_original: Matrix, border: tuple[int, int, int, int]) -> Matrix:
    """The copy -> original map improved by ECC (affine) on the copy's content at its own
    resolution (at most `REFINE_SIDE` px) against the original's located region resized to
    match; the map as given when ECC does not converge."""
    small_copy, factor = _shrunk(gray_copy, REFINE_SIDE)
    height, width = gray_copy.shape
    left, top, right, bottom = border
    x0, y0, x1, y1 = _mapped_box(to_original, (left, top, width - right, height - bottom))
    margin = 0.04 * max(x1 - x0, y1 - y0) + 4
    ox0, oy0 = max(0, math.floor(x0 - margin)), max(0, math.floor(y0 - margin))
    ox1, oy1 = min(gray_original.shape[1], math.ceil(x1 + margin)), min(gray_original.shape[0], math.ceil(y1 + margin))
    density = factor / math.sqrt(abs(np.linalg.det(to_original[:2, :2])))  # region px per original px
    size = (max(1, round((ox1 - ox0) * density)), max(1, round((oy1 - oy0) * density)))
    region = cv2.resize(gray_original[oy0:oy1, ox0:ox1], size, interpolation=cv2.INTER_AREA if density < 1 else cv2.INTER_LINEAR)
    density_x, density_y = size[0] / (ox1 - ox0), size[1] / (oy1 - oy0)
    to_region = np.diag([density_x, density_y, 1.0]) @ _shift(-ox0, -oy0)
    valid = np.zeros(region.shape, np.uint8)  # the located box shrunk by 2 px: the copy's border stays out
    rx0, ry0, _ = to_region @ (x0, y0, 1)
    rx1, ry1, _ = to_region @ (x1, y1, 1)
    valid[max(0, round(ry0) + 2) : max(0, round(ry1) - 2), max(0, round(rx0) + 2) : max(0, round(rx1) - 2)] = 1
    warp = to_region @ to_original @ _scaling(1 / factor)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 60, 1e-5)
    try:
        _, fitted = cv2.findTransformECC(small_copy.astype(np.float32), region.astype(np.float32), _centres(warp)[:2].astype(np.float32), cv2.MOTION_AFFINE, criteria, valid, 3)
    except cv2.error:
        return to_original
    return np.linalg.inv(to_region) @ _edges(np.vstack([fitted, [0, 0, 1]])) @ _scaling(factor)


def _location(
    to_original: Matrix, original_shape: tuple[int, ...], copy_shape: tuple[int, ...], border: tuple[int, int, int, int], fill: tuple[int, int, int], matches: int, names: tuple[str, str]
) -> Location:
    """The located framing from a snapped copy -> original map and the border."""
    height, width = copy_shape[:2]
    left, top, right, bottom = border
    x0, y0, x1, y1 = (round(v) for v in _mapped_box(to_original, (left, top, width - right, height - bottom)))
    box = (max(0, x0), max(0, y0), min(original_shape[1], x1), min(original_shape[0], y1))
    if box[2] - box[0] < MIN_COPY_SIDE // 4 or box[3] - box[1] < MIN_COPY_SIDE // 4:
        raise CopyNotLocatedError("too_altered", f"{names[1]} maps onto {box} of {names[0]}, outside the photo: too altered to verify")
    forward = np.linalg.inv(to_original[:2, :2])
    forward = np.round(forward / math.sqrt(abs(np.linalg.det(forward))))
    mirror, quarter = np.diag([-1.0, 1.0]), np.array([[0.0, 1.0], [-1.0, 0.0]])  # np.rot90 (k=1) on x, y
    mirrored, turns = next((m, k) for m in (False, True) for k in range(4) if np.array_equal(np.linalg.matrix_power(quarter, k) @ (mirror if m else np.eye(2)), forward))
    located = Location(box, 1.0, mirrored, 90 * turns, border, fill, (width - left - right, height - top - bottom), matches)
    return replace(located, scale=_box_scale(box, located))


def _settle(original: np.ndarray, copy: np.ndarray, location: Location, names: tuple[str, str]) -> Location:
    """The location with each box edge moved by a pixel where that makes the original taken
    through it closer to the copy (mean absolute difference), so a copy made with PIL's bicubic
    filter is reproduced exactly; refuses a location under which the original does not look like
    the copy (median absolute difference over `MAX_MEDIAN_DIFFERENCE`)."""
    left, top, right, bottom = location.border
    height, width = copy.shape[:2]
    content = (slice(top, height - bottom), slice(left, width - right))
    target = copy[content].astype(np.int16)

    def distance(candidate: Location) -> float:
        return float(np.abs(frame(original, candidate)[content].astype(np.int16) - target).mean())

    best, best_distance = location, distance(location)
    for _ in range(2):
        moved = False
        for edge in range(4):
            for step in (-1, 1):
                box = list(best.box)
                box[edge] += step
                if not (0 <= box[0] < box[2] <= original.shape[1] and 0 <= box[1] < box[3] <= original.shape[0]):
                    continue
                candidate = replace(best, box=tuple(box), scale=_box_scale(tuple(box), best))  # type: ignore[arg-type]
                if (d := distance(candidate)) < best_distance:
                    best, best_distance, moved = candidate, d, True
        if not moved:
            break
    difference = float(np.median(np.abs(_gray(frame(original, best))[content].astype(np.int16) - _gray(copy)[content].astype(np.int16))))
    if difference > MAX_MEDIAN_DIFFERENCE:
        raise CopyNotLocatedError(
            "too_altered",
            f"{names[1]} matches {names[0]} in {location.matches} features but its pixels differ ({difference:.0f} levels of 255 apart, at most {MAX_MEDIAN_DIFFERENCE:g}): "
            "another shot of the scene, or a copy too altered (filtered, retouched) to verify",
        )
    return best


def _box_scale(box: tuple[int, int, int, int], location: Location) -> float:
    """Copy px per original px of a box shown at the location's content size (mean of both axes)."""
    width, height = location.content_size
    across, down = (width, height) if location.rotation in (0, 180) else (height, width)
    return (across / (box[2] - box[0]) + down / (box[3] - box[1])) / 2


# ----------------------------------------------------------------------------- affine helpers


def _mapped_box(to_original: Matrix, rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The bounding box (x0, y0, x1, y1) of `rect`'s corners mapped by `to_original`."""
    x0, y0, x1, y1 = rect
    corners = to_original @ np.array([[x0, x1, x0, x1], [y0, y0, y1, y1], [1, 1, 1, 1]], dtype=np.float64)
    return float(corners[0].min()), float(corners[1].min()), float(corners[0].max()), float(corners[1].max())


def _scaling(factor: float) -> Matrix:
    return np.diag([factor, factor, 1.0])


def _shift(dx: float, dy: float) -> Matrix:
    matrix = np.eye(3)
    matrix[:2, 2] = dx, dy
    return matrix


def _mirror(width: int) -> Matrix:
    """x -> width - x: the left-right mirror of an image `width` px wide."""
    return np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def _centres(matrix: Matrix) -> Matrix:
    """An edge-coordinate map as OpenCV's pixel-centre coordinates."""
    return _shift(-0.5, -0.5) @ matrix @ _shift(0.5, 0.5)


def _edges(matrix: Matrix) -> Matrix:
    """A pixel-centre map (OpenCV's) as edge coordinates."""
    return _shift(0.5, 0.5) @ matrix @ _shift(-0.5, -0.5)
