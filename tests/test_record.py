"""GenerationRecord: both text forms are lossless round trips, over prompts with commas, colons, quotes, newlines,
non-ASCII text, <lora:...> tags and extreme numbers; and AUTOMATIC1111's own parser reads the infotext."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegen.errors import UserError
from imagegen.record import GenerationRecord, LoraUse, MixPart, Rerank, parse_params_line
from imagegen.settings import DECODER_SCHEDULERS, MAX_SEED, PRIOR_SCHEDULERS, DecoderSettings, PriorSettings

from test_cli import a1111_parse

EXAMPLES = 600
TRICKY = ["a, b", "x: y", 'say "hi"', "line\nbreak", "Negative prompt: no", "<lora:heart:0.5>", "ünïcødé 猫",
          " padded ", "back\\slash", "tab\there", "Steps: 3, Seed: 1", "\u2028sep"]
text = st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(TRICKY),
                 st.lists(st.sampled_from(TRICKY), min_size=1, max_size=4).map("".join))
prompts = text.filter(lambda t: t.strip())
numbers = st.floats(allow_nan=False, allow_infinity=False, width=64)
seeds = st.integers(0, MAX_SEED)
small = st.integers(1, 10**9)
names = st.one_of(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", fullmatch=True), text)
fraction = st.floats(0, 1, allow_nan=False)

loras = st.builds(
    LoraUse, name=names,
    weights=st.fixed_dictionaries({c: numbers for c in ("unet", "prior", "text_encoder", "vae")}),
    hash=st.from_regex(r"[0-9a-f]{12}", fullmatch=True), path=text,
    window=st.tuples(fraction, fraction).filter(lambda w: w[0] < w[1]))
mix_parts = st.one_of(st.builds(MixPart, weight=numbers, text=prompts), st.builds(MixPart, weight=numbers, image=text))
reranks = st.builds(lambda n, scores, chosen_seed: Rerank(candidates=n, chosen=chosen_seed % n,
                                                          clip_scores=tuple(scores[:n]) + (0.0,) * (n - len(scores[:n])),
                                                          candidate_seeds=tuple(range(n))),
                    st.integers(1, 6), st.lists(numbers, max_size=6), st.integers(0, 100))
records = st.builds(
    GenerationRecord, prompt=prompts, negative_prompt=st.one_of(st.just(""), text), seed=seeds, prior_seed=seeds,
    prior=st.builds(PriorSettings, steps=small, guidance=numbers, scheduler=st.sampled_from(list(PRIOR_SCHEDULERS))),
    decoder=st.builds(DecoderSettings, steps=small, guidance=numbers, scheduler=st.sampled_from(list(DECODER_SCHEDULERS)),
                      width=small, height=small),
    model=names, model_hash=st.from_regex(r"[0-9a-f]{16}", fullmatch=True), model_ref=text,
    mix=st.lists(mix_parts, max_size=3).map(tuple), loras=st.lists(loras, max_size=3).map(tuple),
    rerank=st.one_of(st.none(), reranks), batch_size=small, batch_index=st.integers(0, 10**6),
    device=st.sampled_from(["cpu", "cuda", "cuda:1", "mps"]), dtype=st.sampled_from(["float32", "bfloat16", "float16"]),
    attention=st.sampled_from(["sdpa", "xformers"]))

PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(records)
def test_infotext_round_trip(record):
    assert GenerationRecord.from_infotext(record.to_infotext()) == record


@PROPERTY
@given(records)
def test_json_round_trip(record):
    assert GenerationRecord.from_json(record.to_json()) == record
    assert GenerationRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_user_error(garbage):
    for parse in (GenerationRecord.from_infotext, GenerationRecord.from_json, parse_params_line):
        try:
            parse(garbage)
        except UserError:
            pass


def plain_record(**changes):
    values = dict(prompt="a red circle, large", negative_prompt="blurry, dark", seed=7, prior_seed=9,
                  prior=PriorSettings(steps=3), decoder=DecoderSettings(steps=4, width=64, height=32, scheduler="dpm++"),
                  model="shapes", model_hash="0123456789abcdef",
                  loras=(LoraUse("heart", {"unet": 0.5, "prior": 1.0, "text_encoder": 0.0, "vae": 1.0}, "abcdef123456",
                                 "/x/heart.safetensors", (0.4, 1.0)),))
    return GenerationRecord(**{**values, **changes})


def test_a1111_parser_reads_the_fields_it_knows():
    info = a1111_parse(plain_record().to_infotext())
    assert info["Prompt"] == "a red circle, large" and info["Negative prompt"] == "blurry, dark"
    assert (info["Steps"], info["Sampler"], info["CFG scale"], info["Seed"]) == ("4", "DPM++ 2M", "4.0", "7")
    assert (info["Size-1"], info["Size-2"], info["Model"], info["Model hash"]) == ("64", "32", "shapes",
                                                                                "0123456789abcdef")
    assert info["Lora hashes"] == "heart: abcdef123456"
    assert info["Loras"] == "heart:unet=0.5:prior=1:te=0:vae=1:start=0.4:stop=1"


def test_a_prompt_a1111_would_split_elsewhere_is_kept_exactly():
    record = plain_record(prompt="first\nNegative prompt: not really", negative_prompt="")
    assert "Prompt: " in record.to_infotext().rpartition("\n")[2]
    assert GenerationRecord.from_infotext(record.to_infotext()) == record


@pytest.mark.parametrize("text,message", [
    ("a red circle\nSteps: 3", "no 'Size' field"),
    ("x\nSteps 3, Seed: 1", "cannot read the infotext's parameters line"),
    ('x\nPrompt: "unclosed', "is not closed"),
    ("x\nSize: 64x64, Seed: 1, Prior seed: 1, Version: ComfyUI", "not of imagegen"),
])
def test_bad_infotext_is_one_user_error(text, message):
    with pytest.raises(UserError, match=message):
        GenerationRecord.from_infotext(text)
