"""Request and response bodies of the REST API (shown with their descriptions in /docs and /redoc)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepshield.attacks import EPSILON_RANGE, MAX_ITERATIONS, STRENGTHS

EPSILON_MIN, EPSILON_MAX = EPSILON_RANGE
STEP_SIZE_MAX = 2 * EPSILON_MAX  # what deepshield.attacks accepts
SEED_MAX = 2**31 - 1

AttackMethod = Literal["fgsm", "ifgsm", "pgd"]
Strength = Literal["low", "medium", "high"]
RobustMode = Literal["off", "eot", "spread-spectrum", "framing"]
PRESETS_TEXT = ", ".join(f"{n} = {e:g} ({e * 127.5:.2f}/255)" for n, e in STRENGTHS.items())
OutputFormat = Literal["png", "jpeg", "webp"]

RANDOM_START_RULE = (
    "PGD is I-FGSM from a random start, so for the iterative methods `random_start` picks the variant when "
    "given: true runs pgd, false runs ifgsm, whatever `attack_method` says (the report's `attack` shows "
    "what ran). Left out, pgd starts at random and ifgsm does not. fgsm has no random start: "
    "fgsm with random_start=true is rejected (422)."
)


class AttackParams(BaseModel):
    """Attack budget and schedule on the generators' [-1, 1] input scale."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(
        0.05,
        gt=EPSILON_MIN,
        le=EPSILON_MAX,
        description=f"L-inf budget on the [-1, 1] scale: 0.05 = 6.4/255 of the pixel range. Range ({EPSILON_MIN}, {EPSILON_MAX}].",
    )
    iterations: int = Field(
        10, ge=1, le=MAX_ITERATIONS, description=f"Signed-gradient steps of ifgsm / pgd, 1..{MAX_ITERATIONS}; fgsm always takes one step."
    )
    step_size: float = Field(
        0.01, gt=0, le=STEP_SIZE_MAX, description=f"Step size of ifgsm / pgd on the [-1, 1] scale, (0, {STEP_SIZE_MAX}]; fgsm steps by epsilon."
    )
    random_start: bool | None = Field(None, description=RANDOM_START_RULE)
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Seed of the random start / initial noise: the same seed gives the same result. Random (and reported) when left out."
    )
    targets: list[str] | None = Field(
        None,
        min_length=1,
        description="Target labels of a conditional model (e.g. StarGAN's Black_Hair, Male); all labels, attacked jointly, when left out. Unconditional models take none.",
    )
    strength: Strength | None = Field(None, description=f"A budget preset instead of epsilon: {PRESETS_TEXT}. Give one of strength or epsilon.")
    detect_faces: bool = Field(
        True, description="Face models (StarGAN, GANimation): protect every detected face, cropped as in the model's training data. False: the centred square."
    )
    faces: list[int] | None = Field(
        None,
        min_length=1,
        description="Face models: protect only these faces, numbered from 0 left to right as the report's `faces` lists them "
        "(each with its box, landmarks and score); in a batch, the same numbers for every photo. All faces when left out.",
    )
    robust: RobustMode = Field(
        "off",
        description="`eot` optimises through differentiable JPEG, resizing, blur and crop shifts so the protection survives sharing; "
        "`spread-spectrum` cycles blurs (the paper's defence against blurring); `framing` perturbs the whole photo and optimises over the "
        "deepfake maker's framings (crops anywhere at 0.5-1x the short side, any resize filter; jittered, turned face crops) after sharing "
        "(JPEG, downscaling, blur), so it holds however the photo is cropped. Same budget; slower.",
    )
    check_robustness: bool = Field(
        False, description="Add `robustness` to the report: the disruption after real JPEG 90/75/50, resize to half and back, blur sigma 1 and a shifted crop, "
        "and `framings`: the share of 8 unseen framings of the deepfake maker still disrupted, plainly and after JPEG 75."
    )
    ssim_floor: float | None = Field(
        None, gt=0, lt=1, description="Perceptual mode: scale the perturbation down until the photo's SSIM is at least this (e.g. 0.95)."
    )

    @model_validator(mode="after")
    def _one_budget(self) -> AttackParams:
        if self.strength is not None:
            if "epsilon" in self.model_fields_set:
                raise ValueError("give epsilon or strength, not both")
            self.epsilon = STRENGTHS[self.strength]
        return self


class ProtectOptions(BaseModel):
    """Everything but the image(s): which model, which attack, which output."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_type: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="A model name from GET /api/v1/models (e.g. cyclegan-vintage, or a models-folder model such as stargan), "
        "or an architecture name (stargan, cyclegan, ganimation, pix2pixhd) meaning the models-folder model of that "
        "architecture when there is one, else its first manifest entry. Left out: the server's default model (DEFAULT_MODEL).",
    )
    attack_method: AttackMethod = Field(
        "pgd", description="fgsm (one step of size epsilon), ifgsm (iterative signed steps) or pgd (ifgsm from a random start)."
    )
    attack_params: AttackParams = Field(default_factory=AttackParams, description="Budget and schedule of the attack.")
    output_format: OutputFormat = Field(
        "png", description="File format of the protected image: png (default, lossless), jpeg (quality 95) or webp (lossless). Metrics are measured on this file."
    )
    return_deepfakes: bool = Field(
        True, description="Also return what the model makes of the original and of the protected photo (PNG, base64) to see the disruption."
    )

    @field_validator("attack_method", mode="before")
    @classmethod
    def _normalise_attack(cls, value: Any) -> Any:
        return value.lower().replace("-", "").replace("_", "") if isinstance(value, str) else value

    @field_validator("output_format", mode="before")
    @classmethod
    def _normalise_format(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.lower().lstrip(".")
            return "jpeg" if value == "jpg" else value
        return value

    @model_validator(mode="after")
    def _check_random_start(self) -> ProtectOptions:
        if self.attack_method == "fgsm" and self.attack_params.random_start:
            raise ValueError("fgsm has no random start: use attack_method pgd for a random start, or leave random_start out")
        return self

    def attack(self) -> str:
        """The attack that runs, after the random_start rule."""
        start = self.attack_params.random_start
        if self.attack_method == "fgsm" or start is None:
            return self.attack_method
        return "pgd" if start else "ifgsm"


class ProtectImageRequest(ProtectOptions):
    """One photo to protect."""

    image: str = Field(
        ...,
        min_length=1,
        description="The photo as base64 (standard alphabet), optionally as a data URL `data:image/png;base64,...`. "
        "PNG, JPEG, WebP, TIFF, BMP or GIF, at most MAX_IMAGE_SIZE_MB and MAX_IMAGE_DIMENSION pixels a side.",
    )


class BatchImage(BaseModel):
    """One photo of a batch."""

    model_config = ConfigDict(extra="forbid")

    filename: str = Field("image", max_length=255, description="A name to tell the results apart (reported back as `filename` and `metrics.input`).")
    image: str = Field(..., min_length=1, description="The photo as base64 or a data URL, as in /api/v1/protect/image.")


class ProtectBatchRequest(ProtectOptions):
    """Several photos protected with the same options, in a background job or (async_processing
    false) within the request. The options sit at the top level or under `protection_config`
    (the original service's shape), not both."""

    images: list[BatchImage] = Field(
        ...,
        min_length=1,
        description="The photos, at most MAX_BATCH_SIZE: base64 strings (named image_1, image_2 ...) or {filename, image} objects. "
        "A photo that cannot be decoded becomes an error entry; the others still run.",
    )
    protection_config: ProtectOptions | None = Field(None, description="The options (model_type, attack_method, attack_params, ...) as an object instead of at the top level.")
    async_processing: bool = Field(
        True, description="true: answer 202 with a task id at once and run a background job; false: answer 200 with the results when they are done."
    )

    @field_validator("images", mode="before")
    @classmethod
    def _name_plain_strings(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"filename": f"image_{k + 1}", "image": item} if isinstance(item, str) else item for k, item in enumerate(value)]
        return value

    @model_validator(mode="after")
    def _options_in_one_place(self) -> ProtectBatchRequest:
        if self.protection_config is not None and self.model_fields_set & set(ProtectOptions.model_fields):
            raise ValueError("give the options either at the top level or under protection_config, not both")
        return self

    def options(self) -> ProtectOptions:
        """The options, wherever the request put them."""
        return self.protection_config or ProtectOptions.model_validate(self.model_dump(include=set(ProtectOptions.model_fields)))


class ProtectImageResponse(BaseModel):
    protected_image: str = Field(..., description="The protected photo, base64 of a file in `output_format`.")
    mime_type: str = Field(..., description="MIME type of `protected_image`.")
    deepfake_original: str | None = Field(None, description="The model's output on the original photo (PNG, base64); null when return_deepfakes is false.")
    deepfake_protected: str | None = Field(None, description="The model's output on the protected photo (PNG, base64); null when return_deepfakes is false.")
    metrics: dict[str, Any] = Field(
        ...,
        description="The report, measured on the returned file: model, attack, epsilon, iterations, step_size, seed, seconds, "
        "perturbation {linf, l2, linf_255, psnr, ssim}, disruption {mse, l1, disrupted, per_target}.",
    )
    processing_time: float = Field(..., description="Seconds from receiving the request to the response, waiting for a free slot included.")


class BatchAccepted(BaseModel):
    task_id: str = Field(..., description="Poll GET /api/v1/protect/status/{task_id} for progress and results.")
    status: str = Field(..., description="`queued` at first; then running, completed or failed.")
    total: int = Field(..., description="Number of photos in the job.")
    status_url: str = Field(..., description="Where to poll.")


class BatchResults(BaseModel):
    """A batch run within the request (async_processing false)."""

    status: str = Field(..., description="completed, or failed when every photo failed.")
    progress: dict[str, int] = Field(..., description="{done, total}.")
    results: list[dict[str, Any]] = Field(
        ..., description="Per photo, in order: index, filename, output, status ok with protected_image (base64), mime_type, deepfake_original, "
        "deepfake_protected, metrics, processing_time; or status error with error and message."
    )
    processing_time: float = Field(..., description="Seconds from receiving the request to the response.")


class VerifyRequest(BaseModel):
    """A photo before protection and the protected photo as it came back from sharing."""

    model_config = ConfigDict(extra="forbid")

    original: str = Field(..., min_length=1, description="The photo before protection, base64 or a data URL.")
    shared: str = Field(
        ..., min_length=1, description="The protected photo as shared (recompressed, resized, cropped, mirrored, turned by quarters, framed), base64 or a data URL, as the site served it."
    )
    models: list[str] | None = Field(None, min_length=1, description="Models to check; every photo model on the server when left out.")
    return_deepfakes: bool = Field(True, description="Return each model's two deepfakes (PNG, base64) to compare side by side.")


class ErrorResponse(BaseModel):
    error: str = Field(..., description="Machine-readable kind: invalid_image, invalid_request, unknown_model, rate_limited, server_busy ...")
    message: str = Field(..., description="What went wrong and what to do about it.")
