"""The web page: `python -m diffusion_keras.app MODEL` serves generation and editing.

The requests are checked into one-line errors; generation runs on one worker thread in
order, and a second request waits in the queue while the page shows progress (long
polling: a status request waits for the job to move on). In a real
browser (headless Chromium driven by Selenium; skipped, saying why, where none is
installed), a fixed seed shows generate.py's pixels, a mask drawn with the mouse reaches
the inpainting call, and an upload that is not an image gives one line, not a trace.
"""

import base64
import importlib.util
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_script

FIXTURES = os.path.join(ROOT, "tests", "fixtures")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
NO_BROWSER = (
    "no headless browser: install Chromium and its driver (apt install chromium "
    "chromium-driver) and Selenium (pip install -e .[dev])"
)


@pytest.fixture(scope="module")
def model():
    import diffusion_keras as dk

    return dk.load_model(os.path.join(FIXTURES, "pixel.keras"), precision="float32")


@pytest.fixture(scope="module")
def server(model):
    from diffusion_keras.app.server import PageServer

    page = PageServer(model, port=0).start()  # a free loopback port
    yield page
    page.shutdown()
    page.server_close()


def post(server, fields):
    request = urllib.request.Request(server.url + "api/jobs", data=json.dumps(fields).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_for(server, job_id, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"{server.url}api/jobs/{job_id}") as answer:
            status = json.loads(answer.read())
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def decode(url):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def generate_py_pngs(tmp_path, *flags):
    folder = tmp_path / "written"
    done = run_script("generate.py", os.path.join(FIXTURES, "pixel.keras"), "--output-dir",
                      folder, "--output", tmp_path / "grid.png", "--precision", "float32",
                      *flags)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return np.stack([np.asarray(Image.open(folder / n).convert("RGB"))
                     for n in sorted(os.listdir(folder))])  # fmt: skip


def test_the_api_generates_generate_pys_pixels(server, tmp_path):
    status, reply = post(server, {"seed": 12, "num_images": 3})
    assert status == 202
    job = wait_for(server, reply["id"])
    assert job["state"] == "done" and job["settings"]["sampler"] == "dpmpp_2m"
    served = np.stack([decode(url) for url in job["images"]])
    np.testing.assert_array_equal(served, generate_py_pngs(tmp_path, "--seed", 12,
                                                           "--num-images", 3))  # fmt: skip


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"seed": "x"}, "seed must be a whole number, got 'x'"),
        ({"num_images": 0}, "number of images must be between 1 and 64, got 0"),
        ({"mode": "paint"}, "mode must be one of generate, image-to-image, inpaint"),
        ({"class_label": "red"}, "this model is not class-conditional; it takes no class"),
        ({"mode": "image-to-image"}, "the image to edit: expected an uploaded file"),
        ({"sampler": "euler"}, "sampler must be one of ddim, dpmpp_2m, heun, got 'euler'"),
    ],
)  # fmt: skip
def test_bad_requests_get_one_line(server, fields, message):
    status, reply = post(server, fields)
    assert status == 400 and reply["error"].startswith(message)
    assert "\n" not in reply["error"]


def test_an_upload_that_is_not_an_image_fails_the_job_in_one_line(server):
    text = "data:text/plain;base64," + base64.b64encode(b"not a picture").decode()
    status, reply = post(server, {"mode": "image-to-image", "init_image": text})
    assert status == 202
    job = wait_for(server, reply["id"])
    assert job["state"] == "failed"
    assert job["error"].startswith("the uploaded file is not an image this page can read")


def test_a_second_request_waits_in_the_queue_and_progress_is_reported(model, monkeypatch):
    from diffusion_keras.app import jobs

    release = threading.Event()
    real = jobs.run_request

    def held(model, request, report=None):
        if request.seed == 1:  # the first job holds the worker until told
            report(3, 10)
            release.wait(60)
        return real(model, request, report)

    monkeypatch.setattr(jobs, "run_request", held)
    work = jobs.Jobs(model)
    first = work.submit(jobs.Request(seed=1, num_images=1))
    second = work.submit(jobs.Request(seed=2, num_images=1))
    deadline = time.time() + 60
    while work.status(first)["state"] != "running" and time.time() < deadline:
        time.sleep(0.01)
    assert work.status(first)["done"] == 3 and work.status(first)["total"] == 10
    assert work.status(second)["state"] == "queued" and work.status(second)["place"] == 1
    # Long polling: asked for news after the version it has, a caller waits...
    seen = work.status(second)["version"]
    begin = time.time()
    assert work.status(second, after=seen, timeout=0.3)["version"] == seen
    assert time.time() - begin >= 0.25
    release.set()
    # ...and hears at once when the job moves on.
    assert work.status(second, after=seen, timeout=60)["version"] > seen
    while work.status(second)["state"] != "done" and time.time() < deadline:
        time.sleep(0.01)
    assert work.status(first)["state"] == "done" and work.status(second)["state"] == "done"
    assert work.status(second)["total"] == 10  # the default sampler's 10 steps, reported


# -- in a real browser ----------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER and importlib.util.find_spec("selenium")):
        pytest.skip(NO_BROWSER)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1200,1600"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    yield driver
    driver.quit()


def open_page(browser, server):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    WebDriverWait(browser, 30).until(
        lambda b: "default sampling" in b.find_element("id", "model").text)


def set_value(browser, element_id, value):
    field = browser.find_element("id", element_id)
    field.clear()
    field.send_keys(str(value))


def click_generate_and_wait(browser, results_before):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element("id", "generate").click()
    WebDriverWait(browser, 300).until(
        lambda b: len(b.find_elements("css selector", ".result")) > results_before
        or b.find_element("id", "error").text)  # fmt: skip
    assert not browser.find_element("id", "error").text
    newest = browser.find_elements("css selector", ".result")[0]
    images = [decode(img.get_attribute("src"))
              for img in newest.find_elements("css selector", "img.generated")]  # fmt: skip
    settings = json.loads(newest.find_element("css selector", ".settings").text.rsplit(" (", 1)[0])
    assert float(newest.get_attribute("data-seconds")) > 0
    return np.stack(images), settings


@pytest.mark.slow
def test_in_a_browser_a_fixed_seed_shows_generate_pys_pixels(browser, server, tmp_path):
    open_page(browser, server)
    set_value(browser, "seed", 7)
    set_value(browser, "num_images", 2)
    shown, settings = click_generate_and_wait(browser, 0)
    assert settings["seed"] == 7
    np.testing.assert_array_equal(shown, generate_py_pngs(tmp_path, "--seed", 7,
                                                          "--num-images", 2))  # fmt: skip
    assert browser.find_element("id", "status").text == "done"


@pytest.mark.slow
def test_in_a_browser_a_drawn_mask_reaches_the_inpainting_call(browser, server, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    picture = np.zeros((16, 16, 3), np.uint8)
    picture[..., 1] = np.linspace(40, 220, 16, dtype=np.uint8)[:, None]
    path = tmp_path / "picture.png"
    Image.fromarray(picture).save(path)
    open_page(browser, server)
    browser.find_element("css selector", "input[name=mode][value=inpaint]").click()
    browser.find_element("id", "init_image").send_keys(str(path))
    WebDriverWait(browser, 30).until(lambda b: b.find_element("id", "editor").is_displayed())
    mask = browser.find_element("id", "mask")
    # A stroke across the upper left quarter (offsets from the canvas's centre).
    ActionChains(browser).move_to_element_with_offset(mask, -70, -70).click_and_hold() \
        .move_by_offset(50, 0).release().perform()  # fmt: skip
    set_value(browser, "num_images", 1)
    shown, settings = click_generate_and_wait(browser, 0)
    assert settings["mode"] == "inpaint" and 0 < settings["masked_fraction"] < 0.5
    assert settings["sampler"] == "ddim" and settings["eta"] == 1.0  # the inpaint recipe
    changed = np.any(shown[0] != picture, axis=-1)
    assert changed[:8, :8].any()  # the drawn quarter was regenerated...
    np.testing.assert_array_equal(shown[0][8:], picture[8:])  # ...the rest kept exactly


@pytest.mark.slow
def test_in_a_browser_a_bad_upload_shows_one_line(browser, server, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    path = tmp_path / "notes.txt"
    path.write_text("this is not a picture\n")
    open_page(browser, server)
    browser.find_element("css selector", "input[name=mode][value=image-to-image]").click()
    browser.find_element("id", "init_image").send_keys(str(path))
    time.sleep(0.5)  # the file reader's load
    browser.find_element("id", "generate").click()
    WebDriverWait(browser, 60).until(lambda b: b.find_element("id", "error").text)
    error = browser.find_element("id", "error").text
    assert error.startswith("the uploaded file is not an image this page can read")
    assert "\n" not in error and "Traceback" not in browser.page_source
