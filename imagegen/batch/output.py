"""The output folder of `imagegen batch`, and resuming it. No torch here.

    run.json                 what the run is (the plan's digest, model, format): a resumed run must be the same
    manifest.jsonl           one line per image: id, index, file, seeds, sha256 of the file, the full record
    manifest.part-R.jsonl    process R's lines while an accelerate run is on; merged into manifest.jsonl at its end
    errors.jsonl             the bad lines --skip-bad left out, and the jobs whose rendering failed, of the last run
    000012-0.png             image 0 of job 12 with its infotext (--format png), or
    shard-000000.tar         webdataset shards of `000012-0.png` + `000012-0.json` members (--format webdataset)

The manifest is the truth: an image is done when its line is there. A batch's images are written first (each PNG
atomically, or appended to a shard and synced), then its manifest lines in one append; so `kill -9` loses at most the
batches in flight, and `Folder.start()` removes what they left (files no line names, shard bytes after the last one)
before the same command continues.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import time
from pathlib import Path

from ..errors import UserError
from ..png import publish

MANIFEST = "manifest.jsonl"
PART = "manifest.part-{}.jsonl"
RUN_FILE = "run.json"
ERRORS = "errors.jsonl"
FORMATS = ("png", "webdataset")
IMAGE_FILE = re.compile(r"^\d{6,}-\d+\.png$")
SHARD_FILE = re.compile(r"^shard-(\d{6,})\.tar$")
PARTS = "manifest.part-*.jsonl"
LEFTOVERS = (".partial-*", ".manifest-*")  # png.publish's temporary files; a merge's
TAR_END = b"\0" * 1024  # two zero blocks end a tar archive
RUN_CHECKED = ("plan", "model", "format")  # what a resumed run must match


def image_key(job_id: int, index: int) -> str:
    """The name of image `index` of job `job_id`, without extension: `000012-0`."""
    return f"{job_id:06d}-{index}"


def manifest_entry(job_id: int, index: int, file: str, data: bytes, record, **where) -> dict:
    return {"id": job_id, "index": index, "file": file, **where, "seed": record.seed, "prior_seed": record.prior_seed,
            "sha256": hashlib.sha256(data).hexdigest(), "record": record.to_dict()}


def read_entries(path: Path, repair: bool = False) -> list[dict]:
    """The lines of a manifest (part). A torn last line (a write cut off) is dropped, and cut off with `repair`."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    entries, good = [], 0
    for line in data.split(b"\n"):
        if good + len(line) >= len(data):  # no newline after it: cut off
            break
        try:
            entries.append(json.loads(line))
        except ValueError:
            break
        good += len(line) + 1
    if repair and good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return entries


def append_lines(path: Path, entries: list[dict]) -> None:
    """Append entries as JSON lines in one write, synced."""
    data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Folder:
    def __init__(self, path: str | Path, fmt: str = "png"):
        if fmt not in FORMATS:
            raise UserError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
        self.path, self.format = Path(path), fmt

    # ------------------------------------------------------------------ before any work (the main process)
    def start(self, run: dict, bad_lines: list) -> None:
        """Check that a folder holding a run is this run's, remove what an interrupted run left half-done, merge
        manifest parts, and write run.json and the bad lines of errors.jsonl."""
        self.path.mkdir(parents=True, exist_ok=True)
        run_file = self.path / RUN_FILE
        if run_file.is_file():
            before = json.loads(run_file.read_text(encoding="utf-8"))
            changed = [key for key in RUN_CHECKED if before.get(key) != run.get(key)]
            if changed:
                raise UserError(f"{str(self.path)!r} holds another batch run (its {', '.join(changed)} differ: "
                                f"other jobs, seeds, batch size or settings); resume it with the command that started "
                                "it, or use a new --out folder")
        else:  # a new run: nothing here may be taken for its own and removed
            ours = [p.name for p in self.path.iterdir() if IMAGE_FILE.match(p.name) or SHARD_FILE.match(p.name)
                    or p.name == MANIFEST or p.match(PARTS)]
            if ours:
                raise UserError(f"{str(self.path)!r} holds {ours[0]!r} but no {RUN_FILE} (not a batch run's folder); "
                                "use a new --out folder")
            write_atomically(run_file, (json.dumps(run, indent=1) + "\n").encode())
        for pattern in LEFTOVERS:
            for leftover in self.path.glob(pattern):
                leftover.unlink()
        done = self.merge_parts()
        if self.format == "png":
            named = {entry["file"] for entry in done}
            for path in self.path.iterdir():
                if IMAGE_FILE.match(path.name) and path.name not in named:
                    path.unlink()  # written by a batch whose manifest lines never came
        else:
            self.repair_shards(done)
        errors = "".join(json.dumps({**bad.to_dict(), "stage": "parse"}, ensure_ascii=False) + "\n"
                         for bad in bad_lines)
        write_atomically(self.path / ERRORS, errors.encode())

    def merge_parts(self) -> list[dict]:
        """Append the manifest parts' new lines to manifest.jsonl, then delete the parts. -> every entry."""
        manifest = self.path / MANIFEST
        entries = read_entries(manifest, repair=True)
        keys = {(e["id"], e["index"]) for e in entries}
        for part in sorted(self.path.glob(PARTS)):
            new = [e for e in read_entries(part) if (e["id"], e["index"]) not in keys]
            if new:
                append_lines(manifest, new)
            keys |= {(e["id"], e["index"]) for e in new}
            entries += new
            part.unlink()
        return entries

    def repair_shards(self, done: list[dict]) -> None:
        """Cut every shard after its last sample in the manifest (and end it as a tar); drop shards with none."""
        ends = {}
        for entry in done:
            ends[entry["file"]] = max(ends.get(entry["file"], 0), entry["end"])
        for path in self.path.iterdir():
            if not SHARD_FILE.match(path.name):
                continue
            if path.name not in ends:
                path.unlink()
                continue
            with open(path, "r+b") as f:
                f.truncate(ends[path.name])
                f.seek(ends[path.name])
                f.write(TAR_END)

    # ------------------------------------------------------------------ during and after the work
    def done(self) -> dict:
        """(job id, image index) -> manifest entry, from the manifest and any parts."""
        entries = read_entries(self.path / MANIFEST)
        for part in sorted(self.path.glob(PARTS)):
            entries += read_entries(part)
        return {(e["id"], e["index"]): e for e in entries}

    def log_failure(self, batch, error: str) -> None:
        append_lines(self.path / ERRORS, [{"id": job.id, "line": job.line, "error": error, "stage": "render"}
                                          for job in batch.jobs])

    def writer(self, manifest_name: str = MANIFEST, shard_size: int = 1000) -> "Writer":
        return Writer(self, manifest_name, shard_size)


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".manifest-{path.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Writer:
    """One process's writer: image files (or its own shards), then the batch's lines in its manifest (part)."""

    def __init__(self, folder: Folder, manifest_name: str, shard_size: int):
        self.folder, self.manifest = folder, folder.path / manifest_name
        self.shards = ShardWriter(folder.path, shard_size) if folder.format == "webdataset" else None

    def write(self, images: list) -> list[dict]:
        """images: (job id, index, PNG bytes, GenerationRecord) of one batch -> the manifest entries written."""
        if self.shards is not None:
            entries = self.shards.write(images)
        else:
            entries = []
            for job_id, index, data, record in images:
                name = image_key(job_id, index) + ".png"
                publish(data, self.folder.path, iter([name]))  # never over another file
                entries.append(manifest_entry(job_id, index, name, data, record))
        append_lines(self.manifest, entries)
        return entries

    def close(self) -> None:
        if self.shards is not None:
            self.shards.close()


class ShardWriter:
    """Webdataset shards (`key.png` + `key.json` members) of one process, each a valid tar after every batch: the
    batch's members overwrite the end marker, a new marker follows, and the file is synced before the manifest."""

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.file, self.name, self.samples, self.end = None, "", 0, 0

    def write(self, images: list) -> list[dict]:
        if self.file is None or self.samples >= self.shard_size:
            self.open_next()
        self.file.seek(self.end)
        entries = []
        for job_id, index, data, record in images:
            key = image_key(job_id, index)
            meta = json.dumps({"id": job_id, "index": index, **record.to_dict()}, ensure_ascii=False).encode()
            self.file.write(tar_member(f"{key}.png", data) + tar_member(f"{key}.json", meta))
            entries.append(manifest_entry(job_id, index, self.name, data, record, key=key, end=self.file.tell()))
        self.end = self.file.tell()
        self.file.write(TAR_END)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.samples += len(images)
        return entries

    def open_next(self) -> None:
        self.close()
        taken = [int(m.group(1)) for p in self.folder.iterdir() if (m := SHARD_FILE.match(p.name))]
        number = max(taken, default=-1) + 1
        while True:  # another process may take the same number: the first to create it has it
            self.name = f"shard-{number:06d}.tar"
            try:
                self.file = open(self.folder / self.name, "xb")
                break
            except FileExistsError:
                number += 1
        self.samples, self.end = 0, 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def tar_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    padding = -len(data) % tarfile.BLOCKSIZE
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * padding
