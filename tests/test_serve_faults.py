"""`imagegen serve` as a subprocess, with --api-auth and --api-key: authentication on every route, a few hundred
requests mixing valid ones with many kinds of malformed ones and clients that disconnect mid-job, and SIGTERM."""
import base64
import io
import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from test_serve_support import HOST, ProcessServer, tiny_preset

AUTH, KEY = ("alice", "s3cret:x"), "sk-test"
BODY_LIMIT = 65536
ROUNDS = 6  # x (28 malformed + 4 valid + 2 disconnecting) = 204 requests, after one of each
SDAPI_GETS = ["sd-models", "samplers", "schedulers", "loras", "options", "progress", "scripts"]
SDAPI_POSTS = ["txt2img", "options", "png-info", "interrogate", "interrupt", "refresh-loras"]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    preset = tiny_preset(tiny_model_dir, folder)
    with ProcessServer("--model", preset, "--api-auth", f"{AUTH[0]}:{AUTH[1]},bob:pw", "--api-key", KEY,
                       "--outputs", folder / "outputs", "--max-body-bytes", BODY_LIMIT, "--max-images", 8,
                       "--max-steps", 80, "--max-wait-ms", 20) as served:
        served.outputs = folder / "outputs"
        yield served


def post(server, path, auth=AUTH, headers=None, timeout=120, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.base}{path}", auth=auth, headers=headers, timeout=timeout, **kwargs)


def bearer(key=KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_every_route_needs_its_credentials(server):
    for route in SDAPI_GETS:
        for auth in (None, ("alice", "wrong"), ("mallory", "s3cret:x")):
            response = httpx.get(f"{server.base}/sdapi/v1/{route}", auth=auth)
            assert response.status_code == 401 and response.json()["error"] == "Unauthorized", route
        assert httpx.get(f"{server.base}/sdapi/v1/{route}", auth=AUTH).status_code == 200, route
        assert httpx.get(f"{server.base}/sdapi/v1/{route}", auth=("bob", "pw")).status_code == 200, route
    for route in SDAPI_POSTS:
        assert post(server, f"/sdapi/v1/{route}", auth=None, json={}).status_code == 401, route
    for method, path in (("GET", "/v1/models"), ("GET", "/v1/models/tiny"), ("POST", "/v1/images/generations")):
        for headers in ({}, bearer("sk-wrong"), {"Authorization": f"Basic {KEY}"}):
            response = httpx.request(method, f"{server.base}{path}", headers=headers, json={"prompt": "x"})
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", path
    assert httpx.get(f"{server.base}/v1/models", headers=bearer()).status_code == 200
    # The web UI: Gradio's login, with the same credentials.
    assert httpx.get(f"{server.base}/ui/config").status_code == 401
    assert post(server, "/ui/gradio_api/queue/join", auth=None, json={"data": [], "fn_index": 0}).status_code == 401
    with httpx.Client(base_url=server.base) as browser:
        assert browser.post("/ui/login", data={"username": "alice", "password": "wrong"}).status_code >= 400
        assert browser.post("/ui/login", data={"username": AUTH[0], "password": AUTH[1]}).status_code == 200
        assert browser.get("/ui/config").status_code == 200
    assert httpx.get(f"{server.base}/health").status_code == 200  # open: a load balancer asks it


def malformed(server) -> list[tuple[str, callable, int]]:
    """(kind, request, expected status): each a different way to be wrong."""
    sd, oa = "/sdapi/v1/txt2img", "/v1/images/generations"
    raw = {"headers": {"Content-Type": "application/json"}}

    def a1111(**body):
        return lambda: post(server, sd, json={"prompt": "a red circle", "steps": 2, **body})

    def openai(key=KEY, **body):
        return lambda: post(server, oa, auth=None, headers=bearer(key), json={"prompt": "a circle", **body})

    return [
        ("bad JSON", lambda: post(server, sd, content=b'{"prompt": "a', **raw), 400),
        ("not an object", lambda: post(server, sd, json=["a red circle"]), 400),
        ("steps of the wrong type", a1111(steps="many"), 400),
        ("negative steps", a1111(steps=-5), 400),
        ("too many steps", a1111(steps=81), 400),
        ("huge size", a1111(width=100000, height=100000), 400),
        ("size off the VAE grid", a1111(width=33), 400),
        ("unknown sampler", a1111(sampler_name="Euler z"), 400),
        ("unknown adapter", a1111(prompt="a heart <lora:nosuch:1>"), 400),
        ("path-like adapter", a1111(prompt="a heart <lora:../../etc/passwd:1>"), 400),
        ("absolute adapter", a1111(prompt="a heart <lora:/tmp/evil:1>"), 400),
        ("seed out of range", a1111(seed=2**33), 400),
        ("NaN guidance", lambda: post(server, sd, content=b'{"prompt": "x", "cfg_scale": NaN}', **raw), 400),
        ("control character", a1111(prompt="a red\u0000circle"), 400),
        ("too many images", a1111(batch_size=4, n_iter=3), 400),
        ("empty prompt", a1111(prompt="   "), 400),
        ("prompt not a text", a1111(prompt=12), 400),
        ("oversized body", lambda: post(server, sd, json={"prompt": "x" * (BODY_LIMIT + 10)}), 413),
        ("no credentials", lambda: post(server, sd, auth=None, json={"prompt": "x"}), 401),
        ("wrong credentials", lambda: post(server, sd, auth=("alice", "nope"), json={"prompt": "x"}), 401),
        ("no bearer key", lambda: post(server, oa, auth=None, json={"prompt": "x"}), 401),
        ("wrong bearer key", openai(key="sk-nope"), 401),
        ("n of 0", openai(n=0), 400),
        ("size not WxH", openai(size="large"), 400),
        ("unknown model", openai(model="dall-e-3"), 400),
        ("interrogate: not base64", lambda: post(server, "/sdapi/v1/interrogate", json={"image": "%%%"}), 400),
        ("png-info: not an image", lambda: post(server, "/sdapi/v1/png-info",
                                                json={"image": base64.b64encode(b"GIF89a nope").decode()}), 400),
        ("unsupported route", lambda: post(server, "/sdapi/v1/img2img", json={}), 404),
    ]


def valid(server) -> list[tuple[str, callable, int]]:
    def a1111(n):
        return lambda: post(server, "/sdapi/v1/txt2img", json={"prompt": "a red circle", "batch_size": n})

    def openai(n):
        return lambda: post(server, "/v1/images/generations", auth=None, headers=bearer(),
                            json={"prompt": "a blue square", "n": n, "response_format": "b64_json"})
    return [("a1111 x1", a1111(1), 1), ("a1111 x2", a1111(2), 2), ("openai x1", openai(1), 1),
            ("openai x2", openai(2), 2)]


def disconnect(server, after_s: float):
    """Send a valid request and hang up after `after_s` seconds, before the answer."""
    def run():
        body = json.dumps({"prompt": "a green star", "steps": 20, "prior_steps": 20}).encode()
        token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode())
        with socket.create_connection((HOST, server.port), timeout=30) as sock:
            sock.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Basic %s\r\nContent-Length: %d\r\n\r\n%s" % (token, len(body), body))
            time.sleep(after_s)
        return None
    return run


def drained_health(server, limit_s: float = 30.0) -> dict:
    """/health once the queue is empty, or after `limit_s`. A client that hung up last is noticed within the server's
    disconnect poll and its job dropped at the next step, so right after the last answer its job may still count."""
    deadline = time.monotonic() + limit_s
    while True:
        health = httpx.get(f"{server.base}/health").json()
        if health["queue"] == 0 or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


def test_malformed_requests_and_disconnects_harm_nothing(server):
    kinds = malformed(server)
    assert len(kinds) >= 20
    for kind, send, status in kinds:  # one of each first (warming caches up), then measure
        assert send().status_code == status, kind
    for kind, send, _ in valid(server):
        assert send().status_code == 200, kind
    rss_before = server.rss_kib()

    work = []
    for i in range(ROUNDS):
        work += [("bad", kind, send, status) for kind, send, status in kinds]
        work += [("valid", kind, send, count) for kind, send, count in valid(server)]
        work += [("gone", f"disconnect after {0.05 * i:.2f}s", disconnect(server, 0.05 * i), None)] * 2
    work = work[3::7] + [w for i, w in enumerate(work) if i % 7 != 3]  # interleave the kinds

    def do(item):
        group, kind, send, expected = item
        try:
            return group, kind, expected, send()
        except httpx.HTTPError as err:
            return group, kind, expected, err

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(do, work))
    assert len(outcomes) >= 200
    for group, kind, expected, response in outcomes:
        if group == "gone":
            continue
        assert isinstance(response, httpx.Response), (kind, response)
        if group == "bad":
            assert response.status_code == expected, (kind, response.status_code, response.text[:300])
            body = response.json()
            message = body["error"]["message"] if response.url.path.startswith("/v1/") else body["detail"]
            assert message and len(message.splitlines()) == 1, (kind, message)
        else:
            assert response.status_code == 200, (kind, response.text[:300])
            images = response.json().get("images") or [d["b64_json"] for d in response.json()["data"]]
            assert len(images) == expected, kind
            assert all(Image.open(io.BytesIO(base64.b64decode(b))).size == (32, 32) for b in images)
    health = drained_health(server)
    assert health["status"] == "ok" and health["queue"] == 0, health
    rss_after = server.rss_kib()
    assert rss_after <= 1.10 * rss_before, (rss_before, rss_after)
    print(f"\n{len(outcomes)} requests; RSS {rss_before} -> {rss_after} kB ({rss_after / rss_before - 1:+.1%}); "
          f"calls {health['calls']}, images {health['images']}, largest batch {health['largest_batch']}")


def test_sigterm_finishes_in_flight_jobs_and_exits_0(server):
    auth_header = {"Authorization": "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()}
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(post, server, "/sdapi/v1/txt2img",
                                json={"prompt": "a red circle", "steps": 40, "prior_steps": 40, "seed": 5})
        for _ in range(600):
            progress = httpx.get(f"{server.base}/sdapi/v1/progress", headers=auth_header).json()
            if progress["state"]["sampling_step"] > 0:
                break
            time.sleep(0.02)
        assert server.terminate() == 0, server.stderr[-2000:]
        response = in_flight.result()
    assert response.status_code == 200 and len(response.json()["images"]) == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.base}/health")
    saved = sorted(server.outputs.iterdir())
    assert saved and not [p for p in saved if p.name.startswith(".")]  # no partial files left behind
    numbers = [int(re.match(r"(\d{5})-\d+\.png$", p.name).group(1)) for p in saved]
    assert len(set(numbers)) == len(numbers)
    with Image.open(saved[-1]) as last:
        assert "Seed: 5" in last.text["parameters"] and json.loads(last.text["imagegen"])["seed"] == 5
