"""Running the real `xsearch` command in-process (Typer's runner) and making small indexed stores."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from tests.corpus import write_image
from xsearch.cli.main import app

runner = CliRunner()


def cli(*args: Any, code: int | None = 0):
    """`xsearch ARGS...`; asserts the exit status unless ``code`` is None. Arguments may be str (with
    surrogates for names that are not UTF-8), bytes or paths."""
    argv = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in args]
    res = runner.invoke(app, argv, catch_exceptions=False)
    if code is not None:
        assert res.exit_code == code, f"exit {res.exit_code}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    return res


def cli_json(*args: Any, code: int | None = 0) -> Any:
    return json.loads(cli(*args, "--json", code=code).stdout)


def on_disk(folder: Path, name: bytes) -> Path:
    """``folder / name`` for a name given as the bytes it has on disk (any bytes but '/' and NUL)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))


def indexed_images(tmp_path: Path, model: str, names: list[bytes | str]) -> tuple[Path, Path]:
    """(folder, store): a folder ``m`` holding one image per name, indexed into ``store``."""
    media = tmp_path / "m"
    media.mkdir()
    for i, n in enumerate(names):
        path = on_disk(media, n if isinstance(n, bytes) else os.fsencode(n))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, i)
    store = tmp_path / "store"
    cli("index", media, "--store", store, "--model", model, "--no-progress")
    return media, store
