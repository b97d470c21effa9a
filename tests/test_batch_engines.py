"""`imagegen batch` end to end on the tiny model: one process, `accelerate launch --num_processes 2 --cpu` and
`--engine ray` on a local 2-CPU Ray instance give the same files, pixel for pixel, and equal manifests; a run killed
with SIGKILL continues to the same result; webdataset shards read back with the webdataset library."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagegen.cli import main

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow triangle", "a white cross", "a small red heart"]
JOBS = 24
IMAGES = JOBS + 5  # five jobs draw n=2
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "RAY_DEDUP_LOGS": "0"}
RAY_TIMEOUT = 240  # seconds: a stalled Ray run fails the test instead of hanging it


def job_lines() -> list[str]:
    lines = []
    for i in range(JOBS):
        job = {"prompt": PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f", number {i}")}
        if i % 5 == 1:
            job.update(n=2, seed=1000 + 7 * i)
        if i % 7 == 3:
            job["negative"] = "dark"
        if i % 6 == 4:
            job["steps"] = 3  # another pipeline setting: its own batches
        lines.append(json.dumps(job))
    return lines


@pytest.fixture(scope="module")
def jobs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("jobs") / "jobs.jsonl"
    path.write_text("\n".join(job_lines()) + "\n", encoding="utf-8")
    return path


def arguments(jobs_file, tiny_model_dir, out, *extra) -> list[str]:
    return ["batch", str(jobs_file), "--out", str(out), "--model", str(tiny_model_dir), "--steps", "4",
            "--prior-steps", "4", "--width", "32", "--height", "32", "--batch-size", "4", "--threads", "1",
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def single(jobs_file, tiny_model_dir, tmp_path_factory):
    """The reference: one process, in this one."""
    out = tmp_path_factory.mktemp("single")
    assert main(arguments(jobs_file, tiny_model_dir, out)) == 0
    return out


def manifest(out) -> list[str]:
    return sorted((Path(out) / "manifest.jsonl").read_text(encoding="utf-8").splitlines())


def images(out) -> dict:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(Path(out).glob("*.png"))}


def assert_same_run(out, reference) -> None:
    got, want = images(out), images(reference)
    assert sorted(got) == sorted(want) and len(want) == IMAGES
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    assert manifest(out) == manifest(reference)
    assert not [p.name for p in Path(out).iterdir() if p.name.startswith(".") or ".part" in p.name]


def test_single_process_output(single, capsys):
    entries = [json.loads(line) for line in manifest(single)]
    assert len(entries) == IMAGES and len({(e["id"], e["index"]) for e in entries}) == IMAGES
    second = next(e for e in entries if e["id"] == 2 and e["index"] == 1)  # line 2: n=2, seed 1007
    assert second["file"] == "000002-1.png" and second["seed"] == second["prior_seed"] == 1008
    assert next(e for e in entries if e["id"] == 3)["seed"] == 3  # --seed 0 + id
    import hashlib

    assert hashlib.sha256((single / "000002-1.png").read_bytes()).hexdigest() == second["sha256"]
    from imagegen.png import read_text_chunks

    assert read_text_chunks(single / "000002-1.png")["parameters"].startswith("a blue square")
    assert (single / "errors.jsonl").read_text() == ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds accelerate's process count in /proc")
def test_accelerate_two_cpu_processes_give_the_same_files(single, jobs_file, tiny_model_dir, tmp_path):
    out = tmp_path / "accelerate"
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--num_processes", "2", "--cpu", "--main_process_port", str(free_port()),
               "-m", "imagegen", *arguments(jobs_file, tiny_model_dir, out)]
    done = subprocess.run(command, env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{IMAGES} of {IMAGES} images ({IMAGES} new), 0 failures" in done.stdout
    assert_same_run(out, single)


RAY_DRIVER = """
import sys, ray
ray.init(num_cpus=2, include_dashboard=False, _temp_dir=sys.argv[1])
try:
    from imagegen.cli import main
    code = main(sys.argv[2:])
finally:
    ray.shutdown()
sys.exit(code)
"""


def ray_processes(marker: str) -> list[int]:
    """The processes the test's Ray driver started (gcs_server, raylet, agents, workers): they inherit its
    environment, and with it the marker (their command lines are renamed, e.g. `ray::DashboardAgent`)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_ray_engine_on_a_local_two_cpu_instance_gives_the_same_files(single, jobs_file, tiny_model_dir, tmp_path):
    pytest.importorskip("ray.data")
    out = tmp_path / "ray"
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    marker = f"IMAGEGEN_RAY_TEST={os.getpid()}-{time.time_ns()}"
    command = [sys.executable, "-c", RAY_DRIVER, temp_dir, *arguments(jobs_file, tiny_model_dir, out, "--engine", "ray")]
    process = subprocess.Popen(command, env={**ENV, "IMAGEGEN_RAY_TEST": marker.partition("=")[2]}, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=RAY_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"the Ray run did not finish in {RAY_TIMEOUT} s: {stderr[-3000:]}")
    finally:
        deadline = time.monotonic() + 30
        while ray_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftover = ray_processes(marker)
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not leftover, "Ray processes left running after ray.shutdown()"
    assert process.returncode == 0, stderr[-3000:]
    assert f"{IMAGES} of {IMAGES} images ({IMAGES} new), 0 failures" in stdout
    assert_same_run(out, single)


def test_a_run_killed_with_sigkill_continues_to_the_same_result(single, jobs_file, tiny_model_dir, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "imagegen", *arguments(jobs_file, tiny_model_dir, out)]
    process = subprocess.Popen(command, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = 0
    while process.poll() is None and lines < 5:
        time.sleep(0.01)
        if (out / "manifest.jsonl").exists():
            lines = (out / "manifest.jsonl").read_bytes().count(b"\n")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read()[-2000:]
    assert 5 <= lines < IMAGES
    # what a kill in the middle of a batch leaves: a temporary file and an image that has no manifest line
    (out / ".partial-k9").write_bytes(b"half a png")
    (out / "000024-0.png").write_bytes(b"not the real image")
    assert main(arguments(jobs_file, tiny_model_dir, out)) == 0
    assert_same_run(out, single)
    entries = [json.loads(line) for line in manifest(out)]
    assert len(entries) == IMAGES == len({e["file"] for e in entries})  # every image exactly once


def test_webdataset_shards_read_back_with_the_webdataset_library(single, jobs_file, tiny_model_dir, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "shards"
    assert main(arguments(jobs_file, tiny_model_dir, out, "--format", "webdataset", "--shard-size", "10")) == 0
    # a kill after the last batch's members were written but before its manifest lines: resume cuts them off
    manifest_file = out / "manifest.jsonl"
    kept = manifest_file.read_text().splitlines()
    last = json.loads(kept[-1])
    dropped = [line for line in kept if json.loads(line)["file"] == last["file"]][-2:]
    manifest_file.write_text("".join(line + "\n" for line in kept if line not in dropped))
    with open(out / last["file"], "ab") as shard:
        shard.write(b"garbage of a batch in flight")
    assert main(arguments(jobs_file, tiny_model_dir, out, "--format", "webdataset", "--shard-size", "10")) == 0

    shards = sorted(str(p) for p in out.glob("shard-*.tar"))
    assert len(shards) >= 3
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    reference = images(single)
    assert sorted(s["__key__"] for s in samples) == sorted(name.removesuffix(".png") for name in reference)
    for sample in samples:
        import io

        pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
        assert np.array_equal(pixels, reference[sample["__key__"] + ".png"]), sample["__key__"]
        meta = json.loads(sample["json"])
        assert f"{meta['id']:06d}-{meta['index']}" == sample["__key__"] and "prompt" in meta
    assert len(manifest(out)) == IMAGES


def test_a_job_that_fails_is_listed_and_the_others_are_made(tiny_model_dir, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a red circle"}\n{"prompt": "a blue square", "guidance": 1e38, '
                    '"prior_guidance": 1e38}\n{"prompt": "a star", "steps": 3}\n')
    out = tmp_path / "out"
    assert main(arguments(jobs, tiny_model_dir, out)) == 1  # the NaN job fails at render time, in its own batch
    captured = capsys.readouterr()
    assert "3 jobs, 2 of 3 images (2 new), 1 failures" in captured.out and "1 job failed" in captured.err
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["stage"]) for e in errors] == [(2, "render")] and "NaN" in errors[0]["error"]
    assert sorted(p.name for p in out.glob("*.png")) == ["000001-0.png", "000003-0.png"]
