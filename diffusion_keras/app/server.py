"""The local web page: a standard-library HTTP server on 127.0.0.1.

    python -m diffusion_keras.app RUN_DIR/model.keras            # http://127.0.0.1:7860

Routes: `GET /` the page (`app.page`); `GET /api/model` what the model takes
(size, classes, prompts, default sampling); `POST /api/jobs` a request (JSON, the
page's fields), answered at once with its job id; `GET /api/jobs/ID` the job's
state (`app.jobs`; `?after=VERSION` waits until it moves on). Generation runs on one
worker thread; requests that come while it works wait in a queue, and the page shows
their place and progress.
"""

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from diffusion_keras.app.jobs import MAX_IMAGES, Jobs, Request
from diffusion_keras.app.page import PAGE
from diffusion_keras.config.choices import SAMPLERS

MAX_BODY = 64 * 1024 * 1024


def model_info(model):
    """What the page shows and offers for `model`."""
    flags = Request(mode="generate")
    return dict(
        image_size=int(model.image_size), channels=int(model.channels),
        classes=list(model.class_names or []) if model.num_classes else [],
        prompts=model.text_encoder is not None, samplers=list(SAMPLERS),
        defaults=flags.settings(model), max_images=MAX_IMAGES,
        editing=model.autoencoder is None,
    )  # fmt: skip


class Handler(BaseHTTPRequestHandler):
    server_version = "diffusion_keras"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status, body, content_type="application/json"):
        data = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status, value):
        self._send(status, json.dumps(value))

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path in ("/", "/index.html"):
            return self._send(200, PAGE, "text/html; charset=utf-8")
        if self.path == "/api/model":
            return self._json(200, self.server.info)
        if self.path.startswith("/api/jobs/"):
            path, _, query = self.path.partition("?")
            after = dict(urllib.parse.parse_qsl(query)).get("after")
            try:
                after = None if after is None else int(after)
            except ValueError:
                return self._json(400, {"error": f"after must be a whole number, got {after!r}"})
            status = self.server.jobs.status(path.rsplit("/", 1)[1], after)
            if status is None:
                return self._json(404, {"error": "no such job"})
            return self._json(200, status)
        return self._json(404, {"error": f"no such page: {self.path}"})

    def do_POST(self):  # noqa: N802
        if self.path != "/api/jobs":
            return self._json(404, {"error": f"no such page: {self.path}"})
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise ValueError(f"the request must hold 1 byte to {MAX_BODY // 2**20} MB")
            fields = json.loads(self.rfile.read(length))
            request = Request.from_fields(fields, self.server.model)
        except (ValueError, UnicodeDecodeError) as error:
            text = str(error).strip().splitlines()
            return self._json(400, {"error": text[0] if text else "bad request"})
        return self._json(202, {"id": self.server.jobs.submit(request)})


class PageServer(ThreadingHTTPServer):
    """The page's server for one model; `serve_forever` runs it."""

    daemon_threads = True

    def __init__(self, model, host="127.0.0.1", port=7860, verbose=False):
        super().__init__((host, port), Handler)
        self.model, self.verbose = model, verbose
        self.info = model_info(model)
        self.jobs = Jobs(model)

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self):
        """Serves on a daemon thread (for tests and notebooks); returns self."""
        threading.Thread(target=self.serve_forever, name="page", daemon=True).start()
        return self
