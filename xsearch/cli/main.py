"""The ``xsearch`` command: a thin skin over :mod:`xsearch.api`.

Exit status: 0 success; 1 when some files failed to index or an operation failed;
2 for usage errors (bad options, missing files, unknown modality) and a model that cannot be loaded.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from xsearch.errors import ModelError, StoreError, UsageError, XSearchError
from xsearch.pathnames import shown, store_path

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
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu or cuda.")
BatchSizeOpt = typer.Option(None, "--batch-size", min=1, help="Files embedded together (default: 8 on the CPU, 64 on a GPU).")
WorkersOpt = typer.Option(None, "--workers", min=1, help="Decoding threads.")


def _emit_json(obj) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n"
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:  # a path that is not valid UTF-8, on a strict terminal: \u escapes instead
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=True, default=str) + "\n")


def _one_line(text: object) -> str:
    """Text with file names in it, on one line and inert: control characters (a newline, a colour or
    clear-screen escape in a name or a decoder's message) shown as ls -b does."""
    return shown(str(text))


def _error(message: object) -> None:
    err.print(Text.assemble(("error:", "red"), " ", _one_line(message)))


@contextmanager
def _errors() -> Iterator[None]:
    """XSearchErrors become one line on stderr and an exit status, never a traceback."""
    try:
        yield
    except (UsageError, ModelError) as e:  # nothing was done: fix the command, or the model, and run it again
        _error(e)
        raise typer.Exit(2)
    except XSearchError as e:
        _error(e)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)


def _exit_now(signum: int, frame: object, *, say: str = "") -> None:
    """Leave at once with status 130: flush what was printed, run nothing more (no atexit callbacks)."""
    try:
        if say:
            sys.stderr.write(say + "\n")
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(130)


@contextmanager
def _reader_interrupts() -> Iterator[None]:
    """Ctrl-C ends a reader (query, status, doctor) at once: it holds nothing to save. A KeyboardInterrupt
    raised instead may surface inside native code called back into Python (torch), which aborts the whole
    process ("terminate called after throwing ...", exit 134), or in an atexit callback (noise)."""
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: _exit_now(signum, frame, say="interrupted"))
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _reader(command: Callable[..., None]) -> Callable[..., None]:
    """A command that only reads: run under _reader_interrupts."""
    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        with _reader_interrupts():
            command(*args, **kwargs)

    return run


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
    batch_size: Optional[int] = BatchSizeOpt,
    workers: Optional[int] = WorkersOpt,
    device: str = DeviceOpt,
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
def reembed(
    model: Optional[str] = typer.Option(None, "--model", help="The model to embed every item with: imagebind_huge, or a folder with config.json + checkpoint.pth (default: that of an interrupted reembed, to continue it)."),
    store: Optional[Path] = StoreOpt,
    batch_size: Optional[int] = BatchSizeOpt,
    workers: Optional[int] = WorkersOpt,
    device: str = DeviceOpt,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr (with --json: JSON lines)."),
    wait: bool = typer.Option(False, "--wait", help="If another xsearch command is writing to the store, wait for it instead of exiting."),
    as_json: bool = JsonOpt,
) -> None:
    """Embed every indexed item again with another model; the store switches to it when all are done.

    Queries keep using the current vectors meanwhile. Interrupted or killed, run it again to continue.
    """
    from xsearch.indexer.progress import JsonLinesProgress, RichProgress

    with _errors():
        with _open(store, create=False, device=device) as s:
            bar = None
            if progress and as_json:
                bar = JsonLinesProgress()
            elif progress and sys.stderr.isatty():
                bar = RichProgress()
            report = s.reembed(model, progress=bar, batch_size=batch_size, workers=workers, wait=wait,
                               on_wait=lambda line: err.print(_one_line(line)))
            # The switch drops tags made from the old model's vectors; the label sets stay, to tag again.
            retag = [ls["name"] for ls in s.label_sets()] if report.switched else []
    if as_json:
        _emit_json({**report.to_dict(), "label_sets_to_tag_again": retag})
    else:
        state = "switched to" if report.switched else "interrupted; run again to continue re-embedding with"
        out.print(_one_line(f"re-embedded {report.reembedded} (+{report.resumed} earlier), failed {report.failed} "
                            f"in {report.seconds:.1f}s; {state} {report.model}"))
        for name in retag:
            err.print(_one_line(f"  tags of label set {name} were made with the old model: "
                                f"run `xsearch tag --name {name} --labels ...` again"))
        for e in report.errors[:20]:
            err.print(_one_line(f"  failed: {e['path']}: {e['reason']}"))
    if report.interrupted:
        raise typer.Exit(130)
    raise typer.Exit(1 if report.failed else 0)


@app.command()
@_reader
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
    glob: Optional[str] = typer.Option(None, "--glob", help="Only results matching this glob: without a '/' the file name ('*.jpg'), with one the whole path, where '*' also matches '/' ('*/2024/*.jpg': any .jpg below a folder 2024)."),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Only results with at least this cosine similarity."),
    tag: List[str] = typer.Option(None, "--tag", help="Only items tagged with this label (xsearch tag). Repeatable: all must hold."),
    moments: bool = typer.Option(False, "--moments", help="Return moments (START-END inside recordings indexed with --moments) instead of files. Any file input takes a span as PATH#t=START,END."),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
    paths_only: bool = typer.Option(False, "--paths", help="Print bare paths, one per line."),
    null: bool = typer.Option(False, "--null", "-0", help="Print bare paths as they are on disk, each ended by a NUL byte (for xargs -0): safe for any file name."),
) -> None:
    """Search by any mix of inputs; weights as VALUE@WEIGHT (negative subtracts)."""
    from xsearch.query import QuerySpec, as_inputs, parse_targets
    from xsearch.query.tagged import parse_tags

    with _errors():
        given = dict(text=text, image=image, audio=audio, video=video, depth=depth, thermal=thermal, imu=imu, like=like)
        inputs = [i for kind, vals in given.items() for i in as_inputs(kind, vals or None)]
        if not inputs:  # the library's message names kinds; here the flags say it better
            raise UsageError("give at least one query input (--text, --image, --audio, --video, --depth, --thermal, --imu, --like)")
        if null and moments:  # bare names would lose each moment's span (and repeat a file once per moment)
            raise UsageError("--null prints whole files' names; with --moments use --paths (PATH#t=START,END) or --json")
        spec = QuerySpec(
            inputs=inputs, targets=parse_targets(target), k=k, folder=os.fspath(folder) if folder else None,
            glob=glob, min_score=min_score, tags=parse_tags(tag), moments=moments,
        )
        spec.validate()
        # Readers never write to the store (a concurrent index run owns it); see xsearch.storage.lock.
        from xsearch.engine.preprocess.noise import quiet

        # A query file's decoder output stays off the terminal (libmpg123, libtiff write to fd 2 directly).
        with _open(store, model, device=device, create=False, read_only=True) as s, quiet():
            hits = s.query(spec, validated=True)
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
            sys.stdout.write(shown(h.path if h.start is None else fragment(h.path, h.start, h.end)) + "\n")
    else:
        table = Table(show_edge=False)
        for col, just in (("#", "right"), ("score", "right"), ("modality", "left")):
            table.add_column(col, justify=just)
        table.add_column("path", overflow="fold")  # a path is never cut short with an ellipsis
        from xsearch.query.moments import format_span

        for h in hits:
            span = "" if h.start is None else "  " + format_span(h.start, h.end)
            table.add_row(str(h.rank), f"{h.score:.3f}", h.modality, Text(shown(h.path) + span))
        if hits:
            _print_table(table)
        else:
            out.print("no results")


@app.command()
@_reader
def status(
    store: Optional[Path] = StoreOpt,
    errors: bool = typer.Option(False, "--errors", help="List every file that failed, with its reason."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="With --errors: also what the decoders said about "
                                 "each file (warnings kept from indexing), for indexed files too."),
    as_json: bool = JsonOpt,
) -> None:
    """Counts per modality, indexes, model, store size, failed files."""
    with _errors():
        with _open(store, create=False, read_only=True) as s:
            st = s.status(verbose=verbose)
    if as_json:
        _emit_json(st)
        return
    out.print(_one_line(f"store  {st['store']}  ({st['store_bytes'] / 1e6:.1f} MB)"))
    out.print(_one_line(f"model  {st['model']}"))
    if st["reembed"]:
        r = st["reembed"]
        out.print(_one_line(f"reembed  to {r['model']}: {r['done']} of {r['total']} done; `xsearch reembed` continues it"))
    for r in st["roots"]:
        out.print(_one_line(f"folder {r['path']}") + (f"  (as {r['modality']})" if r["modality"] else "")
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
    for ls in st.get("label_sets", []):
        counts = ", ".join(f"{lab} {n}" for lab, n in ls["counts"].items())
        out.print(_one_line(f"labels {ls['name']}: {len(ls['labels'])} labels, {ls['items']} items tagged ({counts})"))
    n_err = len(st["errors"])
    if errors:
        for e in st["errors"]:
            out.print(_one_line(f"{e['path']}: {e['reason']}"))
            for line in e.get("warnings", []):
                out.print(_one_line(f"    decoder said: {line}"))
        for w in st.get("warnings", []):
            if w["status"] != "failed":
                out.print(_one_line(f"{w['path']}: indexed, with decoder warnings"))
                for line in w["warnings"]:
                    out.print(_one_line(f"    decoder said: {line}"))
    elif n_err:
        out.print(f"{n_err} file(s) failed; see xsearch status --errors")


@app.command()
def doctor(
    store: Optional[Path] = StoreOpt,
    repair: bool = typer.Option(False, "--repair", help="Rebuild the FAISS indexes from the stored vectors, and embed the files of damaged vectors again."),
    as_json: bool = JsonOpt,
) -> None:
    """Check the store (database integrity, index vs database, stored vectors, vanished files); exit 1 if problems remain."""
    with _reader_interrupts() if not repair else contextlib.nullcontext(), _errors():
        try:
            s = _open(store, create=False, read_only=not repair)
        except StoreError as e:
            if not as_json:
                raise
            # --json promises JSON: a store that cannot even be opened is a finding too.
            report = {"ok": False, "problems": [{"kind": "database", "detail": str(e)}], "repaired": False}
        else:
            with s:
                report = s.doctor(repair=repair)
    if as_json:
        _emit_json(report)
    else:
        kinds = {p["kind"] for p in report["problems"]}
        for p in report["problems"]:
            out.print(_one_line(f"[{p['kind']}] {p['detail']}"))
        if report["repaired"]:
            out.print("repaired: indexes rebuilt, damaged vectors embedded again")
        hint = ""
        if "busy" in kinds:
            hint = "; an index run is writing: run `xsearch doctor` again when it has finished"
        elif not repair and kinds & {"store", "vector"}:
            hint = "; --repair rebuilds the indexes and embeds damaged vectors' files again"
        out.print("ok" if report["ok"] else f"{len(report['problems'])} problem(s){hint}")
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
            n = s.remove([os.fspath(p) for p in paths], missing_ok=False)
    if as_json:
        _emit_json({"removed": n})
    else:
        out.print(f"removed {n}")


def _labels(labels: Optional[str], labels_file: Optional[Path]) -> list[str]:
    from xsearch.query.classify import parse_labels, read_labels_file

    if (labels is None) == (labels_file is None):
        raise UsageError('give the labels with --labels "dog,car,bird" or --labels-file FILE (one label a line)')
    return parse_labels(labels) if labels is not None else read_labels_file(labels_file)


LabelsOpt = typer.Option(None, "--labels", help='Comma-separated labels, e.g. "dog,car,bird".')
LabelsFileOpt = typer.Option(None, "--labels-file", help="A UTF-8 file with one label a line ('#' lines skipped).")
TemplateOpt = typer.Option(None, "--template", help='Prompt template replacing the per-modality ones, "{}" for the label, e.g. "a photo of a {}.". Repeatable: the templates\' text vectors are averaged.')


@app.command()
def classify(
    files: List[Path] = typer.Argument(..., help="Files to classify (any modality)."),
    labels: Optional[str] = LabelsOpt,
    labels_file: Optional[Path] = LabelsFileOpt,
    template: List[str] = TemplateOpt,
    modality: Optional[str] = typer.Option(None, "--modality", help="Read every file as this modality (e.g. depth, thermal, imu)."),
    top: Optional[int] = typer.Option(None, "--top", min=1, help="Show only the most probable labels."),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Zero-shot classification: each file's labels ranked with their probabilities."""
    with _errors():
        names = _labels(labels, labels_file)
        from xsearch.api import default_store_path
        from xsearch.storage.db import db_path

        exists = db_path(Path(store if store is not None else default_store_path())).exists()
        # An existing store is only read (its model is the default); none is needed, so none is created for it.
        from xsearch.engine.preprocess.noise import quiet

        with _open(store, model, device=device, create=not exists, read_only=exists) as s, quiet():
            results = s.classify([os.fspath(f) for f in files], names, templates=template or None, modality=modality)
    if as_json:
        _emit_json({"labels": names, "results": [r.to_dict() for r in results]})
        return
    for r in results:
        out.print(Text(_one_line(f"{store_path(r.path)} ({r.modality})")))  # a name as `ls -b` shows it
        for lab, p in r.labels[:top]:
            out.print(Text(_one_line(f"  {p:8.4f}  {lab}")))


@app.command()
def tag(
    labels: Optional[str] = LabelsOpt,
    labels_file: Optional[Path] = LabelsFileOpt,
    name: Optional[str] = typer.Option(None, "--name", help="The label set's name (default: the labels file's name without extension, else 'labels')."),
    target: List[str] = typer.Option(["all"], "--target", "-t", help="Modalities to tag (repeat or comma-separate), or all."),
    top: int = typer.Option(3, "--top", min=1, help="Most probable labels kept per item."),
    min_prob: Optional[float] = typer.Option(None, "--min-prob", min=0.0, max=1.0, help="Keep no label under this probability."),
    template: List[str] = TemplateOpt,
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    wait: bool = typer.Option(False, "--wait", help="If another xsearch run is writing to the store, wait for it."),
    as_json: bool = JsonOpt,
) -> None:
    """Tag the indexed items with their most probable labels (stored; later index runs tag new files too)."""
    with _errors():
        names = _labels(labels, labels_file)
        set_name = name or (labels_file.stem if labels_file is not None else "labels")
        with _open(store, model, device=device, create=False) as s:
            report = s.tag(names, name=set_name, target=target, top=top, min_prob=min_prob,
                           templates=template or None, wait=wait)
            sets = {ls["name"]: ls for ls in s.label_sets()}
    if as_json:
        _emit_json({**report, "counts": sets[set_name]["counts"], "items": sets[set_name]["items"]})
        return
    out.print(_one_line(f"label set {set_name}: tagged {report['tagged']} items "
                        f"({sets[set_name]['items']} carry its tags)"))
    for lab, n in sets[set_name]["counts"].items():
        out.print(_one_line(f"  {n:6d}  {lab}"))


@app.command()
def dups(
    target: List[str] = typer.Option(["all"], "--target", "-t", help="Modalities to look in (repeat or comma-separate), or all."),
    threshold: float = typer.Option(0.95, "--threshold", min=-1.0, max=1.0, help="Cosine at or above which two items count as duplicates."),
    cross: bool = typer.Option(False, "--cross", help="Also pair videos' sound tracks with audio files and videos with stills."),
    cross_threshold: Optional[float] = typer.Option(None, "--cross-threshold", min=-1.0, max=1.0, help="Cosine for --cross pairs (default: --threshold)."),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    as_json: bool = JsonOpt,
    paths_only: bool = typer.Option(False, "--paths", help="Print the members of each group but its keeper, one path a line: the candidates to review."),
) -> None:
    """List groups of near-duplicate items, each with a suggested keeper. Deletes nothing."""
    with _errors():
        from xsearch.engine.preprocess.noise import quiet

        with _open(store, model, device=device, create=False, read_only=True) as s, quiet():  # --cross decodes
            groups = s.duplicates(target=target, threshold=threshold, cross=cross, cross_threshold=cross_threshold)
    if as_json:
        _emit_json({"threshold": threshold, "groups": [g.to_dict() for g in groups]})
    elif paths_only:
        for g in groups:
            for m in g.members[1:]:
                sys.stdout.write(shown(m.path) + "\n")
    elif not groups:
        out.print("no duplicates")
    else:
        for g in groups:
            out.print(_one_line(f"{g.kind} ({len(g.members)} items)"))
            for m in g.members:
                out.print(Text(_one_line(f"  {'keep' if m.keeper else f'{m.score:.4f}':>6}  {m.modality:8s} {m.path}")))


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on; anything but loopback needs a token."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: pick a free one)."),
    store: Optional[Path] = StoreOpt,
    model: Optional[str] = ModelOpt,
    token: Optional[str] = typer.Option(None, "--token", envvar="XSEARCH_TOKEN", help="Require this token on every request (Bearer header or ?token=)."),
    max_upload_mb: float = typer.Option(200.0, "--max-upload-mb", min=0.001, max=1_000_000, help="Largest request body accepted (MB); larger ones get 413."),
    device: str = DeviceOpt,
) -> None:
    """Serve the web page and HTTP API (docs at /docs) over a store."""
    from xsearch.serve import check_bind, run

    with _errors():
        check_bind(host, token)
        with _open(store, model, device=device, create=False) as s:
            run(s, host=host, port=port, token=token, max_upload_bytes=int(max_upload_mb * 1_000_000))


def main() -> None:
    try:
        app()
    finally:
        # The command's work is done and said. More Ctrl-C while the interpreter shuts down (joining worker
        # threads, atexit callbacks) would print "Exception ignored in atexit callback" or kill the process
        # by the signal: leave quietly with 130 instead.
        signal.signal(signal.SIGINT, _exit_now)


if __name__ == "__main__":
    main()
