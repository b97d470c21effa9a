"""`imagegen serve` with real, unmodified clients (webuiapi, openai, httpx) against a real server on 127.0.0.1,
on the tiny random model: the AUTOMATIC1111 and OpenAI routes, batching, per-request interrupt and disconnects,
adapters by name only, and records that make the served image again."""
import base64
import io
import json
import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from test_serve_support import HOST, ThreadServer, options, tiny_preset

CAPTION = re.compile(r"a (\w+) (\w+) on a (\w+) background")
PATH_LIKE = ["../heart", "lora_adapters/heart", "..\\heart", "/etc/passwd", "C:heart", "heart.safetensors", "~/x"]


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    preset = tiny_preset(tiny_model_dir, tmp_path_factory.mktemp("presets"))
    with ThreadServer(options(preset)) as server:
        yield server


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def txt2img(served, **body) -> httpx.Response:
    return httpx.post(f"{served.base}/sdapi/v1/txt2img", json={"prompt": "a red circle", **body}, timeout=120)


def gate(served):
    """Hold the worker with a task until the returned event is set: requests queue up meanwhile."""
    release, holding = threading.Event(), threading.Event()
    served.server.batcher.run_exclusive(lambda pipe: (holding.set(), release.wait(60)))
    assert holding.wait(60)
    return release


def queued(served, jobs: int) -> None:
    for _ in range(600):
        if served.server.batcher.pending_jobs() >= jobs:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"{jobs} jobs never queued")


def test_webuiapi_client(served):
    import webuiapi

    api = webuiapi.WebUIApi(host=HOST, port=served.port)
    result = api.txt2img(prompt="a red circle", negative_prompt="blue", seed=5, width=32, height=32, steps=3,
                         cfg_scale=4, sampler_name="Euler a", batch_size=2, n_iter=2)
    assert len(result.images) == 4 and result.image.size == (32, 32)
    assert result.info["seed"] == 5 and result.info["all_seeds"] == [5, 6, 7, 8]
    assert result.info["sampler_name"] == "Euler a" and result.info["steps"] == 3 and result.info["width"] == 32
    assert result.info["sd_model_name"] == "tiny" and result.info["all_prompts"] == ["a red circle"] * 4
    assert "Seed: 6" in result.info["infotexts"][1] and result.info["prior_seed"] == 5
    assert result.image.info["parameters"] == result.info["infotexts"][0]  # the PNG carries its infotext

    assert "tiny" in [m["title"] for m in api.get_sd_models()]
    assert {"DPM++ 2M", "Euler a", "Euler", "DDIM", "UniPC"} <= {s["name"] for s in api.get_samplers()}
    assert "automatic" in [s["name"] for s in api.get_schedulers()]
    assert {"heart", "outline"} <= {lora["name"] for lora in api.get_loras()}
    assert api.get_options()["sd_model_checkpoint"] == "tiny"
    assert set(api.get_progress()["state"]) >= {"job_count", "sampling_step", "sampling_steps"}

    info = api.png_info(result.image)
    assert info.info.startswith("a red circle\nNegative prompt: blue\n")
    assert info.parameters["Seed"] == "5" and info.parameters["Size-1"] == "32" and info.parameters["Prompt"] == \
        "a red circle"
    assert json.loads(info.json["items"]["imagegen"])["seed"] == 5
    assert CAPTION.fullmatch(api.interrogate(result.image).info)  # random CLIP: the form, not the words

    refused = httpx.post(f"{served.base}/sdapi/v1/options", json={"sd_model_checkpoint": "no-such-model"})
    assert refused.status_code == 400 and "available: " in refused.json()["detail"]
    api.set_options({"sd_model_checkpoint": "tiny"})  # the loaded one: nothing to do


def test_a1111_defaults_extra_fields_and_errors(served):
    response = txt2img(served, seed=9, prior_steps=3, prior_cfg_scale=2.5, prior_seed=100, some_extension={"x": 1})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert (info["width"], info["steps"], info["prior_steps"], info["prior_cfg_scale"]) == (32, 4, 3, 2.5)
    assert info["prior_seed"] == 100 and info["seed"] == 9
    for body, field in (({"steps": -1}, "steps"), ({"steps": "many"}, "steps"), ({"width": 33}, "width"),
                        ({"width": 100000}, "width"), ({"sampler_name": "Nope"}, "sampler_name"),
                        ({"seed": 2**40}, "seed"), ({"batch_size": 99}, "batch_size"), ({"prompt": ""}, "prompt"),
                        ({"cfg_scale": 1e9}, "cfg_scale"), ({"scheduler": "sideways"}, "scheduler"),
                        ({"enable_hr": True}, "enable_hr")):
        bad = txt2img(served, **body)
        assert bad.status_code == 400, (body, bad.text)
        assert bad.json()["field"] == field and field in bad.json()["detail"], bad.json()
    assert "DPM++ 2M" in txt2img(served, sampler_name="Nope").json()["detail"]  # the accepted names are listed
    for path in ("/sdapi/v1/img2img", "/sdapi/v1/extra-single-image", "/nothing/here"):
        missing = httpx.post(f"{served.base}{path}", json={})
        assert missing.status_code == 404 and "not supported" in missing.json()["detail"]


def test_openai_client(served):
    import openai

    client = openai.OpenAI(base_url=f"{served.base}/v1", api_key="unused", max_retries=0)
    images = client.images.generate(model="tiny", prompt="a blue square", n=2, size="32x32",
                                    response_format="b64_json", extra_body={"seed": 7})
    assert len(images.data) == 2 and images.data[0].revised_prompt == "a blue square"
    decoded = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in images.data]
    assert [im.size for im in decoded] == [(32, 32)] * 2 and "Seed: 8" in decoded[1].info["parameters"]

    by_url = client.images.generate(model="tiny", prompt="a blue square", n=2, size="32x32", extra_body={"seed": 7})
    fetched = httpx.get(by_url.data[0].url)
    assert fetched.status_code == 200 and np.array_equal(pixels(fetched.content),
                                                         pixels(base64.b64decode(images.data[0].b64_json)))
    for kwargs, param in (({"size": "4096x4096"}, "size"), ({"n": 99}, "n"), ({"size": "big"}, "size"),
                          ({"model": "dall-e-3"}, "model"), ({"response_format": "gif"}, "response_format"),
                          ({"extra_body": {"steps": 0}}, "steps")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.generate(**{"model": "tiny", "prompt": "x", "size": "32x32", **kwargs})
        assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body
    assert [m.id for m in client.models.list()] == ["tiny"]
    gone = httpx.post(f"{served.base}/v1/images/edits", json={})
    assert gone.status_code == 404 and "not supported" in gone.json()["error"]["message"]


def test_concurrent_requests_share_one_call_and_keep_their_pixels(served):
    stats = served.server.batcher.stats
    prompts = ["a red circle", "a blue square", "a green star", "a red circle", "a white cross", "a black star"]
    release = gate(served)
    calls, images = stats.calls, stats.images
    with ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(txt2img, served, prompt=p, seed=40 + i, batch_size=1 + i % 2)
                   for i, p in enumerate(prompts)]
        queued(served, len(prompts))
        release.set()
        together = [f.result() for f in futures]
    assert all(r.status_code == 200 for r in together)
    assert stats.calls == calls + 2 and stats.images == images + 9  # 9 images: one call of 8, one of 1
    for i, (prompt, response) in enumerate(zip(prompts, together)):
        alone = txt2img(served, prompt=prompt, seed=40 + i, batch_size=1 + i % 2)
        for shared, solo in zip(response.json()["images"], alone.json()["images"]):
            difference = np.abs(pixels(base64.b64decode(shared)) - pixels(base64.b64decode(solo))).max()
            assert difference <= 1, (prompt, difference)  # its own seeds: <= 1/255 whoever shared the call
        info = json.loads(response.json()["info"])
        assert info["all_seeds"] == [40 + i + k for k in range(1 + i % 2)]

    release = gate(served)  # settings that differ do not share a call
    calls = stats.calls
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(txt2img, served, seed=i, steps=3 + i % 2) for i in range(4)]
        queued(served, 4)
        release.set()
        assert all(f.result().status_code == 200 for f in futures)
    assert stats.calls == calls + 2


def test_interrupt_is_per_request(served):
    import openai

    client = openai.OpenAI(base_url=f"{served.base}/v1", api_key="unused", max_retries=0)
    slow = dict(steps=60, prior_steps=60, seed=1)
    release = gate(served)
    with ThreadPoolExecutor(2) as pool:
        stopped = pool.submit(txt2img, served, **slow)
        kept = pool.submit(client.images.generate, model="tiny", prompt="a red circle", response_format="b64_json",
                           extra_body={"steps": 60, "prior_steps": 60, "seed": 2})
        queued(served, 2)
        release.set()
        for _ in range(600):  # until the shared call has started
            if httpx.get(f"{served.base}/sdapi/v1/progress").json()["state"]["sampling_step"] > 0:
                break
            threading.Event().wait(0.02)
        assert httpx.post(f"{served.base}/sdapi/v1/interrupt").status_code == 200
        interrupted = stopped.result()
        assert interrupted.status_code == 200 and interrupted.json()["images"] == []
        assert json.loads(interrupted.json()["info"])["interrupted"] is True
        assert len(kept.result().data) == 1  # its companion in the call was not interrupted


def test_a_client_that_disconnects_affects_nobody(served):
    stats = served.server.batcher.stats
    release = gate(served)
    images = stats.images
    body = json.dumps({"prompt": "a red circle", "seed": 3, "batch_size": 4}).encode()
    raw = socket.create_connection((HOST, served.port))
    raw.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    queued(served, 1)
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(txt2img, served, seed=4)
        queued(served, 2)
        raw.close()
        for _ in range(200):  # the server notices within a poll and drops the job
            if served.server.batcher.pending_jobs() == 1:
                break
            threading.Event().wait(0.05)
        release.set()
        assert other.result().status_code == 200
    assert stats.images == images + 1  # the 4 images nobody waits for were never made
    assert httpx.get(f"{served.base}/health").json()["status"] == "ok"


def test_adapters_by_name_only(served):
    import openai

    client = openai.OpenAI(base_url=f"{served.base}/v1", api_key="unused", max_retries=0)
    for name in PATH_LIKE + ["no-such-adapter"]:
        response = txt2img(served, prompt=f"a red heart <lora:{name}:0.8>")
        assert response.status_code == 400 and response.json()["field"] == "prompt", (name, response.text)
        detail = response.json()["detail"]
        assert ("available: " in detail and "heart" in detail) or name.startswith("C:"), detail  # C: reads as a spec
        with pytest.raises(openai.BadRequestError):
            client.images.generate(model="tiny", prompt=f"a heart <lora:{name}:1>", size="32x32")
    bad_weight = txt2img(served, prompt="a heart <lora:heart:lots>")
    assert bad_weight.status_code == 400 and "not a finite number" in bad_weight.json()["detail"]


def test_served_record_makes_the_image_again(served, tmp_path, capsys):
    from imagegen.cli import main

    response = txt2img(served, seed=21, batch_size=2, negative_prompt="dark")
    second = base64.b64decode(response.json()["images"][1])
    (tmp_path / "served.png").write_bytes(second)
    assert main(["--from-png", str(tmp_path / "served.png"), "--out", str(tmp_path / "out"), "--json"]) == 0
    remade = json.loads(capsys.readouterr().out)
    assert remade["seed"] == 22 and remade["batch_index"] == 1
    assert np.array_equal(pixels(open(remade["path"], "rb").read()), pixels(second))


def test_switching_models(served):
    switched = httpx.post(f"{served.base}/sdapi/v1/options", json={"sd_model_checkpoint": "shapes"}, timeout=300)
    assert switched.status_code == 200, switched.text
    try:
        info = json.loads(txt2img(served, steps=2, prior_steps=2, width=64, height=64).json()["info"])
        assert info["sd_model_name"] == "shapes"
        assert httpx.get(f"{served.base}/sdapi/v1/options").json()["sd_model_checkpoint"] == "shapes"
    finally:
        back = httpx.post(f"{served.base}/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}, timeout=300)
    assert back.status_code == 200 and json.loads(txt2img(served).json()["info"])["sd_model_name"] == "tiny"


def test_help_imports_neither_the_server_nor_torch():
    import subprocess
    import sys

    probe = ("import sys, contextlib, io\n"
             "from imagegen.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    for argv in (['--help'], ['serve', '--help']):\n"
             "        try: main(argv)\n"
             "        except SystemExit: pass\n"
             "print([m for m in ('torch', 'fastapi', 'gradio', 'uvicorn', 'starlette') if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_bad_options_are_one_line_errors(capsys):
    from imagegen.cli import main
    from imagegen.serve.options import ServeOptions

    assert ServeOptions(api_auth="alice:s3cret, bob:pa:ss").credentials() == [("alice", "s3cret"), ("bob", "pa:ss")]
    for argv, message in ((["--api-auth", "alice"], "should be USER:PASS"), (["--max-batch", "0"], "--max-batch"),
                          (["--port", "70000"], "--port"), (["--max-wait-ms", "-1"], "--max-wait-ms"),
                          (["--api-key", " "], "--api-key")):
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
