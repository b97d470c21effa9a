"""`imagegen serve` on the shipped `shapes` model with its web UI: the same pixels through the CLI, the Python API,
the AUTOMATIC1111 route and the OpenAI route; the Gradio UI through gradio_client and in a real browser (headless
Chromium driven by selenium); interrogation with the model's CLIP; adapters over HTTP; sd_parsers on our PNGs."""
import base64
import io
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from test_serve_support import HOST, ROOT, ThreadServer, options

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = ROOT / "samples" / "ui-generate.png"  # written when IMAGEGEN_UPDATE_SAMPLES=1
BROWSER_TIMEOUT_S = 240
pytestmark = [  # pandas 3 deprecations inside gradio's queue, not ours
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def served():
    with ThreadServer(options("shapes", no_ui=False)) as server:
        yield server


def pixels(image) -> np.ndarray:
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    return np.asarray(image.convert("RGB"))


def python_api(served, prompt: str, **call):
    """The Python API on the server's own pipeline, on its worker thread (the pipeline is not shared)."""
    run = served.server.batcher.run_exclusive(lambda pipe: pipe(prompt, progress=False, **call))
    return run.result(timeout=300)


def test_same_pixels_through_cli_python_a1111_and_openai(served, tmp_path, capsys):
    import openai
    import webuiapi

    from imagegen.cli import main

    prompt, seed = "a red circle", 11
    expected = pixels(python_api(served, prompt, seed=seed).images[0])

    assert main([prompt, "--seed", str(seed), "--out", str(tmp_path), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    a1111 = webuiapi.WebUIApi(host=HOST, port=served.port).txt2img(
        prompt=prompt, seed=seed, width=64, height=64, steps=25, cfg_scale=4, sampler_name="DPM++ 2M")
    client = openai.OpenAI(base_url=f"{served.base}/v1", api_key="unused", max_retries=0)
    oa = client.images.generate(model="shapes", prompt=prompt, size="64x64", response_format="b64_json",
                                extra_body={"seed": seed})
    assert a1111.info["seed"] == seed and a1111.image.size == (64, 64)
    for name, image in (("CLI", Image.open(cli["path"])), ("A1111", a1111.image),
                        ("OpenAI", base64.b64decode(oa.data[0].b64_json))):
        assert np.array_equal(pixels(image), expected), name

    from sd_parsers import ParserManager

    parsed = ParserManager().parse(a1111.image)
    assert parsed.generator.value == "AUTOMATIC1111" and parsed.full_prompt == prompt
    sampler = parsed.samplers[0]
    assert sampler.name == "DPM++ 2M" and sampler.parameters["seed"] == str(seed)
    assert sampler.parameters["steps"] == "25" and next(iter(parsed.models)).name == "shapes"


def test_interrogate_reads_a_rendered_shape(served):
    import webuiapi

    from imagegen.data import shapes

    api = webuiapi.WebUIApi(host=HOST, port=served.port)
    for shape, colour, background in (("square", "red", "blue"), ("star", "yellow", "black")):
        images, _, _ = shapes.generate(0, 1, fixed={"shape": shape, "colour": colour, "background": background,
                                                    "size": "large", "position": "in the center"})
        caption = api.interrogate(Image.fromarray(images[0])).info
        assert caption == f"a {colour} {shape} on a {background} background"


def test_an_adapter_by_name_over_http(served):
    response = httpx.post(f"{served.base}/sdapi/v1/txt2img", timeout=300, json={
        "prompt": "a red heart <lora:heart:1>", "seed": 3, "steps": 10, "prior_steps": 10, "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert infotext.startswith("a red heart <lora:heart:1>") and "Lora hashes: \"heart: " in infotext


def test_gradio_client_generates(served):
    from gradio_client import Client, handle_file

    client = Client(f"{served.base}/ui/", verbose=False, analytics_enabled=False)
    gallery, infotext, status = client.predict(prompt="a blue square", seed=7, steps=6, prior_steps=6,
                                               api_name="/generate")
    assert len(gallery) == 1 and status.startswith("1 image, seed 7")
    with Image.open(gallery[0]["image"]) as image:
        assert image.size == (64, 64) and "Seed: 7" in image.text["parameters"]
    assert infotext.startswith("a blue square\nSteps: 6,")
    labels = client.predict(image=handle_file(gallery[0]["image"]), labels="blue square, red circle",
                            api_name="/classify")
    assert {c["label"] for c in labels["confidences"]} == {"blue square", "red circle"}
    parameters, record = client.predict(handle_file(gallery[0]["image"]), api_name="/png_info")
    assert parameters == infotext and record["seed"] == 7 and record["decoder"]["steps"] == 6


@pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_browser_generates_an_image_with_its_infotext(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    settings = webdriver.ChromeOptions()
    settings.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1200",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-default-apps", "--disable-extensions"):
        settings.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=settings)
    try:
        wait = WebDriverWait(driver, BROWSER_TIMEOUT_S)
        driver.get(f"{served.base}/ui/")
        prompt = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#prompt textarea")))
        prompt.send_keys("a red circle")
        seed = driver.find_element(By.CSS_SELECTOR, "#seed input")
        seed.send_keys(Keys.CONTROL, "a")
        seed.send_keys("3", Keys.TAB)
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        image = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "#gallery img")))
        infotext = driver.find_element(By.CSS_SELECTOR, "#infotext textarea")
        wait.until(lambda _: "Seed: 3" in infotext.get_attribute("value"))
        assert infotext.get_attribute("value").startswith("a red circle\nSteps: 25,")
        shown = httpx.get(image.get_attribute("src")).content
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(tmp_path / "ui.png"))
    finally:
        driver.quit()
    expected = python_api(served, "a red circle", seed=3).images[0]
    assert np.array_equal(pixels(shown), pixels(expected))  # the very image the API makes for those settings
    if os.environ.get("IMAGEGEN_UPDATE_SAMPLES") == "1":
        shutil.copy(tmp_path / "ui.png", SCREENSHOT)
    assert Image.open(tmp_path / "ui.png").size[0] > 0
    assert Path(tmp_path / "ui.png").stat().st_size > 10_000
