"""The web page's work: requests checked and turned into `generate`/`edit` calls, run one
at a time on a worker thread, off the request threads.

A request is a dict of the page's fields (`Request.from_fields` checks them, one line
per mistake). `Jobs.submit` queues it and returns a job id at once; the worker runs
the jobs in order, reporting each diffusion step, and `Jobs.status` says where a job
is: queued (with its place), running (steps done of total), done (the PNGs and the
settings) or failed (one line). Sampling settings are `generate.py`'s, by its own rules
(`cli.generate.sampling_arguments`), so a seed gives the page the pixels that
`generate.py --seed` writes.
"""

import argparse
import base64
import binascii
import dataclasses
import io
import itertools
import os
import queue
import tempfile
import threading
import time

import numpy as np

from diffusion_keras.cli.generate import PROMPT_GUIDANCE, sampling_arguments, trained_steps
from diffusion_keras.config.choices import SAMPLERS
from diffusion_keras.editing.files import load_edit_images, load_masks
from diffusion_keras.utils.images import to_uint8

MODES = ("generate", "image-to-image", "inpaint")
MAX_IMAGES = 64
MAX_STEPS = 1000
MAX_UPLOAD = 20 * 1024 * 1024  # bytes of one decoded upload
KEEP = 100  # finished jobs kept for the page to read


def png_data_url(image):
    """A uint8 `(h, w, c)` image as a `data:image/png;base64,...` URL."""
    from PIL import Image

    buffer = io.BytesIO()
    pixels = image[..., 0] if image.shape[-1] == 1 else image
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def data_url_bytes(url, what):
    """The bytes of a `data:...;base64,` URL (what the page uploads)."""
    if not isinstance(url, str) or ";base64," not in url:
        raise ValueError(f"{what}: expected an uploaded file")
    try:
        data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: the upload is not valid base64") from None
    if len(data) > MAX_UPLOAD:
        raise ValueError(f"{what}: larger than {MAX_UPLOAD // 2**20} MB")
    return data


@dataclasses.dataclass
class Request:
    """One press of the page's generate button, checked."""

    mode: str = "generate"
    seed: int = 0
    num_images: int = 4
    steps: int | None = None
    sampler: str | None = None
    class_label: str | None = None
    guidance_scale: float | None = None
    prompt: str | None = None
    strength: float | None = None
    init_image: bytes | None = None
    mask: bytes | None = None

    @classmethod
    def from_fields(cls, fields, model):
        """Checks the page's fields against `model`; a `ValueError` of one line
        names the first bad one."""
        if not isinstance(fields, dict):
            raise ValueError("the request must be a JSON object")
        mode = fields.get("mode", "generate")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        request = cls(mode=mode)
        request.seed = _integer(fields.get("seed", 0), "seed", -(2**63), 2**63 - 1)
        request.num_images = _integer(fields.get("num_images", 4), "number of images", 1,
                                      MAX_IMAGES)  # fmt: skip
        if fields.get("steps") not in (None, ""):
            request.steps = _integer(fields["steps"], "steps", 1, MAX_STEPS)
        sampler = fields.get("sampler") or None
        if sampler is not None and sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        request.sampler = sampler
        if fields.get("class_label") not in (None, ""):
            if not model.num_classes:
                raise ValueError("this model is not class-conditional; it takes no class")
            request.class_label = str(fields["class_label"])
            model.class_index(request.class_label)  # a clear error for an unknown class
        if fields.get("prompt") not in (None, ""):
            if model.text_encoder is None:
                raise ValueError("this model takes no prompt (train.py --captions makes one)")
            request.prompt = str(fields["prompt"])
        if fields.get("guidance_scale") not in (None, ""):
            request.guidance_scale = _number(fields["guidance_scale"], "guidance scale", 0.0,
                                             100.0)  # fmt: skip
        if mode != "generate":
            request.init_image = data_url_bytes(fields.get("init_image"), "the image to edit")
        if mode == "image-to-image":
            request.strength = _number(fields.get("strength", 0.6), "strength", 0.0, 1.0)
            if request.strength == 0.0:
                raise ValueError("strength must be above 0")
        if mode == "inpaint":
            request.mask = data_url_bytes(fields.get("mask"), "the mask")
        return request

    def settings(self, model):
        """`generate`'s sampling settings for this request, by `generate.py`'s rules."""
        flags = argparse.Namespace(
            recipe=None, mask=True if self.mode == "inpaint" else None, sampler=self.sampler,
            steps=self.steps, spacing=None, eta=None, interpolate=False, show_steps=None,
            init_image=True if self.mode != "generate" else None,
        )  # fmt: skip
        student = model.sampling_defaults() if getattr(model, "student_steps", 0) else None
        return sampling_arguments(flags, student, trained_steps(model))

    def guidance(self):
        """`--guidance-scale`'s default, as `generate.py` has it."""
        if self.guidance_scale is not None:
            return self.guidance_scale
        return PROMPT_GUIDANCE if self.prompt is not None else 1.0


def _integer(value, what, low, high):
    try:
        number = int(value)
        if isinstance(value, float) and number != value:
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {number}")
    return number


def _number(value, what, low, high):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not (np.isfinite(number) and low <= number <= high):
        raise ValueError(f"{what} must be between {low:g} and {high:g}, got {value!r}")
    return number


def run_request(model, request, report=None):
    """`(uint8 images, settings shown)` for a checked request; `report(done,
    total)` after each diffusion step."""
    settings = request.settings(model)
    common = dict(**settings, seed=request.seed, progress=report or False,
                  guidance_scale=request.guidance())  # fmt: skip
    if request.class_label is not None:
        common["class_labels"] = request.class_label
    if request.prompt is not None:
        common["prompts"] = request.prompt
    shown = dict(mode=request.mode, seed=request.seed, num_images=request.num_images,
                 **settings, guidance_scale=request.guidance())  # fmt: skip
    if request.class_label is not None:
        shown["class"] = request.class_label
    if request.prompt is not None:
        shown["prompt"] = request.prompt
    if request.mode == "generate":
        return to_uint8(model.generate(request.num_images, **common)), shown
    with tempfile.TemporaryDirectory() as folder:
        image_path = os.path.join(folder, "image")
        with open(image_path, "wb") as handle:
            handle.write(request.init_image)
        try:
            images, sizes = load_edit_images([image_path], model.image_size)
        except ValueError:
            raise ValueError("the uploaded file is not an image this page can read "
                             "(PNG, JPEG, WebP, BMP, GIF, TIFF)") from None  # fmt: skip
        masks = None
        if request.mask is not None:
            mask_path = os.path.join(folder, "mask")
            with open(mask_path, "wb") as handle:
                handle.write(request.mask)
            try:
                masks = load_masks(mask_path, [image_path], sizes, model.image_size)
            except ValueError:
                raise ValueError("the mask is not an image the size of the picture") from None
            if not masks.any():
                raise ValueError("the mask is empty: draw over what should change")
            shown["masked_fraction"] = round(float(masks.mean()), 4)
    if model.channels == 1:
        images = images.mean(axis=-1, keepdims=True)
    count = request.num_images
    edited = model.edit(
        np.repeat(images, count, axis=0), strength=request.strength,
        mask=None if masks is None else np.repeat(masks, count, axis=0), **common,
    )  # fmt: skip
    if request.strength is not None:
        shown["strength"] = request.strength
    return to_uint8(edited), shown


class Jobs:
    """A queue of requests and the one worker thread that runs them."""

    def __init__(self, model):
        self.model = model
        self._queue = queue.Queue()
        self._jobs = {}
        self._order = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a job moved on
        self._ids = itertools.count(1)
        self._worker = threading.Thread(target=self._work, name="generate", daemon=True)
        self._worker.start()

    def submit(self, request):
        job = dict(id=str(next(self._ids)), state="queued", done=0, total=0, version=0,
                   submitted=time.time())  # fmt: skip
        with self._lock:
            self._jobs[job["id"]] = job
            self._order.append(job["id"])
            # Finished jobs hold their PNGs: keep the newest KEEP of them.
            finished = [i for i in self._order if self._jobs[i]["state"] in ("done", "failed")]
            for old in finished[: max(0, len(finished) - KEEP)]:
                self._order.remove(old)
                del self._jobs[old]
        self._queue.put((job["id"], request))
        return job["id"]

    def status(self, job_id, after=None, timeout=10.0):
        """The job's state as the page shows it, or None for an unknown id.
        With `after` (a `version` the caller has seen), waits up to `timeout`
        seconds for the job to move on first (long polling: the page hears of
        each step and of the end at once, without asking many times)."""
        with self._lock:
            if after is not None:
                self._changed.wait_for(
                    lambda: job_id not in self._jobs or self._jobs[job_id]["version"] > after,
                    timeout,
                )  # fmt: skip
            job = self._jobs.get(job_id)
            if job is None:
                return None
            found = {k: v for k, v in job.items() if k != "submitted"}
            if job["state"] == "queued":
                waiting = [i for i in self._order if self._jobs[i]["state"] == "queued"]
                found["place"] = waiting.index(job_id) + 1
            return found

    def _work(self):
        while True:
            job_id, request = self._queue.get()
            job = self._jobs[job_id]

            def report(done, total, job=job):
                self._update(job, done=done, total=total)

            self._update(job, state="running")
            try:
                begin = time.time()
                images, shown = run_request(self.model, request, report)
                self._update(job, state="done", settings=shown,
                             images=[png_data_url(image) for image in images],
                             seconds=round(time.time() - begin, 3))  # fmt: skip
            except Exception as error:  # any failure is the page's one line, never a trace
                text = str(error).strip().splitlines()
                self._update(job, state="failed",
                             error=text[0] if text else type(error).__name__)  # fmt: skip
            self._queue.task_done()

    def _update(self, job, **changes):
        with self._changed:
            job.update(changes, version=job["version"] + 1)
            self._changed.notify_all()
