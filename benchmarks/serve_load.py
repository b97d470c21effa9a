"""`imagegen serve` under load: 8 concurrent clients x 4 requests each (n=1, the model's defaults: 64x64, 25 prior +
25 decoder steps) against the server with request batching (--max-batch 8) and against the same server with
--max-batch 1 (AUTOMATIC1111's one-at-a-time behaviour): throughput, p50/p95 latency, failed or lost requests.
Also a warm single request against the pipeline's own compute for it (measured in this process, interleaved), and
the cold CLI time for the same image.

Run alone (it starts its own servers on 127.0.0.1):  python benchmarks/serve_load.py [--model shapes]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow triangle", "a white cross",
           "a large purple circle", "a small orange square", "a black star on a white background"]
CLIENTS, REQUESTS_EACH = 8, 4
START_TIMEOUT_S = 300


class Server:
    def __init__(self, model: str, max_batch: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "imagegen", "serve", "--model", model, "--port", "0",
                                      "--no-ui", "--outputs", "none", "--max-batch", str(max_batch)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.base = f"http://127.0.0.1:{json.loads(self.proc.stdout.readline())['port']}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("the server did not become ready")

    def txt2img(self, prompt: str, seed: int) -> tuple[float, int]:
        """(seconds, images received)."""
        start = time.perf_counter()
        response = httpx.post(f"{self.base}/sdapi/v1/txt2img", json={"prompt": prompt, "seed": seed}, timeout=600)
        images = len(response.json().get("images", [])) if response.status_code == 200 else 0
        return time.perf_counter() - start, images

    def health(self) -> dict:
        return httpx.get(f"{self.base}/health").json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


def load_test(server: Server) -> dict:
    latencies, received, lock = [], [], threading.Lock()

    def client(c: int) -> None:
        for r in range(REQUESTS_EACH):
            seconds, images = server.txt2img(PROMPTS[(c + r) % len(PROMPTS)], 1000 + c * REQUESTS_EACH + r)
            with lock:
                latencies.append(seconds)
                received.append(images)

    start = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    wall = time.perf_counter() - start
    latencies.sort()
    sent = CLIENTS * REQUESTS_EACH
    return {"wall": wall, "throughput": sum(received) / wall, "p50": statistics.median(latencies),
            "p95": latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
            "failed": sent - sum(1 for n in received if n == 1), "sent": sent, **server.health()}


def report(name: str, r: dict) -> dict:
    print(f"{name}: {r['wall']:.1f} s, {r['throughput']:.2f} images/s, p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s, "
          f"failed or lost {r['failed']} of {r['sent']}; {r['calls']} pipeline calls, largest {r['largest_batch']}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--repeats", type=int, default=3, help="of the warm single request (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "imagegen", PROMPTS[0], "--seed", "0", "--model", args.model,
                        "--out", out], check=True, capture_output=True)
        cold_cli = time.perf_counter() - start

    import imagegen

    pipe = imagegen.load_pipeline(args.model)
    batched = Server(args.model, max_batch=8)
    try:
        batched.txt2img(PROMPTS[0], 0)  # warm-up of the server
        pipe(PROMPTS[0], seed=0, progress=False)  # and of this process
        compute, warm = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            start = time.perf_counter()
            pipe(PROMPTS[0], seed=0, progress=False)
            compute.append(time.perf_counter() - start)
            warm.append(batched.txt2img(PROMPTS[0], 0)[0])
        del pipe
        compute_s, warm_s = statistics.median(compute), statistics.median(warm)
        print(f"model {args.model}, {CLIENTS} clients x {REQUESTS_EACH} requests (n=1, defaults), "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        print(f"warm single request {warm_s:.3f} s; the pipeline's own compute for it {compute_s:.3f} s; cold CLI "
              f"(imports, load, compute) {cold_cli:.1f} s", flush=True)
        with_batching = report("--max-batch 8", load_test(batched))
    finally:
        batched.stop()
    serial = Server(args.model, max_batch=1)
    try:
        serial.txt2img(PROMPTS[0], 0)
        one_at_a_time = report("--max-batch 1", load_test(serial))
    finally:
        serial.stop()
    print(f"RESULT throughput batched/serial {with_batching['throughput'] / one_at_a_time['throughput']:.2f}x; "
          f"warm latency/compute {warm_s / compute_s:.3f}; failed {with_batching['failed'] + one_at_a_time['failed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
