"""A model that cannot be loaded is one error for the run, and a store is bound to a model by its first vector."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.awkward import run_cli
from tests.corpus import write_image
from xsearch.indexer.pipeline import RETRY_FACT, not_the_files_fault
from xsearch.storage import ItemRecord, Storage

N = 6


@pytest.fixture
def media(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    for i in range(N):
        write_image(folder / f"{i}.png", i)
    return folder


def assert_one_run_error(run, *words: str) -> None:
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), run.stderr  # printed once, not once per file
    assert all(w in lines[0] for w in words), lines[0]


def assert_nothing_recorded(store: Path) -> None:
    with Storage(store) as s:
        assert s.items() == []  # no file is recorded as failed: the files are fine
        assert s.get_meta("model") is None and s.get_meta("model_name") is None  # the store is bound to no model


def test_a_first_run_offline_without_the_weights_is_one_error_and_then_another_model_works(
        media: Path, tmp_path: Path, tiny_model: str) -> None:
    store = tmp_path / "store"
    first = run_cli("index", media, "--store", store, "--no-progress")  # XSEARCH_OFFLINE=1: the download fails
    assert_one_run_error(first, "cannot download", "imagebind_huge.pth", "CC BY-NC-SA 4.0")
    assert_nothing_recorded(store)
    second = run_cli("index", media, "--store", store, "--model", tiny_model, "--json", "--no-progress")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["embedded"] == N and report["failed"] == 0
    with Storage(store) as s:
        assert s.get_meta("model").startswith("dir:tiny-") and s.get_meta("model_name") == str(Path(tiny_model).resolve())
    again = run_cli("index", media, "--store", store, "--json", "--no-progress")  # the store's model from now on
    assert again.returncode == 0 and json.loads(again.stdout)["unchanged"] == N, again.stderr


def test_a_corrupt_checkpoint_is_one_error_and_records_nothing(media: Path, tmp_path: Path, tiny_model: str) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    data = (broken / "checkpoint.pth").read_bytes()
    (broken / "checkpoint.pth").write_bytes(data[: len(data) // 2])
    store = tmp_path / "store"
    run = run_cli("index", media, "--store", store, "--model", broken, "--no-progress")
    assert_one_run_error(run, str(broken / "checkpoint.pth"), "cannot read the checkpoint")
    assert_nothing_recorded(store)
    fine = run_cli("index", media, "--store", store, "--model", tiny_model, "--json", "--no-progress")
    assert fine.returncode == 0 and json.loads(fine.stdout)["embedded"] == N, fine.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_one_error_and_records_nothing(media: Path, tmp_path: Path,
                                                                       tiny_model: str) -> None:
    store = tmp_path / "store"
    run = run_cli("index", media, "--store", store, "--model", tiny_model, "--device", "cuda", "--no-progress")
    assert_one_run_error(run, "cuda", "--device cpu")
    assert_nothing_recorded(store)


def test_a_failure_whose_cause_is_not_the_file_is_tried_again_though_the_file_did_not_change(
        media: Path, tmp_path: Path, tiny_model: str) -> None:
    store = tmp_path / "store"
    assert run_cli("index", media, "--store", store, "--model", tiny_model, "--no-progress").returncode == 0
    with Storage(store) as s:
        machine, own = s.item_by_path(str(media / "0.png")), s.item_by_path(str(media / "1.png"))

        def failed(item, reason: str, facts: dict) -> ItemRecord:
            return ItemRecord(path=item.path, modality=item.modality, size=item.size, mtime_ns=item.mtime_ns,
                              content_hash=item.content_hash, facts=facts, root=item.root, error=reason)

        # As an earlier run leaves them: one ran out of memory (the machine's fault), one the file's fault.
        s.put([failed(machine, "embedding failed: CUDA out of memory; tried again on the next run", {RETRY_FACT: True}),
               failed(own, "could not decode as image: broken", {})])
    run = run_cli("index", media, "--store", store, "--json", "--no-progress")
    report = json.loads(run.stdout)
    assert (report["embedded"], report["failed"], report["unchanged"]) == (1, 1, N - 2), run.stderr
    with Storage(store) as s:
        assert s.item_by_path(machine.path).status == "ok" and s.item_by_path(own.path).status == "failed"


def test_out_of_memory_is_the_machines_fault_and_other_errors_the_files() -> None:
    assert not_the_files_fault(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not_the_files_fault(MemoryError())
    assert not_the_files_fault(RuntimeError("CUDA error: out of memory"))
    assert not not_the_files_fault(RuntimeError("shape '[1, 3, 224, 224]' is invalid for input of size 7"))
    assert not not_the_files_fault(ValueError("bad"))
