"""The About tab: calling deepshield from code (Gradio client, REST, command line), and what the
protection does and its limits."""

from __future__ import annotations

import gradio as gr

ABOUT_MARKDOWN = """
## Calling deepshield from code

The same engine serves this page, the REST API and the command line. With
[`gradio_client`](https://www.gradio.app/guides/getting-started-with-the-python-client):

```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")   # this server's address
protected, fake_original, fake_protected, metrics = client.predict(
    handle_file("me.jpg"), "cyclegan-vintage", "pgd", 0.05, 10, 0.01,   # image, model, attack, epsilon, iterations, step_size
    -1, [],                                                             # seed (-1 = random), targets (conditional models; [] = all)
    True, "framing", True, 0,   # detect faces, robust ("framing" | "off" | "eot" | "spread-spectrum"), check robustness, SSIM floor (0 = off)
    [],                         # faces: numbers of the faces to protect, as metrics["faces"] numbers them ([] = every face)
    api_name="/protect",
)
print(metrics["perturbation"], metrics["disruption"], metrics["faces"], metrics["robustness"]["framings"])
gallery, zip_path, report = client.predict(
    [handle_file("a.jpg"), handle_file("b.png")], "cyclegan-vintage", "pgd", 0.05, 10, 0.01, -1, [],
    api_name="/protect_batch",            # the same trailing options as /protect may follow; faces apply to every photo
)
pairs, verdict = client.predict(handle_file("me.jpg"), handle_file("me-from-the-site.jpg"), [], api_name="/verify")
models = client.predict(api_name="/models")   # as `python -m deepshield models --json`
```

`epsilon` and `step_size` are on the [-1, 1] scale of the paper (0.05 = 6.4/255); `epsilon` may
also be a strength preset: `low` (0.02 = 2.55/255), `medium` (0.05 = 6.38/255), `high` (0.1 =
12.75/255). `attack` is `fgsm`, `ifgsm` or `pgd` (PGD is I-FGSM from a random start). A model whose
weights are not on the server yet must be loaded in the **Models** tab (or with
`POST /api/v1/models/NAME/load`) first.

**REST API** (JSON, base64 images; interactive docs at [/docs](/docs) and [/redoc](/redoc)):
`POST /api/v1/protect/image`, `POST /api/v1/protect/batch`, `GET /api/v1/protect/status/{task_id}`,
`GET /api/v1/models`, `POST /api/v1/models/{name}/load`, `POST /api/v1/models/{name}/unload`,
`GET /api/v1/config/attack-methods`, `GET /api/v1/health`, `GET /health`, `GET /metrics` (Prometheus).

**Command line:** `python -m deepshield protect me.jpg -o me.protected.png --robust framing --check-robustness --report report.json`,
then after sharing `python -m deepshield verify me.jpg me-from-the-site.jpg`.

## What the protection does, and its limits

deepshield implements FGSM, I-FGSM and PGD from *Disrupting Deepfakes* (Ruiz, Bargal, Sclaroff, 2020):
a perturbation bounded in L-inf (at most epsilon per pixel) that pushes the generator's output on
the protected photo away from its output on the original. A deepfake counts as disrupted when the
mean squared difference of the two outputs exceeds 0.05 (on [-1, 1]).

- **White box.** The perturbation is optimised against the model chosen here. How well it
  transfers to other generators is not guaranteed.
- **Sharing weakens it.** JPEG recompression, resizing or blurring (for example by a social
  network) shrink the perturbation's effect, and a deepfake maker frames the photo their own way.
  *Survive sharing and cropping* (`framing`, the default) optimises over the maker's views of the
  whole photo (crops anywhere, any resize filter, jittered and turned face crops) after JPEG,
  downscaling and blur, and helps, but does not make it immune; *Check robustness* measures what
  is left after real JPEG 90/75/50, resizing, blur, a shifted crop and in unseen framings, and the
  **Verify** tab measures a copy that came back from a site, cropped, resized, mirrored or framed as it may be. Share the lossless PNG when you can.
- **Where it is applied.** With `framing`, the whole photo carries the perturbation. The paper's
  plain attack perturbs only what deepshield's own framing shows the model: each detected face
  cropped as in the model's training data for face models (StarGAN, GANimation), else the largest
  centred square; the rest of the photo is left unchanged.
- Metrics (L2 / L-inf of the perturbation, PSNR, SSIM, disruption mse / l1) are measured on the
  written PNG.

Example photo: `examples/synthetic-portrait.png` (generated, not a real person).
"""


def layout() -> None:
    """Lay the tab out (inside the page's gr.Tabs); it has no events."""
    with gr.Tab("About", id="about"):
        gr.Markdown(ABOUT_MARKDOWN)
