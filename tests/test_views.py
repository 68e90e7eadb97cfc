"""The threat model: seeded draws inside the documented ranges, and its differentiable views
matching the views the maker's tools (PIL, OpenCV) make."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepshield import imaging, views


def smooth_photo(height: int = 300, width: int = 400) -> np.ndarray:
    """A smooth uint8 [H, W, 3] photo: resize filters differ on it by rounding only."""
    yy, xx = np.mgrid[0:height, 0:width]
    channels = [128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 23.0), 128 + 60 * np.sin((xx + yy) / 31.0)]
    return np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)


def draw(count: int, seed: int, **kwargs: object) -> list[views.View]:
    threat = views.ThreatModel()
    return threat.sample(300, 400, count, torch.Generator().manual_seed(seed), **kwargs)


def test_draws_are_seeded():
    assert draw(20, seed=1) == draw(20, seed=1)
    assert draw(20, seed=1) != draw(20, seed=2)


def test_whole_photo_framings_lie_inside_the_photo_at_half_to_full_short_side():
    drawn = draw(300, seed=0)
    for view in drawn:
        top, left, side = view.box()
        assert 150 <= side <= 300 and view.angle == 0
        assert 0 <= top and top + side <= 300 and 0 <= left and left + side <= 400
    assert {v.filter for v in drawn} == set(views.RESIZE_FILTERS)
    sides = [v.side for v in drawn]
    assert min(sides) < 160 and max(sides) > 290  # the whole range is drawn


def test_sharing_is_drawn_in_its_shares_and_ranges():
    drawn = draw(400, seed=3)
    qualities = [v.jpeg for v in drawn if v.jpeg is not None]
    assert 0.4 < len(qualities) / len(drawn) < 0.6 and 50 <= min(qualities) and max(qualities) <= 95
    downscales = [v.downscale for v in drawn if v.downscale is not None]
    assert 0.1 < len(downscales) / len(drawn) < 0.3 and all(0.5 <= d <= 0.9 for d in downscales)
    assert not any(v.jpeg or v.downscale or v.blur for v in views.ThreatModel().framing_only().sample(300, 400, 50, torch.Generator().manual_seed(3)))


def test_face_views_are_jittered_around_each_face_within_the_documented_ranges():
    faces = [(40, 50, 100), (120, 250, 60)]
    drawn = draw(200, seed=4, faces=faces)
    for index, view in enumerate(drawn):
        top, left, side = faces[index % 2]  # the faces are framed in turn
        assert side * 0.85 - 1e-9 <= view.side <= side * 1.15 + 1e-9
        assert abs(view.cy - (top + side / 2)) <= 0.1 * side + 1e-9
        assert abs(view.cx - (left + side / 2)) <= 0.1 * side + 1e-9
        assert -10 <= view.angle <= 10
    assert max(abs(v.angle) for v in drawn) > 8 and max(v.side / faces[i % 2][2] for i, v in enumerate(drawn)) > 1.12


def test_draws_of_one_view_go_round_the_faces_from_first():
    faces = [(40, 50, 100), (120, 250, 60), (10, 300, 80)]
    generator = torch.Generator().manual_seed(2)
    drawn = [views.DEFAULT_THREAT_MODEL.sample(200, 400, 1, generator, faces, first=step)[0] for step in range(6)]
    nearest = [min(range(3), key=lambda i: abs(v.cy - faces[i][0] - faces[i][2] / 2) + abs(v.cx - faces[i][1] - faces[i][2] / 2)) for v in drawn]
    assert nearest == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("angle", [0.0, 8.0, -9.5])
@pytest.mark.parametrize("name", views.RESIZE_FILTERS)
def test_the_differentiable_view_matches_the_tools_view(name, angle):
    rgb = smooth_photo()
    view = views.View(140.3, 190.7, 150.0, angle, name)
    real = views.render(rgb, view, 64).astype(np.float64)
    torch_view = imaging.to_uint8(views.frame(imaging.to_tensor(rgb), view, 64)).astype(np.float64)
    assert np.abs(real - torch_view).mean() < 0.5 and np.abs(real - torch_view).max() <= 2


def test_a_view_at_a_working_scale_matches_the_view_of_the_full_photo():
    rgb = smooth_photo()
    view = views.View(150.0, 200.0, 280.0, 0.0, "pil-bilinear")
    half = torch.nn.functional.interpolate(imaging.to_tensor(rgb), scale_factor=0.5, mode="bilinear", antialias=True)
    full_view = views.frame(imaging.to_tensor(rgb), view, 64)
    half_view = views.frame(half, view, 64, scale=0.5)
    assert (full_view - half_view).abs().mean() < 2 / 255


def test_sharing_renders_as_the_site_would():
    rgb = smooth_photo()
    view = views.View(150.0, 200.0, 200.0, 0.0, "pil-bicubic")
    assert views.share(rgb, view).shape == rgb.shape
    assert views.share(rgb, views.View(150.0, 200.0, 200.0, downscale=0.5)).shape == (150, 200, 3)
    jpeg = views.share(rgb, views.View(150.0, 200.0, 200.0, jpeg=50))
    assert 0 < np.abs(jpeg.astype(int) - rgb.astype(int)).mean() < 4
    # a downscaled copy is framed at the same place of the picture
    same = views.render(rgb, view, 48).astype(int)
    smaller = views.render(rgb, views.View(150.0, 200.0, 200.0, 0.0, "pil-bicubic", downscale=0.5), 48).astype(int)
    assert np.abs(same - smaller).mean() < 3


def test_a_face_view_across_the_border_replicates_the_edge_both_ways():
    rgb = smooth_photo()
    view = views.View(20.0, 30.0, 100.0, 5.0, "cv2-linear")
    real = views.render(rgb, view, 32).astype(np.float64)
    torch_view = imaging.to_uint8(views.frame(imaging.to_tensor(rgb), view, 32)).astype(np.float64)
    assert np.abs(real - torch_view).mean() < 0.5


@pytest.mark.parametrize("angle", [0.0, 17.0, -33.0])
def test_a_turned_square_reads_only_inside_its_bounds_and_mask(angle):
    """A model square turned by a face's roll: the crop's gradient reaches no pixel outside
    `square_bounds` and `square_mask` (what the plain attack perturbs), and the tensor crop
    matches OpenCV's levelled crop of the 8-bit photo."""
    from deepshield.faces import Square

    rgb = smooth_photo()
    box = Square(60, 90, 150, angle)
    x = imaging.to_tensor(rgb).requires_grad_(True)
    crop = views.crop_square_tensor(x, box)
    assert crop.shape == (1, 3, 150, 150)
    crop.sum().backward()
    read = x.grad.abs().sum(dim=(0, 1)) > 0
    top, left, bottom, right = views.square_bounds(box, 300, 400)
    mask = torch.zeros(300, 400, dtype=torch.bool)
    mask[top:bottom, left:right] = views.square_mask(box, top, left, bottom - top, right - left)
    assert not bool((read & ~mask).any())
    if angle == 0:
        assert bool(torch.equal(read, mask))  # upright: exactly the square's pixels
    else:
        assert int(mask.sum()) < (bottom - top) * (right - left)  # the footprint, not its bounding box
        assert (top, left) < (60, 90) and bottom > 210  # the turned corners reach outside the upright square
    tools = imaging.to_tensor(views.crop_square(rgb, box))
    assert float((tools - crop.detach()).abs().mean()) < 2 / 255


def test_a_moved_square_keeps_its_side_and_turn():
    from deepshield.faces import Square

    moved = views.moved(Square(5, 6, 70, 12.5), 9, 11)
    assert tuple(moved) == (9, 11, 70) and moved.angle == 12.5
    assert views.moved((5, 6, 70), 1, 2).angle == 0.0
