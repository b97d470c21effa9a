"""`GenerationRecord`: the one definition of what an image was made from — prompt, negative prompt, seeds, every
prior and decoder setting, the model, the adapters and the reranking. No torch here.

Everything that writes or reads the facts about an image goes through it: the PNG chunks (imagegen.png), `--json`,
`--from-png`, grids, eval and the server's responses. Two text forms, each a lossless round trip:

- `to_infotext()` / `from_infotext()`: AUTOMATIC1111's `parameters` text (prompt lines, `Negative prompt: ...`, then
  one `Key: value, ...` line), which A1111, ComfyUI, civitai and sd_parsers read;
- `to_json()` / `from_json()`: a JSON object (our PNG chunk and `--json`).

The settings' own infotext names live on their dataclass fields (imagegen.settings), so an option added there is
recorded everywhere without a second list.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields

from . import __version__
from .errors import UserError
from .settings import DecoderSettings, PriorSettings

SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpm++": "DPM++ 2M", "euler": "Euler", "euler_a": "Euler a",
                 "unipc": "UniPC", "unclip": "unCLIP"}  # ours -> A1111's display names
SCHEDULERS_BY_SAMPLER = {v: k for k, v in SAMPLER_NAMES.items()}
NEGATIVE_PREFIX = "Negative prompt: "
_PARAM_KEY = re.compile(r"([A-Za-z][\w \-/]*): ")
_SIZE = re.compile(r"(\d+)x(\d+)")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # an adapter name a --lora spec can hold


@dataclass(frozen=True)
class MixPart:
    """One recorded ingredient of an unCLIP mix: a text, or the image file it came from."""

    weight: float
    text: str | None = None
    image: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in (("text", self.text), ("image", self.image), ("weight", self.weight)) if v is not None}


@dataclass(frozen=True)
class LoraUse:
    """An adapter active for the image: its multiplier per component, A1111 hash, file and step window."""

    name: str
    weights: dict  # component -> multiplier
    hash: str = ""
    path: str = ""
    window: tuple = (0.0, 1.0)  # (start, stop) fractions of the decoder steps its U-Net part acts in

    def to_dict(self) -> dict:
        return {"name": self.name, "weights": dict(self.weights), "hash": self.hash, "path": self.path,
                "window": list(self.window)}

    @classmethod
    def from_dict(cls, data: dict) -> "LoraUse":
        return cls(name=data["name"], weights=dict(data["weights"]), hash=data.get("hash", ""),
                   path=data.get("path", ""), window=tuple(data.get("window", (0.0, 1.0))))


@dataclass(frozen=True)
class Rerank:
    """Best of `candidates` by CLIP score: the image is candidate `chosen`."""

    candidates: int
    chosen: int
    clip_scores: tuple
    candidate_seeds: tuple

    def to_dict(self) -> dict:
        return {"candidates": self.candidates, "chosen": self.chosen, "clip_scores": list(self.clip_scores),
                "candidate_seeds": list(self.candidate_seeds)}

    @classmethod
    def from_dict(cls, data: dict) -> "Rerank":
        return cls(candidates=data["candidates"], chosen=data["chosen"], clip_scores=tuple(data["clip_scores"]),
                   candidate_seeds=tuple(data["candidate_seeds"]))


@dataclass(frozen=True)
class GenerationRecord:
    prompt: str  # as given, <lora:...> tags included; a mix is written `a:0.7 | b:0.3`
    negative_prompt: str
    seed: int  # the decoder's noise
    prior_seed: int  # the prior's noise
    prior: PriorSettings
    decoder: DecoderSettings
    model: str
    model_hash: str = ""  # imagegen.loading.fingerprint of the weights
    model_ref: str = ""  # what finds the model again: a preset name or an absolute path
    mix: tuple = ()  # MixPart...; empty for a plain prompt
    loras: tuple = ()  # LoraUse...
    rerank: Rerank | None = None
    batch_size: int = 1  # the pipeline call's batch, which --from-png runs again for bit-exact pixels
    batch_index: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    attention: str = "sdpa"
    version: str = __version__

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(prior=asdict(self.prior), decoder=asdict(self.decoder),
                    mix=[m.to_dict() for m in self.mix], loras=[lora.to_dict() for lora in self.loras],
                    rerank=self.rerank.to_dict() if self.rerank else None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationRecord":
        try:
            values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
            values.update(prior=PriorSettings(**data["prior"]), decoder=DecoderSettings(**data["decoder"]),
                          mix=tuple(MixPart(**m) for m in data.get("mix", ())),
                          loras=tuple(LoraUse.from_dict(lora) for lora in data.get("loras", ())),
                          rerank=Rerank.from_dict(data["rerank"]) if data.get("rerank") else None)
            return cls(**values)
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise UserError(f"not an imagegen generation record ({type(err).__name__}: {err})") from None

    @classmethod
    def from_json(cls, text: str) -> "GenerationRecord":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            raise UserError("the imagegen generation record is not valid JSON") from None
        if not isinstance(data, dict):
            raise UserError("the imagegen generation record is not a JSON object")
        return cls.from_dict(data)

    # ------------------------------------------------------------------ A1111 infotext
    def to_infotext(self) -> str:
        params = {
            **_settings_infotext(self.decoder),
            "Seed": self.seed,
            "Size": f"{self.decoder.width}x{self.decoder.height}",
            "Model hash": self.model_hash,
            "Model": self.model,
            **_settings_infotext(self.prior),
            "Prior seed": self.prior_seed,
            "Batch size": self.batch_size,
            "Batch pos": self.batch_index,
        }
        if self.loras:
            params.update(_loras_infotext(self.loras))
        if self.rerank:
            params["Rerank"] = json.dumps(self.rerank.to_dict())
            params["CLIP score"] = round(self.rerank.clip_scores[self.rerank.chosen], 2)  # for readers; derived
        if self.mix:
            params["Mix"] = json.dumps([m.to_dict() for m in self.mix], ensure_ascii=False)
        head = self.prompt + (f"\n{NEGATIVE_PREFIX}{self.negative_prompt}" if self.negative_prompt else "")
        if _split_head(head) != (self.prompt, self.negative_prompt):  # text a reader would split elsewhere
            params["Prompt"], params["Negative"] = self.prompt, self.negative_prompt
        params.update({"Model ref": self.model_ref, "Device": self.device, "Dtype": self.dtype,
                       "Attention": self.attention, "Version": f"imagegen {self.version}"})
        return head + "\n" + ", ".join(f"{key}: {_quote(value)}" for key, value in params.items() if value != "")

    @classmethod
    def from_infotext(cls, text: str) -> "GenerationRecord":
        head, _, last = text.rpartition("\n")
        params = parse_params_line(last)
        prompt, negative = _split_head(head)
        if "Prompt" in params:  # the exact texts, where the lines above would be split elsewhere
            prompt, negative = params["Prompt"], params.get("Negative", "")
        try:
            width, height = parse_size(params["Size"])
            version = params["Version"]
            if not version.startswith("imagegen "):
                raise UserError(f"infotext of {version!r}, not of imagegen")
            json_field = lambda key, default: json.loads(params[key]) if key in params else default  # noqa: E731
            return cls(
                prompt=prompt, negative_prompt=negative, seed=int(params["Seed"]), prior_seed=int(params["Prior seed"]),
                prior=_settings_from_infotext(PriorSettings, params),
                decoder=_settings_from_infotext(DecoderSettings, params, width=width, height=height),
                model=params.get("Model", ""), model_hash=params.get("Model hash", ""),
                model_ref=params.get("Model ref", ""),
                mix=tuple(MixPart(**m) for m in json_field("Mix", [])),
                loras=_loras_from_infotext(params),
                rerank=Rerank.from_dict(json_field("Rerank", None)) if "Rerank" in params else None,
                batch_size=int(params["Batch size"]), batch_index=int(params["Batch pos"]),
                device=params.get("Device", ""), dtype=params.get("Dtype", ""), attention=params.get("Attention", ""),
                version=version.removeprefix("imagegen "))
        except KeyError as err:
            raise UserError(f"the infotext has no {err.args[0]!r} field; it was not written by imagegen") from None
        except (ValueError, TypeError, AttributeError) as err:
            raise UserError(f"cannot read the infotext's parameters: {err}") from None

    # ------------------------------------------------------------------ replay
    def batch_call(self) -> dict:
        """The keyword arguments of a pipeline call that makes this image again as image `batch_index` of a batch
        shaped like the one that made it (CPU kernels round by batch shape, so the same shape gives the same bits)."""
        first = lambda seed: (seed - self.batch_index) % (2**32)  # noqa: E731  (image i of a batch: seed + i)
        call = dict(negative_prompt=self.negative_prompt, num_images=self.batch_size, seed=first(self.seed),
                    prior_seed=first(self.prior_seed), prior=self.prior, decoder=self.decoder)
        if self.mix:
            from .result import MixItem

            call["mix"] = [MixItem(text=m.text, weight=m.weight) if m.text is not None else
                           MixItem.from_file(m.image, m.weight) for m in self.mix]
        else:
            call["prompt"] = self.prompt
        from .lora.requests import LoraRequest

        call["loras"] = [LoraRequest(lora.path or lora.name, dict(lora.weights), tuple(lora.window))
                         for lora in self.loras]
        return call


def _number(value: float) -> str:
    """The shortest text that reads back as exactly `value` (1.0 -> "1", 0.1 -> "0.1")."""
    short = format(value, "g")
    return short if float(short) == value else repr(value)


def _loras_infotext(loras) -> dict:
    """A1111's `Lora hashes` (name: hash), our `Loras` (each as a --lora spec, every component and the window) and
    `Lora files`; names a spec cannot hold make `Loras` a JSON list of whole LoraUse records instead."""
    if not all(_PLAIN_NAME.fullmatch(lora.name) for lora in loras):
        return {"Loras": json.dumps([lora.to_dict() for lora in loras], ensure_ascii=False)}
    short = {"text_encoder": "te"}
    specs = [lora.name + "".join(f":{short.get(c, c)}={_number(w)}" for c, w in lora.weights.items())
             + f":start={_number(lora.window[0])}:stop={_number(lora.window[1])}" for lora in loras]
    return {"Lora hashes": ", ".join(f"{lora.name}: {lora.hash}" for lora in loras), "Loras": ", ".join(specs),
            "Lora files": json.dumps([lora.path for lora in loras], ensure_ascii=False)}


def _loras_from_infotext(params: dict) -> tuple:
    text = params.get("Loras")
    if not text:
        return ()
    if text.startswith("["):
        return tuple(LoraUse.from_dict(d) for d in json.loads(text))
    from .lora.requests import parse_spec

    requests = [parse_spec(spec) for spec in text.split(", ")]
    hashes = [item.rpartition(": ")[2] for item in params.get("Lora hashes", "").split(", ")]
    hashes += [""] * (len(requests) - len(hashes))
    paths = json.loads(params.get("Lora files", "[]")) or [""] * len(requests)
    return tuple(LoraUse(name=r.name, weights=dict(r.weights), hash=h, path=path, window=tuple(r.window))
                 for r, h, path in zip(requests, hashes, paths))


def _settings_infotext(settings) -> dict:
    """{infotext key: value} of a settings dataclass, from its fields' `infotext` metadata."""
    out = {}
    for f in fields(settings):
        key = f.metadata.get("infotext")
        if key:
            value = getattr(settings, f.name)
            out[key] = SAMPLER_NAMES.get(value, value) if f.name == "scheduler" else value
    return out


def _settings_from_infotext(cls, params: dict, **given):
    values = dict(given)
    for f in fields(cls):
        key = f.metadata.get("infotext")
        if key and key in params:
            text = params[key]
            if f.name == "scheduler":
                values[f.name] = SCHEDULERS_BY_SAMPLER.get(text, text)
            else:
                values[f.name] = type(f.default)(float(text)) if isinstance(f.default, float) else int(text)
    return cls(**values)


def _quote(value) -> str:
    """A1111's rule, made exact: a value holding a separator, a quote or outer spaces is written as a JSON string."""
    text = repr(value) if isinstance(value, float) else str(value)
    if any(ch in text for ch in ',:"\n\r\\') or text != text.strip() or not text.isprintable():
        return json.dumps(text, ensure_ascii=False)
    return text


def parse_params_line(line: str) -> dict:
    """`Key: value, Key: "quoted, value", ...` -> {key: text}; a UserError for anything else."""
    params, pos, decoder = {}, 0, json.JSONDecoder()
    while pos < len(line):
        match = _PARAM_KEY.match(line, pos)
        if not match:
            raise UserError(f"cannot read the infotext's parameters line at {line[pos:pos + 40]!r}")
        pos = match.end()
        if line.startswith('"', pos):
            try:
                value, pos = decoder.raw_decode(line, pos)
            except json.JSONDecodeError:
                raise UserError(f"a quoted value in the infotext is not closed: {line[pos:pos + 40]!r}") from None
        else:
            end = line.find(",", pos)
            end = len(line) if end < 0 else end
            value, pos = line[pos:end], end
        params[match.group(1)] = str(value)
        if line.startswith(", ", pos):
            pos += 2
        elif pos < len(line):
            raise UserError(f"cannot read the infotext's parameters line at {line[pos:pos + 40]!r}")
    return params


def _split_head(head: str) -> tuple[str, str]:
    """The prompt and negative prompt of the lines above the parameters (as A1111 splits them)."""
    lines = head.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(NEGATIVE_PREFIX):
            return "\n".join(lines[:i]), "\n".join([line[len(NEGATIVE_PREFIX):]] + lines[i + 1:])
    return head, ""


def parse_size(text: str) -> tuple[int, int]:
    """'64x48' -> (64, 48); a UserError for anything else (the range is DecoderSettings.validate's)."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise UserError(f"size {text!r} should be WIDTHxHEIGHT, e.g. 64x64")
    return int(match.group(1)), int(match.group(2))

