"""Models from the models folder: one per subfolder holding a checkpoint, architecture and
params read from the checkpoint, unreadable folders listed as unavailable, names resolved."""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deepshield.engine import Engine
from deepshield.errors import WeightsError
from deepshield.models import ARCHITECTURES, get_architecture
from deepshield.weights import cache_dir, match_checkpoint
from tests.conftest import TINY_PARAMS, run
from tests.original_layout import save_state
from tests.test_rest import png

VARIANTS = [
    ("stargan", TINY_PARAMS["stargan"], "official"),
    ("ganimation", TINY_PARAMS["ganimation"], "replicate"),
    ("ganimation", {**TINY_PARAMS["ganimation"], "variant": "official"}, "official"),
    ("cyclegan", TINY_PARAMS["cyclegan"], "vintagify"),
    ("cyclegan", {**TINY_PARAMS["cyclegan"], "norm_affine": False, "n_blocks": 3, "output_nc": 1}, "official"),
    ("pix2pixhd-global", TINY_PARAMS["pix2pixhd-global"], "official"),
    ("pix2pixhd-local", {**TINY_PARAMS["pix2pixhd-local"], "input_nc": 5}, "official"),
]


@pytest.mark.parametrize(("architecture", "params", "fmt"), VARIANTS, ids=[f"{a}-{f}" for a, _, f in VARIANTS])
def test_architecture_and_params_are_read_from_the_checkpoint(architecture, params, fmt):
    state = get_architecture(architecture).build(**params).state_dict()
    if fmt == "official" and architecture == "ganimation":  # vipermu's alias copies of the body
        state = {**state, **{k.replace("main.", "debug4.", 1): v for k, v in state.items() if k.startswith("main.")}}
    matched = match_checkpoint(state, [(name, None) for name in ARCHITECTURES], source="test")
    assert (matched.architecture, matched.format, dict(matched.params)) == (architecture, fmt, params)


def folder_rows(engine: Engine) -> dict[str, dict]:
    return {row["name"]: row for row in engine.list_models() if row["origin"] == "models_dir"}


def test_any_file_name_safetensors_and_a_named_checkpoint(models_dir: Path):
    module = get_architecture("cyclegan").build(**TINY_PARAMS["cyclegan"])
    (models_dir / "mine").mkdir()
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(models_dir / "mine" / "weights.bin"))
    save_state(models_dir / "two" / "a.pth", "stargan", TINY_PARAMS["stargan"], seed=1)
    save_state(models_dir / "two" / "b.pth", "stargan", {**TINY_PARAMS["stargan"], "c_dim": 3}, seed=2)
    (models_dir / "two" / "config.json").write_text(json.dumps({"checkpoint": "b.pth", "image_size": 64, "labels": ["x", "y", "z"]}))
    engine = Engine({}, device="cpu")
    rows = folder_rows(engine)
    assert (rows["mine"]["architecture"], rows["mine"]["weights"]["format"], rows["mine"]["status"]) == ("cyclegan", "vintagify", "cached")
    assert rows["mine"]["image_size"] == 256 and rows["mine"]["labels"] == []
    assert (rows["two"]["params"]["c_dim"], rows["two"]["image_size"], rows["two"]["labels"]) == (3, 64, ["x", "y", "z"])
    assert engine.spec("two").targets["y"] == (0.0, 1.0, 0.0)
    loaded = engine.load("two")
    assert loaded.weights_format == "official" and loaded.generator.condition_dim == 3
    assert (cache_dir() / "converted" / f"{loaded.weights_sha256}.safetensors").is_file()  # pickles are converted once


def test_folders_that_cannot_be_understood_are_listed_as_unavailable(models_dir: Path):
    (models_dir / "garbage").mkdir()
    (models_dir / "garbage" / "model.pth").write_bytes(b"not a checkpoint at all")
    torch.save({"made": datetime.datetime(2020, 1, 1)}, _mkdir(models_dir / "pickled-object") / "model.pth")  # weights_only refuses it
    for name, config in (("wrong-config", {"archtecture": "cyclegan"}), ("unknown-arch", {"architecture": "pix2pix"})):
        save_state(models_dir / name / "latest_net_G.pth", "cyclegan", TINY_PARAMS["cyclegan"], seed=0)
        (models_dir / name / "config.json").write_text(json.dumps(config))
    for stem in ("x", "y"):
        save_state(models_dir / "too-many" / f"{stem}.pth", "cyclegan", TINY_PARAMS["cyclegan"], seed=0)
    save_state(models_dir / "labels-wrong" / "g.pth", "stargan", TINY_PARAMS["stargan"], seed=0)
    (models_dir / "labels-wrong" / "config.json").write_text(json.dumps({"labels": ["only", "two"]}))
    engine = Engine({}, device="cpu")
    rows = folder_rows(engine)
    reasons = {name: row["reason"] for name, row in rows.items()}
    assert all(row["status"] == "unavailable" for row in rows.values()) and len(rows) == 6
    assert "could not be read as a torch checkpoint" in reasons["garbage"]
    assert "never unpickles" in reasons["pickled-object"]
    assert "unknown field 'archtecture'" in reasons["wrong-config"]
    assert "unknown architecture 'pix2pix'" in reasons["unknown-arch"] and rows["unknown-arch"]["architecture"] == "pix2pix"
    assert "several checkpoints" in reasons["too-many"] and "labels must list 5 names" in reasons["labels-wrong"]
    assert engine.specs == {} and engine.status("garbage")[0] == "unavailable"
    with pytest.raises(WeightsError, match="cannot be used"):
        engine.load("garbage")


def test_files_appearing_and_vanishing_while_listing_never_break_it(models_dir: Path):
    """A server's temp folders (or a copy in progress) under the models folder change while
    /health lists the models: a file gone between listing and stat is skipped, not an error."""
    save_state(models_dir / "steady" / "g.pth", "cyclegan", TINY_PARAMS["cyclegan"], seed=0)
    churn = _mkdir(models_dir / "temp-files")
    stop = threading.Event()

    def churn_files() -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            path = churn / f"{i % 50}.tmp"
            path.write_bytes(b"x")
            path.unlink()

    thread = threading.Thread(target=churn_files)
    thread.start()
    engine = Engine({}, device="cpu")
    try:
        listings = [set(engine.specs) for _ in range(300)]
    finally:
        stop.set()
        thread.join()
    assert all(names == {"steady"} for names in listings)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_a_folder_added_while_serving_is_listed_loaded_and_resolved(serve, models_dir: Path):
    served = serve()
    names = {row["name"] for row in served.client.get("/api/v1/models").json()}
    assert "zebra" not in names
    assert served.client.post("/api/v1/models/stargan/load").json()["name"] == "tiny-stargan"  # no folder model: the first manifest entry
    save_state(models_dir / "zebra" / "latest_net_G_A.pth", "cyclegan", {**TINY_PARAMS["cyclegan"], "norm_affine": False}, seed=4)
    rows = {row["name"]: row for row in served.client.get("/api/v1/models").json()}
    assert rows["zebra"]["status"] == "cached" and rows["zebra"]["architecture"] == "cyclegan"
    loaded = served.client.post("/api/v1/models/cyclegan/load")  # the architecture name: the folder model first
    assert loaded.status_code == 200 and loaded.json()["name"] == "zebra" and loaded.json()["weights_format"] == "official"
    assert served.client.get("/api/v1/models").json()[-1]["status"] == "loaded"
    body = {"image": _photo(), "model_type": "cyclegan", "attack_params": {"iterations": 1, "seed": 0}, "return_deepfakes": False}
    assert served.client.post("/api/v1/protect/image", json=body).json()["metrics"]["model"] == "zebra"
    assert served.client.post("/api/v1/models/tiny-cyclegan/load").json()["name"] == "tiny-cyclegan"  # an exact name wins
    assert served.client.post("/api/v1/models/cyclegan/unload").json() == {"name": "zebra", "unloaded": True, "status": "cached"}
    unknown = served.client.post("/api/v1/models/dalle/load")
    assert unknown.status_code == 404 and "zebra" in unknown.json()["message"] and "cyclegan" in unknown.json()["message"]


def _photo() -> str:
    return base64.b64encode(png(40, 36)).decode()


def test_the_cli_lists_folder_models(cli_env):
    models = Path(cli_env["DEEPSHIELD_MODELS_DIR"])
    save_state(models / "stargan" / "200000-G.ckpt", "stargan", TINY_PARAMS["stargan"], seed=0)
    (models / "broken").mkdir()
    (models / "broken" / "model.pth").write_bytes(b"junk")
    done = run(cli_env, "models", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["stargan"]["status"] == "cached" and rows["stargan"]["labels"] == [f"label_{i}" for i in range(5)]
    assert rows["broken"]["status"] == "unavailable" and rows["tiny"]["origin"] == "manifest"
    text = run(cli_env, "models")
    assert text.returncode == 0 and "broken" in text.stdout and "unavailable" in text.stdout
