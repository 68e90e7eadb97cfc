"""deepshield's real Hub download path (`huggingface_hub.hf_hub_download`) against a local stand-in.

A tiny StarGAN is published on the stand-in in the "lornatang" layout of the real
goodfellowliu/StarGAN-PyTorch files; `HF_ENDPOINT` points at the stand-in, `HF_HOME` at a fresh
per-test cache (conftest's autouse `isolated_caches`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from deepshield import weights
from deepshield.engine import Engine
from deepshield.errors import WeightsError
from deepshield.manifest import ModelSpec
from deepshield.models import get_architecture
from deepshield.models.stargan import from_lornatang
from tests.conftest import REPO, TINY_PARAMS, make_spec
from tests.hub_standin import HubStandIn, hub_fixture  # noqa: F401  (provides the `hub` fixture)

NAME = "stargan-tiny"
REPO_ID = "test-org/StarGAN-tiny"
FILENAME = "g_celeba-32x32.pth.tar"
PARAMS = TINY_PARAMS["stargan"]
TARGETS = {"Black_Hair": (1.0, 0.0, 0.0, 0.0, 0.0), "Young": (0.0, 0.0, 0.0, 0.0, 1.0)}


# --------------------------------------------------------------------------------------------
# a tiny published checkpoint


def to_lornatang(state: dict[str, torch.Tensor], repeat_num: int) -> dict[str, torch.Tensor]:
    """Inverse of `from_lornatang`: canonical `main.N.*` keys -> the Hub's renamed layers."""
    r = repeat_num
    groups = [("first_layer", 0, 3), ("down_sampling", 3, 9), ("trunk", 9, 9 + r), ("up_sampling", 9 + r, 15 + r), ("last_layer", 15 + r, 10**9)]
    out = {}
    for key, value in state.items():
        prefix, index, rest = key.split(".", 2)
        assert prefix == "main", key
        group, start = next((g, s) for g, s, end in groups if s <= int(index) < end)
        out[f"{group}.{int(index) - start}.{rest}"] = value
    return out


def tiny_stargan(seed: int) -> torch.nn.Module:
    """The tiny StarGAN with every tensor (norm affines and running stats included) randomised."""
    torch.manual_seed(seed)
    module = get_architecture("stargan").build(**PARAMS)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.InstanceNorm2d):
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.normal_(0.0, 0.2)
                layer.running_mean.normal_(0.0, 0.2)
                layer.running_var.uniform_(0.5, 1.5)
    return module.eval()


def checkpoint_bytes(module: torch.nn.Module) -> bytes:
    """`torch.save({"state_dict": ...})` in the lornatang layout, as the Hub repository ships it."""
    state = to_lornatang(module.state_dict(), PARAMS["repeat_num"])
    assert from_lornatang(state).keys() == module.state_dict().keys()  # the helper is the exact inverse
    buffer = io.BytesIO()
    torch.save({"state_dict": state}, buffer)
    return buffer.getvalue()


class Published:
    """The original module, its checkpoint bytes and their sha256, served by the stand-in."""

    def __init__(self, standin: HubStandIn) -> None:
        self.module = tiny_stargan(seed=0)
        self.data = checkpoint_bytes(self.module)
        self.sha = standin.add(REPO_ID, FILENAME, self.data)
        assert self.sha == hashlib.sha256(self.data).hexdigest()


@pytest.fixture
def published(hub: HubStandIn) -> Published:
    return Published(hub)


def hub_spec(sha256: str | None, **source: str) -> ModelSpec:
    source = {"repo_id": REPO_ID, "filename": FILENAME, "revision": "main", **source}
    return make_spec(NAME, "stargan", PARAMS, fmt="lornatang", kind="hub", sha256=sha256, targets=TARGETS, **source)


def assert_same_outputs(generator: torch.nn.Module, original: torch.nn.Module) -> None:
    torch.manual_seed(123)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    c = torch.tensor([TARGETS["Black_Hair"], TARGETS["Young"]])
    with torch.no_grad():
        expected = original(x, c)
        actual = generator.to("cpu")(x, c)
    assert expected.abs().mean() > 0.05  # a meaningful, non-degenerate output
    torch.testing.assert_close(actual, expected)


def converted_files() -> list[Path]:
    return sorted((weights.cache_dir() / "converted").glob("*"))


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Skip huggingface_hub's retry sleeps (recorded in the returned list) to keep tests fast."""
    import huggingface_hub.file_download
    import huggingface_hub.utils._http

    sleeps: list[float] = []
    fake_time = types.SimpleNamespace(sleep=sleeps.append)
    monkeypatch.setattr(huggingface_hub.utils._http, "time", fake_time)
    monkeypatch.setattr(huggingface_hub.file_download, "time", fake_time)
    return sleeps


# --------------------------------------------------------------------------------------------
# downloads through the Python API


def test_download_verifies_and_loads_strictly(hub: HubStandIn, published: Published) -> None:
    loaded = weights.load_model(hub_spec(published.sha))

    hf_home = Path(os.environ["HF_HOME"]).resolve()
    assert loaded.path.name == FILENAME
    assert loaded.path.resolve().is_relative_to(hf_home / "hub")
    assert weights.sha256_of(loaded.path) == published.sha == loaded.sha256
    assert loaded.format == "lornatang"
    assert hub.count("GET", FILENAME) == 1
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert_same_outputs(loaded.model, published.module)


def test_second_load_reads_converted_safetensors_without_network(
    hub: HubStandIn, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = hub_spec(published.sha)
    first = Engine({NAME: spec}, device="cpu")
    assert first.status(NAME)[0] == "downloadable"
    first.load(NAME)
    requests_after_first = len(hub.requests)
    assert hub.count("GET", FILENAME) == 1

    converted = weights.converted_path(published.sha)
    assert converted.is_file()
    header_length = int.from_bytes(converted.read_bytes()[:8], "little")
    assert converted.read_bytes()[8:9] == b"{" and header_length < converted.stat().st_size
    with safe_open(str(converted), framework="pt") as handle:
        meta = handle.metadata()
        assert set(handle.keys()) == set(published.module.state_dict())
    assert meta["source_sha256"] == published.sha
    assert (meta["architecture"], meta["format"]) == ("stargan", "lornatang")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the pickled checkpoint was read again instead of the converted file")

    monkeypatch.setattr(weights, "read_checkpoint", never)
    monkeypatch.setattr(torch, "load", never)
    second = Engine({NAME: spec}, device="cpu")
    assert second.status(NAME)[0] == "cached"
    model = second.load(NAME)

    assert len(hub.requests) == requests_after_first  # no HEAD, no GET
    assert model.weights_sha256 == published.sha
    assert_same_outputs(model.generator, published.module)


def test_tampered_upload_is_rejected(hub: HubStandIn, published: Published) -> None:
    tampered = checkpoint_bytes(tiny_stargan(seed=1))  # a valid checkpoint, other weights
    tampered_sha = hub.replace(REPO_ID, FILENAME, tampered)

    with pytest.raises(WeightsError) as caught:
        weights.load_model(hub_spec(published.sha))

    message = str(caught.value)
    assert repr(NAME) in message
    assert "integrity" in message and f"deepshield fetch {NAME}" in message
    assert published.sha[:16] in message and tampered_sha[:16] in message
    assert 1 <= hub.count("GET", FILENAME) <= 2  # one download, at most one re-fetch
    assert converted_files() == []


def test_truncated_file_is_rejected(hub: HubStandIn) -> None:
    full = checkpoint_bytes(tiny_stargan(seed=0))
    hub.add(REPO_ID, FILENAME, full[: len(full) // 2])

    with pytest.raises(WeightsError, match="integrity check") as caught:
        weights.load_model(hub_spec(hashlib.sha256(full).hexdigest()))

    assert "truncated" in str(caught.value)
    assert converted_files() == []


def test_damaged_cache_entry_is_downloaded_again(hub: HubStandIn, published: Published) -> None:
    spec = hub_spec(published.sha)
    cached = weights.load_model(spec).path
    with open(cached.resolve(), "r+b") as handle:  # e.g. an interrupted copy of the cache
        handle.truncate(len(published.data) // 2)

    loaded = weights.load_model(spec)

    assert hub.count("GET", FILENAME) == 2
    assert weights.sha256_of(loaded.path) == published.sha
    assert_same_outputs(loaded.model, published.module)


def test_dropped_connection_is_resumed_with_a_range_request(
    hub: HubStandIn, published: Published, no_backoff: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # huggingface_hub keeps only whole chunks (10 MiB by default): use small ones so the tiny file resumes
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    hub.cut_connection(REPO_ID, FILENAME, at=len(published.data) // 2, times=1)

    loaded = weights.load_model(hub_spec(published.sha))

    ranges = [r.range for r in hub.requests if r.method == "GET"]
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1] is not None and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-"
    assert weights.sha256_of(loaded.path) == published.sha
    assert_same_outputs(loaded.model, published.module)


def test_connection_dropped_every_time_is_a_weights_error(
    hub: HubStandIn, published: Published, no_backoff: list[float]
) -> None:
    hub.cut_connection(REPO_ID, FILENAME, at=len(published.data) // 2)

    with pytest.raises(WeightsError, match=f"{NAME}.*fetch"):
        weights.load_model(hub_spec(published.sha))


def test_manifest_without_sha256_still_downloads(hub: HubStandIn, published: Published) -> None:
    loaded = weights.load_model(hub_spec(None))

    assert loaded.sha256 == published.sha  # hashed locally, keyed for the converted cache
    assert weights.converted_path(published.sha).is_file()
    assert_same_outputs(loaded.model, published.module)


def test_revision_pinned_to_a_commit(hub: HubStandIn, published: Published) -> None:
    spec = hub_spec(published.sha, revision=hub.commit(REPO_ID))
    weights.load_model(spec)
    requests_after_first = len(hub.requests)

    hub.replace(REPO_ID, FILENAME, b"a later upload moves main")  # the pinned commit is unaffected
    loaded = weights.load_model(spec)

    assert len(hub.requests) == requests_after_first
    assert_same_outputs(loaded.model, published.module)


@pytest.mark.parametrize(
    ("field", "value", "hub_error"),
    [
        ("repo_id", "test-org/no-such-repo", "RepositoryNotFoundError"),
        ("filename", "no-such-file.pth", "EntryNotFoundError"),
        ("revision", "v9.9", "RevisionNotFoundError"),
    ],
)
def test_missing_repo_file_or_revision(hub: HubStandIn, published: Published, field: str, value: str, hub_error: str) -> None:
    spec = hub_spec(published.sha, **{field: value})

    with pytest.raises(WeightsError) as caught:
        weights.load_model(spec)

    message = str(caught.value)
    assert repr(NAME) in message and value in message
    assert "does not exist on the Hub" in message and hub_error in message
    assert "check the manifest" in message
    assert caught.value.__suppress_context__  # raised `from None`: no chained huggingface_hub traceback
    assert hub.count("HEAD") == 1 and hub.count("GET") == 0


def test_unreachable_hub_is_reported_quickly(no_backoff: list[float]) -> None:
    """HF_ENDPOINT is a closed port (conftest). Without `no_backoff` huggingface_hub 2.4 retries the
    HEAD 5 times and sleeps 1+2+4+8+8 = 23 s first; no environment variable shortens that."""
    started = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        weights.load_model(hub_spec("0" * 64))
    elapsed = time.monotonic() - started

    message = str(caught.value)
    assert "cannot be reached" in message and os.environ["HF_ENDPOINT"] in message
    assert f"deepshield fetch {NAME}" in message
    assert no_backoff, "huggingface_hub no longer retries: drop the no_backoff fixture here"
    assert elapsed < 10


def test_no_download_when_not_allowed(hub: HubStandIn, published: Published) -> None:
    with pytest.raises(WeightsError, match=f"deepshield fetch {NAME}"):
        weights.load_model(hub_spec(published.sha), allow_download=False)
    assert hub.requests == []


# --------------------------------------------------------------------------------------------
# the command line (a subprocess, environment passed explicitly)


def write_manifest(path: Path, sha256: str | None) -> Path:
    source = {"repo_id": REPO_ID, "filename": FILENAME, "revision": "main", "format": "lornatang"}
    if sha256:
        source["sha256"] = sha256
    entry = {
        "description": "tiny StarGAN served by the test Hub stand-in",
        "architecture": "stargan",
        "params": dict(PARAMS),
        "image_size": 32,
        "preprocessing": "center_crop_resize",
        "license": "test",
        "weights": source,
        "targets": {label: list(vector) for label, vector in TARGETS.items()},
    }
    path.write_text(yaml.safe_dump({"version": 1, "models": {NAME: entry}}), encoding="utf-8")
    return path


def cli(*args: str, manifest: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", ""),
        "HF_ENDPOINT": os.environ["HF_ENDPOINT"],
        "HF_HOME": os.environ["HF_HOME"],
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "DEEPSHIELD_CACHE_DIR": os.environ["DEEPSHIELD_CACHE_DIR"],
        "DEEPSHIELD_MANIFEST": str(manifest),
        "DEEPSHIELD_DEVICE": "cpu",
    }
    return subprocess.run(
        [sys.executable, "-m", "deepshield", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def model_status(manifest: Path) -> str:
    run = cli("models", "--json", manifest=manifest)
    assert run.returncode == 0, run.stderr
    (row,) = json.loads(run.stdout)
    assert row["name"] == NAME
    return row["status"]


def test_cli_fetch_downloads_into_the_cache(hub: HubStandIn, published: Published, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "manifest.yaml", published.sha)
    assert model_status(manifest) == "downloadable"

    run = cli("fetch", NAME, manifest=manifest)

    assert run.returncode == 0, run.stderr
    assert published.sha in run.stdout
    cached = weights.find_local_weights(hub_spec(published.sha))
    assert cached is not None and weights.sha256_of(cached) == published.sha
    assert str(cached) in run.stdout
    assert hub.count("GET", FILENAME) == 1
    assert model_status(manifest) == "cached"


@pytest.mark.parametrize("fault", ["tampered", "missing file"])
def test_cli_fetch_failure_is_a_one_line_error(hub: HubStandIn, published: Published, tmp_path: Path, fault: str) -> None:
    if fault == "tampered":
        hub.replace(REPO_ID, FILENAME, checkpoint_bytes(tiny_stargan(seed=1)))
        expected = "integrity"
    else:
        hub.add(REPO_ID, "README.md", b"the repository stays, the file goes")
        hub.remove(REPO_ID, FILENAME)
        expected = "does not exist on the Hub"
    manifest = write_manifest(tmp_path / "manifest.yaml", published.sha)

    run = cli("fetch", NAME, manifest=manifest)

    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: ") and expected in lines[0] and NAME in lines[0]
    assert "Traceback" not in run.stderr
