"""Classifier-free guidance of one sampling loop (the prior's or the decoder's): on which steps it applies, and how the
conditional and unconditional predictions are combined. No torch import at module level.

* scale (Ho & Salimans 2022): prediction = unconditional + scale * (conditional - unconditional); scale <= 1 turns
  guidance off altogether (only the conditional half is computed).
* interval (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval improves sample and distribution
  quality in diffusion models"): guidance applies on step i of n only when start <= i / n < stop (the fractions
  the LoRA step windows use); on the other steps the conditional prediction is used alone and the unconditional
  half of the batch is not computed. (0, 1), the default, guides every step.
* rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", diffusers'
  `rescale_noise_cfg`): the guided prediction is rescaled to the conditional one's standard deviation per image and
  mixed in with weight `rescale`; 0, the default, leaves it untouched.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Guidance:
    scale: float
    start: float = 0.0
    stop: float = 1.0
    rescale: float = 0.0
    steps: int = 1

    @classmethod
    def of(cls, settings, steps: int) -> "Guidance":
        """The guidance of PriorSettings or DecoderSettings over a loop of `steps` steps."""
        return cls(settings.guidance, settings.guidance_start, settings.guidance_stop, settings.guidance_rescale,
                   steps)

    @property
    def enabled(self) -> bool:
        """Whether any step is guided, so that the unconditional inputs are needed at all."""
        return self.scale > 1 and any(self.at(i) for i in range(self.steps))

    def at(self, step: int) -> bool:
        """Whether step `step` (0-based) combines both predictions."""
        return self.scale > 1 and self.start <= step / self.steps < self.stop

    def combine(self, unconditional, conditional):
        """The guided prediction from the two halves, each (B, ...)."""
        guided = unconditional + self.scale * (conditional - unconditional)
        if self.rescale:
            dims = tuple(range(1, conditional.ndim))
            ratio = conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
            guided = self.rescale * (guided * ratio) + (1 - self.rescale) * guided
        return guided
