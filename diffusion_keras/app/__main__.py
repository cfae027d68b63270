"""`python -m diffusion_keras.app MODEL`: serves the web page on 127.0.0.1.

See docs/guides/web-page.md.
"""

import os
import sys

from diffusion_keras.app.server import PageServer
from diffusion_keras.cli.common import OneLineParser, UsageError, positive_int, run
from diffusion_keras.config.choices import PRECISIONS
from diffusion_keras.utils.quiet import import_tensorflow


def parser():
    p = OneLineParser(prog="python -m diffusion_keras.app",
                      description="A local web page to generate and edit images with a model.")
    p.add_argument("model", help="a model file saved by train.py (RUN_DIR/model.keras)")
    p.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--precision", choices=("auto",) + PRECISIONS, default="auto",
                   help="numeric precision for sampling (default auto, as generate.py)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    if not os.path.exists(args.model):
        raise UsageError(f"no such model file: {args.model}")
    import_tensorflow()
    from diffusion_keras.models.saving import load_model

    model = load_model(args.model, compile=False, precision=args.precision)
    try:
        server = PageServer(model, args.host, args.port, args.verbose)
    except OSError as error:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {error.strerror}") from None
    print(f"serving {args.model} on {server.url} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DIFFUSION_KERAS_QUIET", "1")
    sys.exit(run(main))
