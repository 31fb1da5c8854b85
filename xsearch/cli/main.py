"""The ``xsearch`` command: a thin skin over :mod:`xsearch.api`.

Exit status: 0 success; 1 when some files failed to index or an operation failed;
2 for usage errors (bad options, missing files, unknown modality).
"""
from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from xsearch.errors import UsageError, XSearchError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Cross-modal search over photos, video, sound, depth, thermal, IMU and text (ImageBind).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# File names and error text are data: with markup, emoji codes and highlighting off, a name such as
# "x[/y].png" or ":cat:.jpg" prints as itself; styled words go through Text. soft_wrap keeps every
# line (long paths, error lines) whole, so it stays greppable when piped.
out = Console(soft_wrap=True, markup=False, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)

StoreOpt = typer.Option(None, "--store", help="Store folder (default: $XSEARCH_STORE, else $XSEARCH_HOME/store).", envvar="XSEARCH_STORE")
ModelOpt = typer.Option(None, "--model", help="imagebind_huge, or a folder with config.json + checkpoint.pth (default: the store's model, else $XSEARCH_MODEL, else imagebind_huge).")
JsonOpt = typer.Option(False, "--json", help="Print JSON.")


def _emit_json(obj) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:  # a path that is not valid UTF-8, on a strict terminal: \u escapes instead
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=True, default=str) + "\n")


def _one_line(text: object) -> str:
    """Error text on one line: newlines (in a decoder's message, even in a file name) shown as ls -b does."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


def _error(message: object) -> None:
    err.print(Text.assemble(("error:", "red"), " ", _one_line(message)))


@contextmanager
def _errors() -> Iterator[None]:
    """XSearchErrors become one line on stderr and an exit status, never a traceback."""
    try:
        yield
    except UsageError as e:
        _error(e)
        raise typer.Exit(2)
    except XSearchError as e:
        _error(e)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)


def _print_table(table: Table) -> None:
    """A table on stdout; piped, at its natural width, so that each row (and path in it) is one line."""
    if out.is_terminal:
        out.print(table)
    else:
        natural = Measurement.get(out, out.options.update_width(1 << 16), table).maximum
        # print(width=) is capped at the console's width: a console as wide as the table instead.
        Console(width=max(out.width, natural), soft_wrap=True, markup=False, emoji=False, highlight=False).print(table)


def _open(store: Optional[Path], model: Optional[str] = None, **kw):
    from xsearch.api import Store

    return Store(store, model=model, **kw)


def _require_indexed_folders(store: Optional[Path]) -> None:
    """A plain ``xsearch index`` on a store that does not exist yet is a usage error, and creates nothing."""
    from xsearch.api import default_store_path
    from xsearch.storage.db import db_path

    where = store if store is not None else default_store_path()
    if not db_path(Path(where)).exists():
        raise UsageError(f"{where}: no folders indexed yet: xsearch index PATH")


@app.command()
def index(
    paths: List[Path] = typer.Argument(None, help="Files and folders to index (default: every folder indexed before)."),
    modality: Optional[str] = typer.Option(
        None, "--modality",
        help="Index the given folders' files as this modality (remembered for each folder): depth, thermal or imu "
             "for frames and recordings that look like ordinary images or CSVs; image, audio, video or text to "
             "take files with that modality's extensions as it, whatever their content looks like; auto to "
             "forget a folder's setting and detect each file again.",
    ),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Files embedded together (default: 8 on the CPU, 64 on a GPU)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Decoding threads."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
    wait: bool = typer.Option(False, "--wait", help="If another xsearch index is writing to the store, wait for it instead of exiting."),
    moments: Optional[bool] = typer.Option(
        None, "--moments/--no-moments",
        help="Also store windows of the folders' audio, video and IMU recordings, so `query --moments` finds the "
             "place inside a long file (remembered for each folder; --no-moments turns it off).",
    ),
    window: List[str] = typer.Option(None, "--window", help="Moments window per modality, optionally with its hop after a slash: audio=2s/1s, video=4s, imu=5s (default: audio and video 2s, imu 5s, hop = window). Repeatable."),
    hop: List[str] = typer.Option(None, "--hop", help="Moments hop per modality, e.g. audio=1s. Repeatable."),
    as_json: bool = JsonOpt,
) -> None:
    """Index media folders (incremental: unchanged files are not decoded again)."""
    from xsearch.indexer.progress import RichProgress

    with _errors():
        if not paths and modality is None and moments is None and not window and not hop:
            _require_indexed_folders(store)  # before opening: opening creates the store
        with _open(store, model, device=device) as s:
            bar = RichProgress() if progress and not as_json and sys.stderr.isatty() else None
            report = s.index([os.fspath(p) for p in paths or []], modality, progress=bar, batch_size=batch_size, workers=workers,
                             wait=wait, on_wait=lambda line: err.print(_one_line(line)),
                             moments=moments, window=window or (), hop=hop or ())
    if as_json:
        _emit_json(report.to_dict())
    else:
        out.print(
            f"embedded {report.embedded}, unchanged {report.unchanged}, moved {report.moved}, copied {report.copied}, "
            f"removed {report.removed}, failed {report.failed}, skipped {report.skipped} in {report.seconds:.1f}s"
            + (f"; {report.segments} moments over {report.media_seconds:.1f}s of media" if report.segments else "")
            + (" (interrupted)" if report.interrupted else "")
        )
        for e in report.errors[:20]:
            err.print(_one_line(f"  failed: {e['path']}: {e['reason']}"))
        if len(report.errors) > 20:
            err.print(f"  ... and {len(report.errors) - 20} more (xsearch status --errors)")
        for folder in report.missing:
            err.print(_one_line(f"  missing: {folder}: indexed folder not on disk (moved, deleted or unmounted); "
                                f"its files stay in the store until it is back or `xsearch remove {folder}` forgets them"))
    if report.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(1 if report.failed or report.missing else 0)


@app.command()
def query(
    text: List[str] = typer.Option(None, "--text", help="Text input, optionally TEXT@WEIGHT. Repeatable."),
    image: List[str] = typer.Option(None, "--image", help="Image file, optionally PATH@WEIGHT. Repeatable."),
    audio: List[str] = typer.Option(None, "--audio", help="Audio file. Repeatable."),
    video: List[str] = typer.Option(None, "--video", help="Video file. Repeatable."),
    depth: List[str] = typer.Option(None, "--depth", help="Depth map. Repeatable."),
    thermal: List[str] = typer.Option(None, "--thermal", help="Thermal frame. Repeatable."),
    imu: List[str] = typer.Option(None, "--imu", help="IMU recording (CSV/NPY). Repeatable."),
    like: List[str] = typer.Option(None, "--like", help="An indexed file: use its stored vector. Repeatable."),
    target: List[str] = typer.Option(["all"], "--target", "-t", help="Modalities to search (repeat or comma-separate), or all."),
    k: int = typer.Option(10, "-k", "--k", min=1, help="Number of results."),
    folder: Optional[Path] = typer.Option(None, "--folder", help="Only results under this folder."),
    glob: Optional[str] = typer.Option(None, "--glob", help="Only results whose path matches this glob, e.g. '*/2024/*.jpg'."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Only results with at least this cosine similarity."),
    moments: bool = typer.Option(False, "--moments", help="Return moments (START-END inside recordings indexed with --moments) instead of files. Any file input takes a span as PATH#t=START,END."),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    as_json: bool = JsonOpt,
    paths_only: bool = typer.Option(False, "--paths", help="Print bare paths, one per line."),
    null: bool = typer.Option(False, "--null", "-0", help="Print bare paths as they are on disk, each ended by a NUL byte (for xargs -0): safe for any file name."),
) -> None:
    """Search by any mix of inputs; weights as VALUE@WEIGHT (negative subtracts)."""
    from xsearch.query import QuerySpec, as_inputs, parse_targets

    with _errors():
        given = dict(text=text, image=image, audio=audio, video=video, depth=depth, thermal=thermal, imu=imu, like=like)
        inputs = [i for kind, vals in given.items() for i in as_inputs(kind, vals or None)]
        if not inputs:  # the library's message names kinds; here the flags say it better
            raise UsageError("give at least one query input (--text, --image, --audio, --video, --depth, --thermal, --imu, --like)")
        spec = QuerySpec(
            inputs=inputs, targets=parse_targets(target), k=k, folder=os.fspath(folder) if folder else None,
            glob=glob, min_score=min_score, moments=moments,
        )
        spec.validate()
        # Readers never write to the store (a concurrent index run owns it); see xsearch.storage.lock.
        with _open(store, model, device=device, create=False, read_only=True) as s:
            hits = s.query(spec)
    if as_json:
        _emit_json({"query": spec.describe(), "results": [h.to_dict() for h in hits]})
    elif null:
        from xsearch.pathnames import fs_path

        sys.stdout.flush()
        sys.stdout.buffer.write(b"".join(os.fsencode(fs_path(h.path)) + b"\0" for h in hits))
        sys.stdout.buffer.flush()
    elif paths_only:
        from xsearch.query.moments import fragment

        for h in hits:
            sys.stdout.write((h.path if h.start is None else fragment(h.path, h.start, h.end)) + "\n")
    else:
        table = Table(show_edge=False)
        for col, just in (("#", "right"), ("score", "right"), ("modality", "left")):
            table.add_column(col, justify=just)
        table.add_column("path", overflow="fold")  # a path is never cut short with an ellipsis
        from xsearch.query.moments import format_span

        for h in hits:
            span = "" if h.start is None else "  " + format_span(h.start, h.end)
            table.add_row(str(h.rank), f"{h.score:.3f}", h.modality, Text(h.path + span))
        if hits:
            _print_table(table)
        else:
            out.print("no results")


@app.command()
def status(
    store: Optional[Path] = StoreOpt,
    errors: bool = typer.Option(False, "--errors", help="List every file that failed, with its reason."),
    as_json: bool = JsonOpt,
) -> None:
    """Counts per modality, indexes, model, store size, failed files."""
    with _errors():
        with _open(store, create=False, read_only=True) as s:
            st = s.status()
    if as_json:
        _emit_json(st)
        return
    out.print(f"store  {st['store']}  ({st['store_bytes'] / 1e6:.1f} MB)")
    out.print(f"model  {st['model']}")
    for r in st["roots"]:
        out.print(f"folder {r['path']}" + (f"  (as {r['modality']})" if r["modality"] else "")
                  + ("  (moments)" if r.get("moments") else "")
                  + ("  (missing: not on disk)" if r["missing"] else ""))
    table = Table(show_edge=False)
    for col in ("modality", "items", "index", "vectors"):
        table.add_column(col)
    for m, n in sorted(st["counts"].items()):
        info = st["indexes"].get(m, {})
        index = str(info.get("factory", "-"))
        if info.get("rerank_cache_bytes"):
            index += f" + re-rank cache ({info['rerank_cache_bytes'] / 1e6:.0f} MB)"
        table.add_row(m, str(n), index, str(info.get("ntotal", "-")))
    for m, n in sorted(st.get("moments", {}).items()):  # windows of recordings (--moments)
        info = st["indexes"].get(f"{m}#seg", {})
        table.add_row(f"{m} moments", str(n), str(info.get("factory", "-")), str(info.get("ntotal", "-")))
    _print_table(table)
    n_err = len(st["errors"])
    if errors:
        for e in st["errors"]:
            out.print(_one_line(f"{e['path']}: {e['reason']}"))
    elif n_err:
        out.print(f"{n_err} file(s) failed; see xsearch status --errors")


@app.command()
def doctor(
    store: Optional[Path] = StoreOpt,
    repair: bool = typer.Option(False, "--repair", help="Rebuild the FAISS indexes from the stored vectors."),
    as_json: bool = JsonOpt,
) -> None:
    """Check the store (database integrity, index vs database, vanished files); exit 1 if problems remain."""
    with _errors():
        with _open(store, create=False, read_only=not repair) as s:
            report = s.doctor(repair=repair)
    if as_json:
        _emit_json(report)
    else:
        for p in report["problems"]:
            out.print(_one_line(f"[{p['kind']}] {p['detail']}"))
        if report["repaired"]:
            out.print("indexes rebuilt from the database")
        fixable = not repair and any(p["kind"] == "store" for p in report["problems"])
        out.print("ok" if report["ok"] else f"{len(report['problems'])} problem(s)" + ("; --repair rebuilds the indexes" if fixable else ""))
    raise typer.Exit(0 if report["ok"] else 1)


@app.command()
def remove(
    paths: List[Path] = typer.Argument(..., help="Files or folders to forget (files on disk are not touched)."),
    store: Optional[Path] = StoreOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Forget files or whole folders (and the indexed folders inside them).

    Files still on disk under an indexed folder come back with the next index run: delete or move them too, or remove the whole folder.
    """
    with _errors():
        with _open(store, create=False) as s:
            n = s.remove([os.fspath(p) for p in paths])
    if as_json:
        _emit_json({"removed": n})
    else:
        out.print(f"removed {n}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; anything but loopback needs a token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: pick a free one)."),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    token: Optional[str] = typer.Option(None, "--token", envvar="XSEARCH_TOKEN", help="Require this token on every request (Bearer header or ?token=)."),
    max_upload_mb: float = typer.Option(200.0, "--max-upload-mb", min=0.001, help="Largest request body accepted (MB); larger ones get 413."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Serve the web page and HTTP API (docs at /docs) over a store."""
    from xsearch.serve import check_bind, run

    with _errors():
        check_bind(host, token)
        with _open(store, model, device=device, create=False) as s:
            run(s, host=host, port=port, token=token, max_upload_bytes=int(max_upload_mb * 1_000_000))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
