"""Hugging Face `datasets` data sets as `lipo import` inputs: `save_to_disk` folders, and hub ids.

    files = source_files("data/uf_saved", split="train_prefs")      # a DatasetDict folder: one split's Arrow files
    files = source_files("data/uf_saved/train_prefs", split=None)   # a Dataset folder
    files = source_files("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")   # the hub, via `datasets`
    files = source_files("data/pairs.jsonl", split=None)            # anything else: `lipo.data.files.resolve_paths`

The result is a list of `lipo.data.files.DataFile`, read by the same streaming readers (with their file / row /
field messages) as JSONL and Parquet: nothing here holds the data set.

Folders are read with pyarrow alone, so `datasets` is not a dependency of lipo. The layout, as `datasets`'
`Dataset.save_to_disk` / `DatasetDict.save_to_disk` write it:
- a Dataset folder: `state.json` (its `_data_files` lists the shards in order), `dataset_info.json`, and
  `data-00000-of-0000N.arrow` shards, each an Arrow IPC stream (`lipo.data.files.saved_dataset` reads them);
- a DatasetDict folder: `dataset_dict.json` (`{"splits": [...]}`) and one Dataset folder per split, named after it.
`--split` picks the DatasetDict's split (default `train`; an unknown split is an error listing the splits). Given for
a Dataset folder, it must equal the split recorded in its `state.json`, so a wrong split is never read silently.

A hub id (`owner/name`, that is no local path and has no data-file extension) is loaded with
`datasets.load_dataset(id, split=SPLIT)` when `datasets` is installed (otherwise an error says to
`pip install datasets`). `datasets` downloads and converts the data into its cache as Arrow files; those cache files
are what lipo then reads. The hub must be reachable (or the data set already in the cache, with
`HF_DATASETS_OFFLINE=1`). A data set's configuration (subset) cannot be chosen here: load it with `datasets`,
`save_to_disk` it, and import the folder.
Tests: tests/lipo/data/test_hf_datasets.py (folders written by hand in `datasets`' layout; no test downloads).
"""

from __future__ import annotations

import os
import re

import pyarrow.fs as pafs

from lipo.data.files import (ARROW_SUFFIXES, HF_DICT, HF_STATE, JSONL_SUFFIXES, PARQUET_SUFFIXES, DataFile,
                             is_uri, open_fs, read_json_object, resolve_paths)
from lipo.errors import DataError

DEFAULT_SPLIT = "train"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(source: str) -> bool:
    suffixes = JSONL_SUFFIXES + PARQUET_SUFFIXES + ARROW_SUFFIXES
    return not is_uri(source) and bool(_HUB_ID.match(source)) and not source.lower().endswith(suffixes)


def source_files(source: str, split: str | None = None) -> list[DataFile]:
    """The data files of `source`: a `datasets` folder's split, a hub id's split, or plain files / folders / globs."""
    fs, root = open_fs(source)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.Directory:
        return _folder_files(source, fs, root, split)
    if info.type == pafs.FileType.NotFound and looks_like_hub_id(source):
        return hub_files(source, split or DEFAULT_SPLIT)
    if split is not None:
        raise DataError(f"--split {split}: only a Hugging Face datasets folder or hub id has splits, not {source}")
    return resolve_paths(source)


def _folder_files(source: str, fs: pafs.FileSystem, root: str, split: str | None) -> list[DataFile]:
    marker = f"{root}/{HF_DICT}"
    if fs.get_file_info(marker).type == pafs.FileType.File:
        splits = read_json_object(fs, marker, f"{source.rstrip('/')}/{HF_DICT}").get("splits") or []
        chosen = split or DEFAULT_SPLIT
        if chosen not in splits:
            raise DataError(f"{source}: no split '{chosen}' in this DatasetDict (splits: {', '.join(splits)}); "
                            "choose one with --split")
        return resolve_paths(f"{source.rstrip('/')}/{chosen}")
    state = f"{root}/{HF_STATE}"
    if split is not None and fs.get_file_info(state).type == pafs.FileType.File:
        recorded = read_json_object(fs, state, f"{source.rstrip('/')}/{HF_STATE}").get("_split")
        if recorded is not None and recorded != split:
            raise DataError(f"{source}: a Dataset folder of split '{recorded}', not '{split}'")
    elif split is not None:
        raise DataError(f"--split {split}: {source} is not a Hugging Face datasets folder")
    return resolve_paths(source)


def hub_files(hub_id: str, split: str) -> list[DataFile]:
    """The cached Arrow files of the hub data set `hub_id`'s `split`, loaded (downloaded if need be) by `datasets`."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{hub_id}: no such file or folder; to read it as a Hugging Face hub data set, install the "
                        "datasets library (pip install datasets)") from None
    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except (OSError, ValueError) as exc:  # not found, no network, unknown split: the user's to fix, not a lipo bug
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"{hub_id}: cannot load split '{split}' from the Hugging Face hub "
                        f"({type(exc).__name__}: {first})") from None
    files = [c["filename"] for c in ds.cache_files]
    if not files or getattr(ds, "_indices", None) is not None:
        # An in-memory or re-indexed data set has no files that hold exactly its rows.
        raise DataError(f"{hub_id}: split '{split}' has no Arrow cache files to read; save it with "
                        "Dataset.save_to_disk and import the folder")
    return resolve_paths([os.fspath(f) for f in files])
