"""Training images decoded and resized once: uint8 ``[N, 3, H, W]`` in memory or in a memory-mapped file.

Decoding a JPEG and resizing it costs a loader worker most of its time (see ``benchmarks/bench_data.py``); the
re-ID training sets are small enough to hold decoded (Market-1501: 12,936 images, 1.3 GB at 256x128; MSMT17:
32,621, 3.2 GB). :class:`ImageCache` holds them at the training size, resized with
:func:`icg.data.transforms.resize`, the resize of the CPU path, so a cached image is the very uint8 image that
path would augment.

* :meth:`ImageCache.in_memory` decodes into a tensor of the process (``cache="memory"``). Loader workers started
  by ``fork`` share its pages; with ``spawn`` torch moves it to shared memory once.
* :meth:`ImageCache.on_disk` keeps it in ``<folder>/train-<H>x<W>-<key>.npy`` (``cache="disk"``), memory-mapped,
  so that processes (loader workers, DDP ranks) share one copy through the page cache and later runs skip the
  decoding. ``<key>`` names the list of image paths (CUHK03-NP's two variants share a root but not a file). A
  manifest ``<same name>.json`` records the format, the image size and a fingerprint of the files (path, size,
  modification time); the cache is rebuilt when the fingerprint differs. Both files are written atomically
  (:func:`icg.files.atomic_write`) and the manifest last, after the old one was removed: a build that is killed
  leaves a data file without a manifest, which is never trusted. A data file whose size or header does not
  match its manifest is refused with an error naming both files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from icg.data.transforms import read_image, resize
from icg.files import atomic_write

__all__ = ["CacheFileError", "ImageCache", "default_cache_dir"]

FORMAT = 1
"""Version of the disk layout; a manifest of another version is rebuilt."""
_CHUNK = 512  # images decoded ahead of the writer: bounds the memory of a build


class CacheFileError(OSError):
    """A decoded-image cache file that does not match its manifest (damaged, or changed by something else)."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/icg``, else ``~/.cache/icg``: where disk caches go when no folder is given."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "icg"


def _decoded(paths: Sequence[str], image_size: Sequence[int], *, threads: int, progress: bool) -> Iterator[Tensor]:
    """Each file of ``paths`` decoded and resized to ``image_size`` (uint8 ``[3, H, W]``), in order.

    ``threads`` threads decode (PIL and torch release the GIL), ``_CHUNK`` images at a time, so that a slow
    consumer never holds more than a chunk of decoded images."""
    bar = tqdm(total=len(paths), desc=f"decoding {len(paths)} images", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool, bar:
        for start in range(0, len(paths), _CHUNK):
            for image in pool.map(lambda path: resize(read_image(path), image_size), paths[start : start + _CHUNK]):
                bar.update()
                yield image


def _fingerprint(paths: Sequence[str], image_size: Sequence[int]) -> tuple[str, str]:
    """``(key, fingerprint)``: a digest of the absolute paths (which split this is) and one of the paths with their
    sizes and modification times (whether its files changed). Raises ``FileNotFoundError`` naming a missing file."""
    names = [os.path.abspath(path) for path in paths]
    key = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    files = hashlib.sha256(json.dumps([FORMAT, list(image_size)]).encode())
    for name in names:
        stat = os.stat(name)
        files.update(f"\n{name}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return key, files.hexdigest()


class ImageCache:
    """``N`` images decoded and resized once, uint8 ``[N, 3, H, W]``; item ``i`` is image ``i`` (uint8 ``[3, H, W]``).

    Build one with :meth:`in_memory` or :meth:`on_disk`.

    Args:
        images: a uint8 tensor ``[N, 3, H, W]`` (memory), or ``None`` with ``path`` (a memory-mapped ``.npy``).
        path: the ``.npy`` file of a disk cache.
        shape: ``[N, 3, H, W]`` expected of ``path``.
    """

    def __init__(
        self, images: Tensor | None = None, *, path: Path | None = None, shape: Sequence[int] | None = None
    ) -> None:
        if (images is None) == (path is None):
            raise ValueError("ImageCache: give either images (in memory) or path and shape (on disk)")
        self.images, self.path = images, path
        self.shape = tuple(images.shape) if images is not None else tuple(shape)
        self._mapped: np.ndarray | None = None

    # a memory map is opened in each process that reads it: pickling it (spawn workers) would copy the data
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mapped": None}

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        if self.images is not None:
            return self.images[index]
        if self._mapped is None:
            self._mapped = _open_npy(self.path, self.shape)
        return torch.from_numpy(np.array(self._mapped[index]))  # a copy: the map is read-only

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded images (``N x 3 x H x W``)."""
        return int(np.prod(self.shape))

    @classmethod
    def in_memory(
        cls, paths: Sequence[str], image_size: Sequence[int], *, threads: int = 1, progress: bool = False
    ) -> ImageCache:
        """Decodes ``paths`` into a tensor of this process."""
        height, width = image_size
        images = torch.empty(len(paths), 3, height, width, dtype=torch.uint8)
        for row, image in enumerate(_decoded(paths, image_size, threads=threads, progress=progress)):
            images[row] = image
        return cls(images)

    @classmethod
    def on_disk(
        cls,
        paths: Sequence[str],
        image_size: Sequence[int],
        *,
        folder: str | Path,
        threads: int = 1,
        progress: bool = False,
        build: bool = True,
    ) -> ImageCache:
        """Opens the disk cache of ``paths`` at ``image_size`` in ``folder``, building it first when it is missing
        or its files changed; with ``build=False`` (DDP ranks that wait for the builder) a missing or stale cache
        is an error."""
        height, width = image_size
        shape = (len(paths), 3, height, width)
        key, fingerprint = _fingerprint(paths, image_size)
        data = Path(folder).expanduser() / f"train-{height}x{width}-{key}.npy"
        manifest_path = data.with_suffix(".json")
        manifest = _read_manifest(manifest_path)
        if manifest.get("fingerprint") != fingerprint:
            if not build:
                raise FileNotFoundError(
                    f"ImageCache: no up-to-date decoded-image cache of these {len(paths)} images at {data} "
                    "(the process that builds it, local rank 0, did not write it)"
                )
            manifest = _build(data, manifest_path, paths, image_size, fingerprint, threads=threads, progress=progress)
        cache = cls(path=data, shape=shape)
        cache._mapped = _check(data, manifest_path, manifest, shape)
        return cache


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, or ``{}`` when there is none or it cannot be read (the cache is then rebuilt)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else {}


def _build(
    data: Path,
    manifest_path: Path,
    paths: Sequence[str],
    image_size: Sequence[int],
    fingerprint: str,
    *,
    threads: int,
    progress: bool,
) -> dict[str, Any]:
    """Decodes ``paths`` into ``data`` and writes its manifest; returns the manifest."""
    height, width = image_size
    shape = (len(paths), 3, height, width)

    def write(stream: BinaryIO) -> None:
        header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(stream, header)
        for image in _decoded(paths, image_size, threads=threads, progress=progress):
            stream.write(image.numpy().tobytes())

    try:
        manifest_path.unlink(missing_ok=True)  # from here until the new manifest, the data file is not trusted
        atomic_write(data, write)
        manifest = {
            "format": FORMAT,
            "image_size": [height, width],
            "images": len(paths),
            "first_image": os.path.abspath(paths[0]) if paths else None,
            "fingerprint": fingerprint,
            "data_bytes": data.stat().st_size,
        }
        atomic_write(manifest_path, lambda stream: stream.write(json.dumps(manifest, indent=1).encode()))
    except PermissionError as error:
        raise PermissionError(
            f"ImageCache: cannot write the decoded-image cache in {data.parent} ({error}); give the datamodule a "
            "writable cache_dir"
        ) from error
    return manifest


def _check(data: Path, manifest_path: Path, manifest: dict[str, Any], shape: Sequence[int]) -> np.ndarray:
    """``data`` memory-mapped; raises :class:`CacheFileError` when it is not the file ``manifest`` describes."""
    size = data.stat().st_size if data.exists() else None
    if size != manifest.get("data_bytes"):
        found = "is missing" if size is None else f"has {size} bytes"
        raise CacheFileError(
            f"ImageCache: {data} {found}, its manifest {manifest_path} says {manifest.get('data_bytes')} bytes; the "
            "cache is damaged or was changed by something other than icg: delete both files to rebuild it"
        )
    return _open_npy(data, shape)


def _open_npy(path: Path, shape: Sequence[int]) -> np.ndarray:
    """Memory-maps the uint8 array of ``path`` and checks its shape; errors name the file."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise CacheFileError(
            f"ImageCache: cannot read {path} ({error}); delete it and its .json manifest to rebuild the cache"
        ) from error
    if array.dtype != np.uint8 or tuple(array.shape) != tuple(shape):
        raise CacheFileError(
            f"ImageCache: {path} holds {array.dtype} {tuple(array.shape)}, expected uint8 {tuple(shape)}; delete it "
            "and its .json manifest to rebuild the cache"
        )
    return array
