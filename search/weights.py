"""Before the first trial: every backbone's pretrained weights, fetched once into storage.

With ``recipe.weights: imagenet`` each backbone's published weights file is downloaded
once (by the driver, with a timeout) into ``<storage.path>/weights/``; trials copy it
from there (trainables.weights) instead of each downloading it again. A file already
there is used as is, so an offline cluster works once someone puts the files there.
When a file can be neither found nor fetched, the search stops before any trial starts
with an error naming the backbone and the remedy: a failure that would repeat in every
trial is not left to Tune's retries.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable

import pyarrow.fs as pafs

from trainables import backbones
from trainables.errors import InputError
from trainables.notices import import_tensorflow
from trainables.storage import resolve
from trainables.weights import staged_uri

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30


def fetch(url: str, destination: str, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> None:
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def stage_imagenet_weights(storage_uri: str, names: tuple[str, ...], *,
                           fetch_file: Callable[[str, str], None] = fetch) -> list[str]:
    """Make each backbone's ImageNet weights available under ``storage_uri``/weights.

    Returns:
        The staged URIs, one per backbone.

    Raises:
        InputError: a backbone's file is not staged and cannot be fetched; every such
            backbone is named with its file and how to provide it.
    """
    staged, missing = [], []
    for name in names:
        backbone = backbones.get(name)
        uri = staged_uri(storage_uri, name)
        location = resolve(uri)
        if location.filesystem.get_file_info(location.root).type == pafs.FileType.File:
            staged.append(uri)
            continue
        log.info("fetching the ImageNet weights of %s (%s) into %s", name, backbone.imagenet_file, uri)
        with tempfile.TemporaryDirectory(prefix="hpsearch-weights-") as scratch:
            local = f"{scratch}/{backbone.imagenet_file}"
            try:
                if backbone.make_imagenet_file is not None:  # converted from an installed package
                    import_tensorflow()  # the conversion loads it: without its start-up notices
                    backbone.make_imagenet_file(local)
                else:
                    fetch_file(backbone.imagenet_url, local)
            except (OSError, urllib.error.URLError, InputError) as exc:  # offline, DNS, timeout, HTTP, not installed
                reason = getattr(exc, "reason", None) or exc
                missing.append(f"{name} ({backbone.imagenet_file} from {backbone.imagenet_url}: {reason})")
                continue
            location.filesystem.create_dir(location.root.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(local, location.root, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=location.filesystem)
        staged.append(uri)
    if missing:
        folder = f"{storage_uri.rstrip('/')}/weights/"
        raise InputError(
            "recipe.weights is imagenet, but the pretrained weights of "
            + "; ".join(missing)
            + f" cannot be fetched. Put the files in {folder} (download them where the network reaches "
            "storage.googleapis.com), or set recipe.weights to none or a weights file"
        )
    return staged
