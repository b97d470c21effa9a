"""Pipeline overhead, measured side by side in one run on the same tiny Kandinsky-2.2-layout components:

  (a) imagegen's wall time / diffusers' KandinskyV22PriorPipeline + KandinskyV22Pipeline wall time  (goal <= 0.95)
  (b) imagegen's wall time / the sum of the time spent inside its own model forward calls         (goal <= 1.05)

Same prompt, steps, guidance, size and seeds for both; runs alternate and the median of each is reported.
Run alone (other jobs on the 2 cores distort it):  python benchmarks/pipeline_overhead.py [--repeats 7]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline  # noqa: E402

import imagegen  # noqa: E402
from imagegen.build.tiny import save_tiny_model  # noqa: E402
from imagegen.settings import DecoderSettings, PriorSettings  # noqa: E402


class ForwardTimer:
    """Adds up the wall time spent inside the forward calls of the given top-level models."""

    def __init__(self, models):
        self.total = 0.0
        self._start = {}
        for model in models:
            model.register_forward_pre_hook(self._pre)
            model.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._start[id(module)] = time.perf_counter()

    def _post(self, module, args, output):
        self.total += time.perf_counter() - self._start.pop(id(module))


class DecodeTimer:
    """VAE decode is a method, not forward(): time it by wrapping."""

    def __init__(self, vae, timer: ForwardTimer):
        original = vae.decode

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                timer.total += time.perf_counter() - start

        vae.decode = timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--prior-steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    folder = save_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    pipe = imagegen.load_pipeline(str(folder))
    prior = PriorSettings(steps=args.prior_steps, guidance=4.0)
    decoder = DecoderSettings(steps=args.steps, guidance=4.0, width=args.size, height=args.size)
    timer = ForwardTimer([pipe.text_encoder, pipe.prior, pipe.image_encoder, pipe.unet])
    DecodeTimer(pipe.vae, timer)

    prior_pipe = KandinskyV22PriorPipeline.from_pretrained(folder / "prior")
    decoder_pipe = KandinskyV22Pipeline.from_pretrained(folder / "decoder")
    for p in (prior_pipe, decoder_pipe):
        p.set_progress_bar_config(disable=True)
    n, seed = args.images, 7

    def run_imagegen():
        pipe("a red circle", num_images=n, seed=seed, prior=prior, decoder=decoder, progress=False)

    def run_diffusers():
        embeds = prior_pipe("a red circle", num_images_per_prompt=n, num_inference_steps=args.prior_steps,
                            guidance_scale=4.0, generator=[torch.Generator().manual_seed(seed + i) for i in range(n)])
        decoder_pipe(image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                     height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=4.0,
                     generator=[torch.Generator().manual_seed(seed + i) for i in range(n)], output_type="pil")

    run_imagegen(), run_diffusers()  # warm-up
    ours, theirs, forward_share = [], [], []
    for _ in range(args.repeats):
        timer.total = 0.0
        start = time.perf_counter()
        run_imagegen()
        ours.append(time.perf_counter() - start)
        forward_share.append(ours[-1] / timer.total)
        start = time.perf_counter()
        run_diffusers()
        theirs.append(time.perf_counter() - start)

    ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
    vs_forwards = statistics.median(forward_share)
    print(f"setup: tiny K2.2-layout components, {args.size}x{args.size}, {args.prior_steps} prior + {args.steps} "
          f"decoder steps, guidance 4, batch {n}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"imagegen:  {ours_s:.3f} s per call ({ours_s / n:.3f} s/image)")
    print(f"diffusers: {theirs_s:.3f} s per call ({theirs_s / n:.3f} s/image)")
    print(f"imagegen / its own forward calls: {vs_forwards:.3f}")
    verdict = "OK" if ours_s / theirs_s <= 0.95 and vs_forwards <= 1.05 else "ABOVE GOAL"
    print(f"RESULT imagegen/diffusers = {ours_s / theirs_s:.3f} (goal <= 0.95), imagegen/forwards = "
          f"{vs_forwards:.3f} (goal <= 1.05): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
