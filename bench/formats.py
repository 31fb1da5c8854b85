"""Image formats by content: Pillow's own test-image collection, indexed with the tiny model.

    pip download --no-binary :all: --no-deps pillow==$(python -c "import PIL; print(PIL.__version__)")
    tar xzf pillow-*.tar.gz
    python bench/formats.py pillow-*/Tests/images

"Openable" is what the original pipeline reads: ``Image.open(f).convert("RGB")`` succeeds (with the
HEIF opener registered when pillow-heif is installed). Prints one JSON object: files, openable, how many
of those were embedded, the run's counts, and each openable file that was not embedded with its reason.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

from common import TINY_MODEL  # noqa: E402  (also puts the repository on sys.path)

import xsearch
from xsearch.engine.preprocess.image import register_plugins


def openable(path: str) -> bool:
    from PIL import Image

    from xsearch.engine.preprocess.noise import capture

    with capture(path):  # its libtiff lines would mix with the index run's on stderr
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as img:
                    img.convert("RGB")
            return True
        except Exception:
            return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", help="Pillow's Tests/images folder")
    args = ap.parse_args()
    register_plugins()
    root = os.path.abspath(args.images)
    files = sorted(str(p) for p in Path(root).rglob("*") if p.is_file())
    from xsearch.engine.preprocess.noise import quiet

    with quiet():  # the damaged files' libtiff lines would otherwise mix with this JSON's neighbours
        can_open = [f for f in files if openable(f)]
    with tempfile.TemporaryDirectory() as tmp:
        with xsearch.open(Path(tmp) / "store", model=str(TINY_MODEL)) as store:
            report = store.index([root])
            items = {it.path: it for it in store.storage.items()}
    embedded = [f for f in can_open if f in items and items[f].status == "ok"]
    print(json.dumps({
        "files": len(files), "openable": len(can_open), "openable_embedded": len(embedded),
        "share": round(len(embedded) / max(1, len(can_open)), 4),
        "run": {"embedded": report.embedded, "failed": report.failed, "skipped": report.skipped,
                "seconds": report.seconds},
        "not_embedded": {os.path.relpath(f, root): (items[f].error if f in items else "skipped: not detected")
                         for f in can_open if f not in set(embedded)},
    }, indent=2))


if __name__ == "__main__":
    sys.exit(main())
