"""MTCNN (Zhang, Zhang, Li, Qiao, "Joint Face Detection and Alignment using Multi-task Cascaded
Convolutional Networks", 2016) as a candidate for bench/face_detectors.py.

Weights: `facenet_pytorch/data/{pnet,rnet,onet}.pt` (MIT) read from the `facenet-pytorch==2.6.0`
wheel, fetched with `pip download --no-deps` into `~/.cache/deepshield-bench/` on first use (the
package itself pins torch < 2.3 and imports torchvision, so it is never installed or imported).
The networks below are written from the published layer shapes (state-dict names as in those
files); the cascade follows the paper: an image pyramid (factor 0.709, faces >= 20 px) through
P-Net, then R-Net on 24 px and O-Net on 48 px crops, with box regression, squaring and
non-maximum suppression between stages; O-Net gives the five landmarks.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from deepshield.faces import FaceBox

WHEEL = "facenet-pytorch==2.6.0"
CACHE = Path.home() / ".cache" / "deepshield-bench" / "mtcnn"
THRESHOLDS = (0.6, 0.7, 0.7)  # the paper's per-stage face probabilities
MIN_FACE = 20
FACTOR = 0.709
MAX_SIDE = 960  # the same working copy as YuNet's


def weights_dir() -> Path:
    """The three .pt files, extracted from the wheel once."""
    if not all((CACHE / f"{n}.pt").is_file() for n in ("pnet", "rnet", "onet")):
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", str(CACHE)], check=True)
        (wheel,) = CACHE.glob("facenet_pytorch-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in ("pnet", "rnet", "onet"):
                (CACHE / f"{name}.pt").write_bytes(archive.read(f"facenet_pytorch/data/{name}.pt"))
    return CACHE


def _block(cin: int, cout: int, kernel: int) -> tuple[nn.Conv2d, nn.PReLU]:
    return nn.Conv2d(cin, cout, kernel), nn.PReLU(cout)


class PNet(nn.Module):
    """12x12 proposal net, fully convolutional: [N, 3, H, W] -> face prob [N, H', W'], box offsets [N, 4, H', W']."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _block(3, 10, 3)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _block(10, 16, 3)
        self.conv3, self.prelu3 = _block(16, 32, 3)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """24x24 refinement net: [N, 3, 24, 24] -> face prob [N], box offsets [N, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _block(3, 28, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _block(28, 48, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _block(48, 64, 2)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).flatten(1)))  # trained on (W, H, C) order
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """48x48 output net: [N, 3, 48, 48] -> face prob [N], box offsets [N, 4], landmarks [N, 10] (x1..x5, y1..y5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = _block(3, 32, 3)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = _block(32, 64, 3)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = _block(64, 64, 3)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = _block(64, 128, 2)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).flatten(1)))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


_NETS: tuple[PNet, RNet, ONet] | None = None


def _nets() -> tuple[PNet, RNet, ONet]:
    global _NETS
    if _NETS is None:
        folder = weights_dir()
        nets = (PNet(), RNet(), ONet())
        for net, name in zip(nets, ("pnet", "rnet", "onet"), strict=True):
            net.load_state_dict(torch.load(folder / f"{name}.pt", weights_only=True), strict=True)
            net.eval()
        _NETS = nets
    return _NETS


def _nms(boxes: np.ndarray, scores: np.ndarray, limit: float, by_min: bool = False) -> np.ndarray:
    """Indices kept by greedy NMS; overlap = intersection / union (or / the smaller area)."""
    order, keep = np.argsort(-scores), []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        overlap = inter / np.minimum(areas[i], areas[rest]) if by_min else inter / (areas[i] + areas[rest] - inter)
        order = rest[overlap <= limit]
    return np.array(keep, dtype=int)


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply box offsets (fractions of width / height) to boxes [N, 4] (x0, y0, x1, y1)."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, axis=1)
    return boxes + offsets * size


def _square(boxes: np.ndarray) -> np.ndarray:
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def _crops(image: np.ndarray, boxes: np.ndarray, size: int) -> Tensor:
    """Each box of image [H, W, 3] (zero-padded outside) resized to size x size: [N, 3, size, size] normalised."""
    height, width = image.shape[:2]
    out = []
    for x0, y0, x1, y1 in np.round(boxes).astype(int):
        patch = np.zeros((max(1, y1 - y0), max(1, x1 - x0), 3), np.float32)
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
        out.append(cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA))
    return _normalise(np.stack(out))


def _normalise(batch: np.ndarray) -> Tensor:
    return torch.from_numpy((np.asarray(batch, np.float32) - 127.5) / 128.0).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def detect_faces(rgb: np.ndarray) -> list[FaceBox]:
    """MTCNN faces of rgb uint8 [H, W, 3], on a copy at most MAX_SIDE px long; FaceBox with the
    O-Net probability as score and five landmarks (eyes, nose, mouth corners)."""
    pnet, rnet, onet = _nets()
    height, width = rgb.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    image = cv2.resize(rgb, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    image = image.astype(np.float32)
    h, w = image.shape[:2]
    found, probs = [], []
    level = 12.0 / MIN_FACE
    while min(h, w) * level >= 12:
        resized = cv2.resize(image, (max(1, round(w * level)), max(1, round(h * level))), interpolation=cv2.INTER_AREA)
        prob, offsets = pnet(_normalise(resized[None]))
        ys, xs = np.nonzero(prob[0].numpy() >= THRESHOLDS[0])
        if ys.size:
            boxes = np.stack([xs * 2, ys * 2, xs * 2 + 12, ys * 2 + 12], axis=1) / level
            boxes = _regress(boxes, offsets[0][:, ys, xs].numpy().T)
            scores = prob[0].numpy()[ys, xs]
            keep = _nms(boxes, scores, 0.5)
            found.append(boxes[keep])
            probs.append(scores[keep])
        level *= FACTOR
    if not found:
        return []
    boxes, scores = np.concatenate(found), np.concatenate(probs)
    boxes = _square(boxes[_nms(boxes, scores, 0.7)])
    for stage, (net, size) in enumerate(((rnet, 24), (onet, 48)), start=1):
        if not len(boxes):
            return []
        outputs = net(_crops(image, boxes, size))
        prob, offsets = outputs[0].numpy(), outputs[1].numpy()
        mask = prob >= THRESHOLDS[stage]
        marks = outputs[2].numpy()[mask] if stage == 2 else None
        before, boxes, scores = boxes[mask], _regress(boxes[mask], offsets[mask]), prob[mask]
        if stage == 1:
            boxes = _square(boxes[_nms(boxes, scores, 0.7)])
        else:
            keep = _nms(boxes, scores, 0.7, by_min=True)
            boxes, scores, before, marks = boxes[keep], scores[keep], before[keep], marks[keep]
    result = []
    for box, score, base, mark in zip(boxes, scores, before, marks, strict=True):
        bw, bh = base[2] - base[0], base[3] - base[1]
        points = tuple(((base[0] + bw * mark[i]) / scale, (base[1] + bh * mark[i + 5]) / scale) for i in range(5))
        x0, y0 = max(0, int(box[0] / scale)), max(0, int(box[1] / scale))
        x1, y1 = min(width, int(np.ceil(box[2] / scale))), min(height, int(np.ceil(box[3] / scale)))
        if x1 > x0 and y1 > y0:
            result.append(FaceBox(x0, y0, x1, y1, float(score), tuple((float(x), float(y)) for x, y in points)))
    return sorted(result, key=lambda b: (b.x0, b.y0))
