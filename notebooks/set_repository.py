"""Sets the repository every notebook's Colab badge and install cell use.

    python notebooks/set_repository.py OWNER/NAME     # e.g. your fork on GitHub

`notebooks/REPOSITORY` holds it (one line, `OWNER/NAME`): this script writes that
file and rewrites the badges (`colab.research.google.com/github/OWNER/NAME/...`) and
the `REPO_URL = "https://github.com/OWNER/NAME"` line of every notebook to match.
`tests/test_notebooks.py` checks that they agree.
"""

import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FILE = os.path.join(HERE, "REPOSITORY")
BADGE = re.compile(r"colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/")
REPO_URL = re.compile(r'REPO_URL = "https://github\.com/[^"]+"')


def repository():
    with open(FILE) as handle:
        return handle.read().strip()


def rewrite(text, name):
    text = BADGE.sub(f"colab.research.google.com/github/{name}/blob/", text)
    return REPO_URL.sub(f'REPO_URL = "https://github.com/{name}"', text)


def main(argv):
    name = argv[0] if argv else repository()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", name):
        raise SystemExit(f"set_repository.py: expected OWNER/NAME, got {name!r}")
    with open(FILE, "w") as handle:
        handle.write(name + "\n")
    for path in sorted(glob.glob(os.path.join(HERE, "*.ipynb"))):
        with open(path) as handle:
            notebook = json.load(handle)
        for cell in notebook["cells"]:
            cell["source"] = rewrite("".join(cell["source"]), name).splitlines(keepends=True)
        with open(path, "w") as handle:
            json.dump(notebook, handle, indent=1, ensure_ascii=False)
            handle.write("\n")
        print(f"{os.path.basename(path)}: {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
