"""The attack controls that the Protect and Batch tabs share, and their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from deepshield.attacks import STRENGTHS
from server.ui.context import HandlerContext

ATTACK_CHOICES = [("FGSM", "fgsm"), ("I-FGSM", "ifgsm"), ("PGD", "pgd")]
ROBUST_CHOICES = [("any framing, after sharing (whole photo)", "framing"), ("off", "off"), ("EOT: JPEG, resize, blur, shift", "eot"),
                  ("spread-spectrum: blurs", "spread-spectrum")]
DEFAULT_ROBUST = "framing"
DEFAULT_STRENGTH = "medium"
DEFAULT_ITERATIONS = 10
DEFAULT_STEP_SIZE = 0.01
RANDOM_SEED = -1  # the seed control's "draw one" value (a Number field cannot stay empty)


def _strength_label(name: str) -> str:
    epsilon = STRENGTHS[name]
    return f"{name} (ε {epsilon:g} ≈ {epsilon * 127.5:.1f}/255)"


@dataclass
class AttackControls:
    """The model / target / attack / budget controls shared by the Protect and Batch tabs."""

    model: gr.Dropdown
    targets: gr.CheckboxGroup
    attack: gr.Radio
    strength: gr.Radio
    epsilon: gr.Slider
    iterations: gr.Slider
    step_size: gr.Slider
    random_start: gr.Checkbox
    seed: gr.Number
    detect_faces: gr.Checkbox
    robust: gr.Radio
    check_robustness: gr.Checkbox
    ssim_floor: gr.Slider

    def api_inputs(self) -> list[gr.components.Component]:
        """In the fixed API order after the image(s): model, attack, epsilon, iterations,
        step_size, the extras seed and targets, then (issue 4) detect_faces, robust,
        check_robustness and ssim_floor."""
        return [self.model, self.attack, self.epsilon, self.iterations, self.step_size, self.seed, self.targets,
                self.detect_faces, self.robust, self.check_robustness, self.ssim_floor]


def attack_controls(handlers: HandlerContext, prefix: str, *, check_robustness: bool) -> AttackControls:
    """The attack settings of a tab, elem_ids starting with `prefix`; `check_robustness` is its
    checkbox's default (the Protect tab shows the framings grid from that report; a batch leaves
    it off, it costs time per photo)."""
    default_model = handlers.default_model()
    model = gr.Dropdown(
        handlers.model_choices(), value=default_model, label="Model", info="the generator to protect against (status in brackets)",
        elem_id=f"{prefix}-model",
    )
    labels = handlers.all_labels()  # every label is a valid API value; the UI shows the model's own
    targets = gr.CheckboxGroup(labels, value=[], label="Targets", visible=False, elem_id=f"{prefix}-targets")
    attack = gr.Radio(ATTACK_CHOICES, value="pgd", label="Attack", info="PGD = I-FGSM from a random start", elem_id=f"{prefix}-attack")
    strength = gr.Radio(
        [(_strength_label(name), name) for name in STRENGTHS], value=DEFAULT_STRENGTH, label="Strength",
        info="L-inf budget per pixel; higher is more robust and more visible", elem_id=f"{prefix}-strength",
    )
    robust = gr.Radio(ROBUST_CHOICES, value=DEFAULT_ROBUST, label="Survive sharing and cropping (robust attack)",
                      info="framing: the whole photo, protected wherever a deepfake maker crops it, after recompression; "
                           "off: the paper's plain attack on the centred square or the faces (fastest)",
                      elem_id=f"{prefix}-robust")
    check_robustness = gr.Checkbox(check_robustness, label="Check robustness: re-measure after JPEG 90/75/50, resize, blur, shifted crop, "
                                   "and in unseen framings",
                                   elem_id=f"{prefix}-check-robustness")
    with gr.Accordion("Advanced", open=False, elem_id=f"{prefix}-advanced"):
        detect_faces = gr.Checkbox(True, label="Protect every detected face (face models); off: the centred square",
                                   elem_id=f"{prefix}-detect-faces")
        ssim_floor = gr.Slider(0, 0.999, value=0, step=0.001, label="Perceptual mode: keep SSIM at least",
                               info="0 = off; otherwise the perturbation is scaled down until the photo's SSIM reaches this",
                               elem_id=f"{prefix}-ssim-floor")
        epsilon = gr.Slider(0.004, 0.5, value=STRENGTHS[DEFAULT_STRENGTH], step=0.001, label="Epsilon (on [-1, 1])",
                            info="0.05 = 6.4/255 of the pixel range", elem_id=f"{prefix}-epsilon")
        iterations = gr.Slider(1, 200, value=DEFAULT_ITERATIONS, step=1, label="Iterations", elem_id=f"{prefix}-iterations")
        step_size = gr.Slider(0.001, 0.1, value=DEFAULT_STEP_SIZE, step=0.001, label="Step size (on [-1, 1])", elem_id=f"{prefix}-step-size")
        random_start = gr.Checkbox(True, label="Random start (I-FGSM with a random start is PGD)", elem_id=f"{prefix}-random-start")
        seed = gr.Number(RANDOM_SEED, precision=0, minimum=RANDOM_SEED, label="Seed", info=f"{RANDOM_SEED} = random (the seed used is reported)",
                         elem_id=f"{prefix}-seed")
    controls = AttackControls(model, targets, attack, strength, epsilon, iterations, step_size, random_start, seed,
                              detect_faces, robust, check_robustness, ssim_floor)
    _wire_attack_controls(handlers, controls)
    return controls


def _wire_attack_controls(handlers: HandlerContext, c: AttackControls) -> None:
    """UI-only events keeping the controls consistent (all private: not part of the API)."""
    private: dict[str, Any] = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}
    c.model.change(handlers.targets_update, inputs=c.model, outputs=c.targets, **private)
    c.strength.input(lambda name: STRENGTHS.get(name, STRENGTHS[DEFAULT_STRENGTH]), inputs=c.strength, outputs=c.epsilon, **private)
    c.epsilon.input(lambda eps: next((n for n, v in STRENGTHS.items() if abs(v - float(eps)) < 1e-9), None), inputs=c.epsilon, outputs=c.strength, **private)

    def attack_changed(attack: str) -> tuple[Any, Any, Any]:
        iterative = attack != "fgsm"
        note = None if iterative else "FGSM takes one step of size epsilon"
        return (
            gr.update(value=attack == "pgd", interactive=iterative),
            gr.update(interactive=iterative, info=note),
            gr.update(interactive=iterative, info=note),
        )

    c.attack.change(attack_changed, inputs=c.attack, outputs=[c.random_start, c.iterations, c.step_size], **private)
    c.random_start.input(lambda on, attack: "pgd" if on else ("ifgsm" if attack == "pgd" else attack), inputs=[c.random_start, c.attack], outputs=c.attack, **private)
