"""`imagegen batch` job lists without a model: stable ids and seeds, the deterministic plan, bad lines named with their
line number before any work (or skipped with --skip-bad), and the output folder's resume repairs."""
import json
import re

import pytest

from imagegen.batch.jobs import JobSettings, plan, read_jobs
from imagegen.batch.output import Folder, read_entries
from imagegen.cli import main
from imagegen.errors import UserError
from imagegen.presets import find_preset
from imagegen.settings import Limits


@pytest.fixture
def preset(tiny_model_dir):
    return find_preset(str(tiny_model_dir))


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_ids_are_line_numbers_and_seeds_follow_them(tmp_path, preset):
    path = write(tmp_path / "jobs.jsonl", [
        '{"prompt": "a red circle"}',
        "",
        '{"prompt": "a blue square", "n": 2, "seed": 7}',
        '{"prompt": "a green star", "id": 40, "negative": "dark", "sampler": "ddim", "size": "64x32"}',
        '{"prompt": "a cross", "prior_seed": 3, "lora": [], "steps": 5, "guidance": 2}',
    ])
    jobs = read_jobs(path, JobSettings(), 100, preset).jobs
    assert [(j.id, j.line, j.seed, j.prior_seed, j.n) for j in jobs] == [
        (1, 1, 101, 101, 1), (3, 3, 7, 7, 2), (5, 5, 105, 3, 1), (40, 4, 140, 140, 1)]
    star = jobs[3]
    assert star.negative_prompt == "dark" and star.decoder.scheduler == "ddim"
    assert (star.decoder.width, star.decoder.height) == (64, 32)
    assert jobs[2].decoder.steps == 5 and jobs[2].decoder.guidance == 2.0 and isinstance(jobs[2].decoder.guidance, float)
    assert jobs[0].decoder == preset.decoder_defaults and jobs[0].prior == preset.prior_defaults


def test_txt_lines_take_the_command_line_settings(tmp_path, preset):
    path = write(tmp_path / "prompts.txt", ["a red circle", "   ", "a blue square  "])
    jobs = read_jobs(path, JobSettings(n=3, steps=6, negative_prompt="blurry"), 0, preset).jobs
    assert [(j.id, j.prompt, j.seed, j.n, j.decoder.steps, j.negative_prompt) for j in jobs] == [
        (1, "a red circle", 1, 3, 6, "blurry"), (3, "a blue square", 3, 3, 6, "blurry")]


def test_plan_keeps_whole_jobs_of_one_key_in_fixed_batches(tmp_path, preset):
    lines = [json.dumps({"prompt": f"shape {i}", "n": 1 + i % 3, **({"steps": 3} if i % 4 == 0 else {})})
             for i in range(20)]
    jobs = read_jobs(write(tmp_path / "jobs.jsonl", lines), JobSettings(), 0, preset).jobs
    batches = plan(jobs, 4, Limits.for_model(preset.decoder_defaults))
    assert sorted(j.id for b in batches for j in b.jobs) == [j.id for j in jobs]  # each job once
    for batch in batches:
        assert len({job.key() for job in batch.jobs}) == 1 and batch.images <= 4
        call = batch.call()
        assert len(call["prompt"]) == batch.images == len(call["seed"])
        first = batch.jobs[0]
        assert call["seed"][:first.n] == [first.seed + k for k in range(first.n)]  # a job's rows are consecutive
    assert [b.jobs[0].id for b in batches] == sorted(b.jobs[0].id for b in batches)
    assert plan(list(reversed(jobs)), 4, Limits.for_model(preset.decoder_defaults)) == batches  # order-free


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a red circle"', r"line 2: not valid JSON"),
    ('{"prompt": "a red circle", "stpes": 4}', r"line 2: unknown field 'stpes' \(did you mean 'steps'\?\)"),
    ('{"prompt": "a red circle", "steps": "ten"}', r"line 2: steps must be a whole number, got 'ten'"),
    ('{"prompt": "a red circle", "scheduler": "nope"}', r"line 2: unknown scheduler 'nope'"),
    ('{"prompt": ""}', r"line 2: no prompt"),
    ('{"prompt": "x", "id": 1}', r"line 2: job id 1 is already the id of line 1"),
    ('{"prompt": "x", "seed": -1}', r"line 2: seed must be a whole number from 0"),
    ('{"prompt": "x", "n": 0}', r"line 2: n must be a whole number >= 1"),
    ('{"prompt": "x", "lora": "no-such-adapter"}', r"line 2: unknown LoRA adapter 'no-such-adapter'"),
    ('["a red circle"]', r"line 2: a job line is a JSON object"),
])
def test_a_bad_line_stops_the_run_before_any_work(tmp_path, tiny_model_dir, capsys, line, message):
    path = write(tmp_path / "jobs.jsonl", ['{"prompt": "a blue square"}', line, '{"prompt": "a star"}'])
    out = tmp_path / "out"
    assert main(["batch", path, "--out", str(out), "--model", str(tiny_model_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert "--skip-bad" in err and not out.exists()


def test_several_bad_lines_are_named_together(tmp_path, preset):
    lines = ['{"prompt": "a"}', "{", '{"prompt": "b", "n": "2"}', '{"prompt": "c"}', '{"x": 1}', "[]", "7"]
    with pytest.raises(UserError, match=r"5 bad job lines in .*: line 2: .*; line 3: .*; line 5: .*; and 2 more"):
        read_jobs(write(tmp_path / "jobs.jsonl", lines), JobSettings(), 0, preset)
    kept = read_jobs(write(tmp_path / "jobs.jsonl", lines), JobSettings(), 0, preset, skip_bad=True)
    assert [j.id for j in kept.jobs] == [1, 4] and [b.line for b in kept.bad] == [2, 3, 5, 6, 7]


def test_start_removes_what_an_interrupted_run_left(tmp_path):
    folder = Folder(tmp_path, "png")
    folder.start({"plan": "p", "model": "m", "format": "png"}, [])
    (tmp_path / "manifest.jsonl").write_text('{"id": 1, "index": 0, "file": "000001-0.png"}\n{"id": 2, "ind')
    (tmp_path / "manifest.part-1.jsonl").write_text('{"id": 3, "index": 0, "file": "000003-0.png"}\n')
    for name in ("000001-0.png", "000002-0.png", "000003-0.png", ".partial-abc", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    folder.start({"plan": "p", "model": "m", "format": "png"}, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000001-0.png", "000003-0.png", "errors.jsonl", "manifest.jsonl", "notes.txt", "run.json"]
    assert [e["id"] for e in read_entries(tmp_path / "manifest.jsonl")] == [1, 3]
    assert (tmp_path / "manifest.jsonl").read_bytes().endswith(b"}\n")
    with pytest.raises(UserError, match="holds another batch run .*plan differ"):
        folder.start({"plan": "q", "model": "m", "format": "png"}, [])


def test_a_folder_of_other_images_is_not_taken_for_a_run(tmp_path):
    (tmp_path / "100000-7.png").write_bytes(b"someone's image")
    with pytest.raises(UserError, match="holds '100000-7.png' but no run.json"):
        Folder(tmp_path, "png").start({"plan": "p", "model": "m", "format": "png"}, [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["100000-7.png"]


def test_batch_help_imports_neither_torch_nor_ray():
    import subprocess
    import sys

    probe = ("import sys, contextlib, io\n"
             "from imagegen.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try: main(['batch', '--help'])\n"
             "    except SystemExit: pass\n"
             "print([m for m in ('torch', 'ray', 'accelerate', 'diffusers') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_ray_worker_resources_leave_a_cpu_to_ray_data():
    from imagegen.batch.ray_engine import worker_resources

    assert worker_resources(2, 0, None, 0, threads=1) == (1, 1.0)  # one free CPU for the read tasks
    assert worker_resources(2, 0, 2, 0, threads=1) == (2, 0.75)  # fractional: two would hold both CPUs
    assert worker_resources(64, 8, None, 1, threads=1) == (8, 1.0)
    assert worker_resources(64, 8, None, 2, threads=1) == (4, 1.0)
    with pytest.raises(UserError, match="more than the Ray cluster's 8 GPUs"):
        worker_resources(64, 8, 9, 1, threads=1)
    with pytest.raises(UserError, match="has 0 GPUs"):
        worker_resources(64, 0, None, 1, threads=1)


def test_default_threads_share_the_machine_between_the_processes_on_it(monkeypatch):
    import torch

    from imagegen.batch.run import default_threads

    assert default_threads("local") == torch.get_num_threads()  # as `imagegen generate` runs
    assert default_threads("ray") == 1  # a worker holds one of the cluster's CPUs
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_threads("accelerate") == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert default_threads("accelerate") == 1
