"""Peak memory of the largest requests the size limits allow (imagegen.settings.Limits), each in a fresh process:
the most images per call at the model's trained size, and the largest image. Beside them, one trained-size image:
the baseline the limits multiply.

Run alone:  python benchmarks/limits_memory.py [--model shapes]
"""
import argparse
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = """
import resource, sys, time
import imagegen
from dataclasses import replace
pipe = imagegen.load_pipeline(sys.argv[1])
width, height, images = map(int, sys.argv[2:5])
decoder = replace(pipe.model.decoder_defaults, width=width, height=height)
start = time.perf_counter()
result = pipe("a red circle", num_images=images, seed=0, decoder=decoder, progress=False)
assert len(result.images) == images and result.images[0].size == (width, height)
print(f"{time.perf_counter() - start:.1f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
"""


def run(model: str, width: int, height: int, images: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, model, str(width), str(height), str(images)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024  # seconds, MiB (ru_maxrss is in KiB on Linux)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    args = parser.parse_args()
    import imagegen
    from imagegen.presets import find_preset
    from imagegen.settings import Limits

    trained = find_preset(args.model).decoder_defaults
    limits = Limits.for_model(trained)
    most = limits.max_call_pixels // (trained.width * trained.height)
    largest = limits.max_call_pixels // (limits.max_width * limits.max_height)
    requests = [("one image at the trained size", trained.width, trained.height, 1),
                (f"most images per call ({most})", trained.width, trained.height, most),
                (f"largest image ({largest} of them)", limits.max_width, limits.max_height, largest)]
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"model {args.model} (imagegen {imagegen.__version__}), machine memory {total:.1f} GiB")
    peaks = []
    for label, width, height, images in requests:
        seconds, peak = run(args.model, width, height, images)
        peaks.append(peak)
        print(f"{label:36s} {images:3d} x {width}x{height}: peak RSS {peak:7.0f} MiB, {seconds:5.1f} s")
    print(f"RESULT largest allowed request peaks at {max(peaks):.0f} MiB = {max(peaks) / peaks[0]:.2f}x one image, "
          f"{max(peaks) / 1024 / total:.1%} of this machine's memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
