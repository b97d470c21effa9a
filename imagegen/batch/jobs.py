"""Job lines -> typed Jobs -> the batch plan. No torch here: every line is checked before any model is loaded.

A job list is a `.txt` file (one prompt a line) or a `.jsonl` file (one JSON object a line: `prompt` and any field of
`JobLine`). A job's id is its line number unless it names one, and without a seed it draws `--seed + id`, so what a
job draws never depends on how the work is split. `plan()` then puts the jobs into fixed batches (jobs of the same
settings and adapters, since one pipeline call runs one set; in id order; whole jobs; at most `--batch-size` images)
before any engine splits the work: a job is always rendered in the same batch, so its pixels are the same on every
engine.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import UserError
from ..options import option
from ..result import check_prompt_text
from ..settings import DECODER_SCHEDULERS, MAX_SEED, PRIOR_SCHEDULERS, DecoderSettings, PriorSettings, check_seed

JOB_SUFFIXES = (".txt", ".jsonl")
ALIASES = {"negative": "negative_prompt", "sampler": "scheduler", "num_images": "n"}  # other spellings of fields
QUOTE_CHARS = 60  # an error quotes at most this much of a line
SHOWN_ERRORS = 3  # bad lines named in the error that stops a run


@dataclass(frozen=True)
class JobSettings:
    """What a job may set. Each field is also a flag of `imagegen batch`: the value of every job that sets none."""

    negative_prompt: str = option("", "negative prompt of every job that gives none", flag="--negative",
                                  metavar="TEXT")
    n: int = option(1, "images per job (default %(default)s); image k draws the job's seed + k", flag="-n")
    steps: int | None = option(None, "decoder steps (default: the model's)")
    guidance: float | None = option(None, "decoder classifier-free guidance scale")
    scheduler: str | None = option(None, f"decoder scheduler: {', '.join(DECODER_SCHEDULERS)}")
    prior_steps: int | None = option(None, "prior steps")
    prior_guidance: float | None = option(None, "prior classifier-free guidance scale")
    prior_scheduler: str | None = option(None, f"prior scheduler: {', '.join(PRIOR_SCHEDULERS)}")
    width: int | None = option(None, "image width in pixels (a multiple of the VAE factor)")
    height: int | None = option(None, "image height in pixels")
    lora: tuple = option((), "LoRA adapter of every job that names none, e.g. --lora heart:0.8 (repeatable)",
                         repeat=True, metavar="NAME[:WEIGHT]")


@dataclass(frozen=True)
class JobLine(JobSettings):
    """The fields of a .jsonl job line (also spelt: negative, sampler, num_images). `lora`: a spec or a list."""

    prompt: str = ""
    id: int | None = None  # default: the line number
    seed: int | None = None  # default: --seed + id
    prior_seed: int | None = None  # default: the seed
    size: str | None = None  # "WxH", or one number for a square


FIELDS = [f.name for f in dataclasses.fields(JobLine)]
SETTINGS = {f.name for f in dataclasses.fields(JobSettings)}
KINDS = {name: typing.get_args(hint)[0] if typing.get_args(hint) else hint
         for name, hint in typing.get_type_hints(JobLine).items()}  # int for `int | None`


@dataclass(frozen=True)
class Job:
    id: int
    line: int
    prompt: str
    negative_prompt: str
    n: int
    seed: int
    prior_seed: int
    prior: PriorSettings
    decoder: DecoderSettings
    lora: tuple = ()  # adapter specs for the pipeline call; <lora:...> tags stay in the prompt

    def key(self) -> tuple:
        """What must be equal for jobs to share a pipeline call."""
        from ..lora.requests import split_prompt

        tags = tuple(request.describe() for request in split_prompt(self.prompt)[1])
        return self.prior, self.decoder, self.lora, tags

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        return cls(**{**data, "prior": PriorSettings(**data["prior"]), "decoder": DecoderSettings(**data["decoder"]),
                      "lora": tuple(data["lora"])})


@dataclass(frozen=True)
class BadLine:
    line: int
    error: str
    text: str

    def to_dict(self) -> dict:
        return {"line": self.line, "error": self.error, "text": self.text}


@dataclass(frozen=True)
class JobList:
    jobs: list  # Jobs, in id order
    bad: list  # BadLines (left when --skip-bad)


def read_jobs(path: str, defaults: JobSettings, base_seed: int, preset, skip_bad: bool = False) -> JobList:
    """Every line of the job file as a Job; the bad ones named with their line number in one UserError, or kept
    aside as BadLines with `skip_bad`."""
    suffix = Path(path).suffix.lower()
    if suffix not in JOB_SUFFIXES:
        raise UserError(f"job list {path!r} must be a .txt file (one prompt a line) or a .jsonl file (one JSON object "
                        "a line)")
    check_seed("--seed", base_seed)
    jobs, bad, owner = [], [], {}
    resolve = Resolver(defaults, base_seed, preset)
    try:  # the flags' settings once, rather than as an error on every line
        resolve({"prompt": "a check of the flags"}, 0)
    except UserError as err:
        raise UserError(f"the job settings of the command line: {err}") from None
    for number, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            job = resolve(parse_line(line, suffix), number)
            if job.id in owner:
                raise UserError(f"job id {job.id} is already the id of line {owner[job.id]}")
            owner[job.id] = number
            jobs.append(job)
        except UserError as err:
            bad.append(BadLine(number, str(err), line[:200]))
    if bad and not skip_bad:
        shown = "; ".join(f"line {b.line}: {b.error}" for b in bad[:SHOWN_ERRORS])
        more = f"; and {len(bad) - SHOWN_ERRORS} more" if len(bad) > SHOWN_ERRORS else ""
        raise UserError(f"{len(bad)} bad job line{'s' if len(bad) > 1 else ''} in {path!r}: {shown}{more} (fix them, "
                        "or pass --skip-bad to skip them and list them in errors.jsonl)")
    if not jobs:
        raise UserError(f"job list {path!r} has no jobs" + (" that can be rendered" if bad else ""))
    return JobList(sorted(jobs, key=lambda job: job.id), bad)


def read_lines(path: str) -> list[str]:
    from ..textfile import read_utf8_lines

    return read_utf8_lines(path, "job list")


def parse_line(line: str, suffix: str) -> dict:
    """A line's fields, under their own names, with values of the declared types."""
    if suffix == ".txt":
        return {"prompt": line.strip()}
    try:
        data = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, dict):
        raise UserError(f"a job line is a JSON object like {{\"prompt\": \"a red circle\"}}, got "
                        f"{line[:QUOTE_CHARS]!r}")
    values = {}
    for key, value in data.items():
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS + list(ALIASES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; a job may hold: {', '.join(FIELDS)}"
            raise UserError(f"unknown field {key!r}{hint}")
        if name in values:
            raise UserError(f"field {name!r} is given twice (as {key!r} too)")
        if value is not None:
            values[name] = check_type(name, value)
    return values


def check_type(name: str, value):
    kind = KINDS[name]
    if name == "lora":
        specs = [value] if isinstance(value, str) else value
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise UserError(f"lora must be a spec like \"heart:0.8\" or a list of them, got {value!r}")
        return tuple(specs)
    if name == "size" and isinstance(value, int) and not isinstance(value, bool):
        return f"{value}x{value}"
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        what = {int: "a whole number", float: "a number", str: "a text"}[kind]
        raise UserError(f"{name} must be {what}, got {value!r}")
    return value


class Resolver:
    """A line's fields + the run's defaults -> a checked Job (settings from the model's defaults)."""

    def __init__(self, defaults: JobSettings, base_seed: int, preset):
        from ..settings import Limits

        self.defaults, self.base_seed, self.preset = defaults, base_seed, preset
        self.limits = Limits.for_model(preset.decoder_defaults)
        self.vae_factor = vae_factor(preset)
        self.known_adapters = set()

    def __call__(self, values: dict, line: int) -> Job:
        v = replace(self.defaults, **{k: x for k, x in values.items() if k in SETTINGS})
        prompt = values.get("prompt", "")
        if not prompt.strip():
            raise UserError("no prompt (a job line needs a non-empty \"prompt\")")
        check_prompt_text(prompt, "the prompt")
        job_id = values.get("id", line)
        if job_id < 0:
            raise UserError(f"id must be a whole number >= 0, got {job_id}")
        if v.n < 1:
            raise UserError(f"n must be a whole number >= 1, got {v.n}")
        seed = values.get("seed", (self.base_seed + job_id) % (MAX_SEED + 1))
        prior_seed = values.get("prior_seed", seed)
        check_seed("seed", seed)
        check_seed("prior_seed", prior_seed)
        if "size" in values:
            if "width" in values or "height" in values:
                raise UserError("give size or width/height, not both")
            width, height = parse_size(values["size"])
            v = replace(v, width=width, height=height)
        given = lambda **kw: {k: x for k, x in kw.items() if x is not None}  # noqa: E731
        prior = replace(self.preset.prior_defaults, **given(steps=v.prior_steps, guidance=v.prior_guidance,
                                                            scheduler=v.prior_scheduler))
        decoder = replace(self.preset.decoder_defaults, **given(steps=v.steps, guidance=v.guidance,
                                                                scheduler=v.scheduler, width=v.width, height=v.height))
        prior.validate()
        decoder.validate(self.vae_factor)
        self.limits.check(decoder, v.n)
        self.check_adapters(prompt, v.lora)
        return Job(id=job_id, line=line, prompt=prompt, negative_prompt=v.negative_prompt, n=v.n, seed=seed,
                   prior_seed=prior_seed, prior=prior, decoder=decoder, lora=tuple(v.lora))

    def check_adapters(self, prompt: str, specs: tuple) -> None:
        from ..lora.files import find
        from ..lora.requests import parse_spec, split_prompt

        text, tags = split_prompt(prompt)
        if not text:
            raise UserError(f"prompt {prompt[:QUOTE_CHARS]!r} holds nothing but LoRA tags")
        for request in [parse_spec(spec) for spec in specs] + tags:
            if request.name not in self.known_adapters:
                find(request.name)
                self.known_adapters.add(request.name)


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.strip().isdigit() or not height.strip().isdigit():
        raise UserError(f"size must be WIDTHxHEIGHT like \"64x64\" (or one number), got {text!r}")
    return int(width), int(height)


def vae_factor(preset) -> int | None:
    """The VAE's downscale factor from its config.json when the decoder is a local folder (else the pipeline checks)."""
    for name in ("movq", "vae"):
        config = Path(preset.decoder) / name / "config.json"
        if config.is_file():
            try:
                return 2 ** (len(json.loads(config.read_text(encoding="utf-8"))["block_out_channels"]) - 1)
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


# ---------------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Batch:
    """One pipeline call: whole jobs of one key, the rows of a job consecutive (image k draws seed + k)."""

    number: int
    jobs: tuple

    @property
    def images(self) -> int:
        return sum(job.n for job in self.jobs)

    def rows(self) -> list[tuple[Job, int]]:
        return [(job, k) for job in self.jobs for k in range(job.n)]

    def call(self) -> dict:
        """The pipeline's keyword arguments for this batch (one prompt per image, with its own seeds)."""
        rows, first = self.rows(), self.jobs[0]
        return dict(prompt=[job.prompt for job, _ in rows], negative_prompt=[job.negative_prompt for job, _ in rows],
                    seed=[(job.seed + k) % (MAX_SEED + 1) for job, k in rows],
                    prior_seed=[(job.prior_seed + k) % (MAX_SEED + 1) for job, k in rows],
                    num_images=1, loras=list(first.lora), prior=first.prior, decoder=first.decoder, progress=False)

    def to_json(self) -> str:
        return json.dumps({"number": self.number, "jobs": [job.to_dict() for job in self.jobs]}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "Batch":
        data = json.loads(text)
        return cls(data["number"], tuple(Job.from_dict(job) for job in data["jobs"]))


def plan(jobs: list[Job], batch_size: int, limits) -> list[Batch]:
    """Fixed batches of the whole job list, numbered in the order of their first job."""
    if batch_size < 1:
        raise UserError(f"--batch-size must be a whole number >= 1, got {batch_size}")
    filling, full = {}, []
    for job in sorted(jobs, key=lambda j: j.id):
        most = limits.max_call_pixels // (job.decoder.width * job.decoder.height)
        room = max(1, min(batch_size, most))
        key = job.key()
        chunk = filling.get(key)
        if chunk and sum(j.n for j in chunk) + job.n > room:
            full.append(chunk)
            chunk = None
        if chunk is None:
            chunk = filling[key] = []
        chunk.append(job)
    chunks = sorted(full + list(filling.values()), key=lambda c: c[0].id)
    return [Batch(number, tuple(chunk)) for number, chunk in enumerate(chunks)]


def plan_digest(batches: list[Batch]) -> str:
    """What a resumed run must match: every job's prompt, seeds and settings, and which batch it is in."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(batch.to_json().encode())
    return digest.hexdigest()[:16]
