"""Image folders decoded once and kept on disk, memory-mapped by later runs.

Decoding and resizing a large folder is most of a run's start-up, and the
decoded images of a big one do not fit in memory (100,000 images at 256x256
are 19.7 GB). The first run on a folder decodes it in chunks straight into a
`.npy` file under `cache_dir()/images/KEY/`; every later run with the same
folder, image size and crop maps that file instead (`np.load(mmap_mode="r")`),
so it starts at once and the operating system pages images in as batches ask
for them. KEY hashes the folder's path, the size and crop, and every image
file's relative path, size and modification time: a changed, added or removed
file makes a new entry. An entry is written to a temporary folder and renamed
into place, so a crash never leaves half of one. Delete the folder to reclaim
the space.
"""

import concurrent.futures
import hashlib
import json
import os
import shutil
import warnings

import numpy as np

from diffusion_keras.utils.precision import cache_dir

CACHE_VERSION = 1
CHUNK = 256  # images decoded at a time: bounds the memory a first run needs


def cache_key(folder, paths, image_size, center_crop):
    """A hash of what the decoded images depend on."""
    files = []
    for path in paths:
        status = os.stat(path)
        files.append([os.path.relpath(path, folder), status.st_size, status.st_mtime_ns])
    description = [CACHE_VERSION, os.path.realpath(folder), int(image_size), bool(center_crop)]
    text = json.dumps([description, files])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def entry_folder(key):
    return os.path.join(cache_dir(), "images", key)


def _read(folder, directory):
    with open(os.path.join(directory, "meta.json")) as handle:
        meta = json.load(handle)
    images = np.load(os.path.join(directory, "images.npy"), mmap_mode="r")[: meta["count"]]
    kept = [os.path.join(folder, relative) for relative in meta["kept"]]
    skipped = [os.path.join(folder, relative) for relative in meta["skipped"]]
    return images, kept, skipped, meta.get("reasons", {})


def release_pages(images):
    """Unmaps the pages a memory-mapped array has read (`MADV_DONTNEED`): they
    stay in the page cache, but no longer count in this process's resident
    memory, which would otherwise grow to the whole file over an epoch.
    Nothing for arrays in memory."""
    import mmap

    handle = getattr(images, "_mmap", None)
    if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


def _decode_into(path, folder, paths, image_size, decode, workers):
    """Decodes `paths` in chunks into a new `.npy` at `path`; returns the
    kept and skipped relative paths."""
    shape = (len(paths), image_size, image_size, 3)
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    kept, skipped = [], []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start : start + CHUNK]
            for file, array in zip(chunk, pool.map(decode, chunk)):
                relative = os.path.relpath(file, folder)
                if array is None:
                    skipped.append(relative)
                else:
                    images[len(kept)] = array
                    kept.append(relative)
            # Written pages would otherwise stay in this process's resident
            # memory until the whole file is (19.7 GB for 100k images at
            # 256x256): write them out and hand them back to the page cache.
            images.flush()
            release_pages(images)
    images.flush()
    del images
    return kept, skipped


def decoded_folder(folder, paths, image_size, center_crop, decode, workers):
    """`(images, kept_paths, skipped_paths)` for the image files `paths` of
    `folder`: a read-only memory map of the cached decoding, made now if
    there is none. `decode(path)` returns an array or None for a bad file.
    Returns None when the cache cannot be written (the caller decodes in
    memory then)."""
    key = cache_key(folder, paths, image_size, center_crop)
    directory = entry_folder(key)
    if os.path.exists(os.path.join(directory, "meta.json")):
        try:
            return _with_reasons(folder, _read(folder, directory), decode)
        except (OSError, ValueError, KeyError):
            shutil.rmtree(directory, ignore_errors=True)  # damaged: decode again
    temporary = f"{directory}.{os.getpid()}.tmp"
    try:
        os.makedirs(temporary, exist_ok=True)
        kept, skipped = _decode_into(
            os.path.join(temporary, "images.npy"), folder, paths, image_size, decode, workers
        )
        reasons = {os.path.relpath(p, folder): r for p, r in getattr(decode, "reasons", {}).items()}
        meta = dict(count=len(kept), kept=kept, skipped=skipped, image_size=image_size,
                    center_crop=bool(center_crop), folder=os.path.realpath(folder),
                    reasons=reasons)  # fmt: skip
        with open(os.path.join(temporary, "meta.json"), "w") as handle:
            json.dump(meta, handle)
        try:
            os.replace(temporary, directory)
        except OSError:  # another run made the same entry first: use theirs
            shutil.rmtree(temporary, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        warnings.warn(f"image cache not written ({error}); decoding in memory", stacklevel=3)
        return None
    return _with_reasons(folder, _read(folder, directory), decode)


def _with_reasons(folder, found, decode):
    """`(images, kept, skipped)`, the skipped files' reasons handed to `decode.reasons`."""
    images, kept, skipped, reasons = found
    if hasattr(decode, "reasons"):
        decode.reasons.update({os.path.join(folder, p): r for p, r in reasons.items()})
    return images, kept, skipped
