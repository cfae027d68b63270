"""The web page's time from clicking generate to the images, against `generate` itself.

    python bench/app.py                          # the book's network at 64x64, 4 images
    python bench/app.py --model RUN/model.keras --screenshot docs/web_page.png

Starts the page's server in this process on a free loopback port, opens it in headless
Chromium (Selenium), and alternately (median of `--repeats`, after a warm-up each) times
`model.generate(N, seed)` in this process, and a click on the page's generate button
until its N images are shown (the page's own clock: `data-seconds` of the result, so
that Selenium's polling is not counted). Prints both and their ratio. With `--screenshot`, saves
the page after an inpainting run. Run by hand, never by CI.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model file (default: the book's network, untrained)")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--screenshot", help="save a PNG of the page here")
    parser.add_argument("--verbose", action="store_true",
                        help="print each run's sampling time beside the page's")  # fmt: skip
    args = parser.parse_args()
    from quality import package_first

    package_first()
    import numpy as np
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    from diffusion_keras import DiffusionModel, load_model
    from diffusion_keras.app.server import PageServer
    from diffusion_keras.config.sampling import SAMPLING_RECIPES

    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}; precision {args.precision}")
    if args.model:
        model = load_model(args.model, compile=False, precision=args.precision)
    else:
        model = DiffusionModel(image_size=64, seed=0, precision=args.precision)
        model.adapt(np.random.default_rng(0).uniform(size=(16, 64, 64, 3)))
    server = PageServer(model, port=0).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1100,1000"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    browser.get(server.url)
    WebDriverWait(browser, 60).until(
        lambda b: "default sampling" in b.find_element("id", "model").text)
    field = browser.find_element("id", "num_images")
    field.clear()
    field.send_keys(str(args.num_images))
    settings = dict(SAMPLING_RECIPES["default"])

    def direct():
        model.generate(args.num_images, seed=0, **settings)

    def page():
        """The page's own time from the click to the images (`data-seconds`),
        so that Selenium's polling is not counted; Selenium looks rarely."""
        before = len(browser.find_elements("css selector", ".result"))
        browser.find_element("id", "generate").click()
        WebDriverWait(browser, 600, poll_frequency=0.5).until(
            lambda b: len(b.find_elements("css selector", ".result")) > before)
        newest = browser.find_elements("css selector", ".result")[0]
        if args.verbose:
            print(newest.find_element("css selector", ".settings").text.rsplit("(", 1)[1])
        return float(newest.get_attribute("data-seconds"))

    times = {"generate": [], "page": []}
    direct(), page()  # warm-up: traces and compiles
    for _ in range(args.repeats):
        begin = time.perf_counter()
        direct()
        times["generate"].append(time.perf_counter() - begin)
        times["page"].append(page())
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"{name:9s} {seconds:.3f} s for {args.num_images} images at "
              f"{model.image_size}x{model.image_size} (median of {args.repeats})")  # fmt: skip
    print(f"page / generate: {medians['page'] / medians['generate']:.3f}x")
    if args.screenshot:
        picture = os.path.join(tempfile.mkdtemp(), "picture.png")
        images = model.generate(1, seed=3, **settings)
        Image.fromarray((np.clip(images[0], 0, 1) * 255).round().astype("uint8")).save(picture)
        browser.find_element("css selector", "input[name=mode][value=inpaint]").click()
        browser.find_element("id", "init_image").send_keys(picture)
        WebDriverWait(browser, 30).until(lambda b: b.find_element("id", "editor").is_displayed())
        mask = browser.find_element("id", "mask")
        ActionChains(browser).move_to_element_with_offset(mask, -70, 60).click_and_hold() \
            .move_by_offset(60, -20).move_by_offset(60, 20).release().perform()  # fmt: skip
        page()
        browser.save_screenshot(args.screenshot)
        print(f"wrote {args.screenshot}")
    browser.quit()
    server.shutdown()


if __name__ == "__main__":
    main()
