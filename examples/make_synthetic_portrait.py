"""Draw examples/synthetic-portrait.png: a generated stand-in portrait that can ship with the
repository (the development photos in ../shared are not ours to redistribute).

    python examples/make_synthetic_portrait.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (384, 448)


def main() -> None:
    rng = np.random.default_rng(2020)
    height, width = SIZE[1], SIZE[0]
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    background = np.stack([60 + 80 * x, 90 + 60 * y, 140 + 50 * (1 - x)], axis=-1)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([70, 360, 314, 448], fill=(40, 50, 80))  # shoulders
    draw.ellipse([142, 300, 242, 380], fill=(205, 160, 130))  # neck
    draw.ellipse([102, 70, 282, 330], fill=(225, 180, 150))  # face
    draw.pieslice([92, 40, 292, 250], 180, 360, fill=(70, 45, 30))  # hair
    for cx in (155, 229):
        draw.ellipse([cx - 18, 170, cx + 18, 192], fill=(250, 250, 245))
        draw.ellipse([cx - 8, 173, cx + 8, 189], fill=(60, 90, 60))
        draw.line([cx - 22, 155, cx + 20, 150], fill=(70, 45, 30), width=5)
    draw.polygon([(192, 195), (178, 250), (204, 250)], fill=(210, 160, 130))
    draw.arc([160, 255, 224, 295], 15, 165, fill=(170, 70, 70), width=6)
    image = image.filter(ImageFilter.GaussianBlur(2))
    grain = rng.normal(0, 6, (height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=float) + grain, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(Path(__file__).with_name("synthetic-portrait.png"))


if __name__ == "__main__":
    main()
