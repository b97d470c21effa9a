"""Every parser a user feeds either parses or raises UserError — never anything else — for arbitrary text: LoRA tags
and --lora specs, prompt files (any bytes), size strings, mix items, preset TOML. (Infotext and record JSON:
tests/test_record.py.)"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegen.commands.generate import parse_mix_item, read_prompts_file
from imagegen.errors import UserError
from imagegen.lora.requests import parse_spec, split_prompt
from imagegen.presets import load_preset_file
from imagegen.record import parse_size

EXAMPLES = 600
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PIECES = ["<lora:", ">", ":", "=", "unet", "prior", "te", "vae", "start", "stop", "0.5", "1", "-2", "nan", "inf", "x",
          "1e999", ",", " ", "\n", "[", "]", '"', "{}", "=", "toml", "64", "x", "\x00", "é"]
texty = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(PIECES), max_size=12).map("".join))


def parses_or_user_error(parse, value):
    try:
        return parse(value)
    except UserError as err:
        assert "\n" not in str(err), str(err)
        return None


@PROPERTY
@given(texty)
def test_lora_specs(text):
    request = parses_or_user_error(parse_spec, text)
    if request is not None:
        assert 0 <= request.window[0] < request.window[1] <= 1
        assert parse_spec(request.describe()) == request


@PROPERTY
@given(texty)
def test_prompt_lora_tags(text):
    parsed = parses_or_user_error(split_prompt, text)
    if parsed is not None:
        assert "<lora:" not in parsed[0] or ">" not in parsed[0].split("<lora:", 1)[1]


@PROPERTY
@given(texty)
def test_size_strings(text):
    size = parses_or_user_error(parse_size, text)
    if size is not None:
        width, _, height = text.partition("x")
        assert size == (int(width), int(height))


@PROPERTY
@given(texty.filter(lambda t: "/" not in t and "\x00" not in t))
def test_mix_items(text):
    item = parses_or_user_error(parse_mix_item, text)
    if item is not None and item.text is not None:
        parses_or_user_error(lambda _: item.validate(), None)
        assert item.text in text


@PROPERTY
@given(st.binary(max_size=200))
def test_prompt_files_of_any_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("p") / "prompts.txt"
    path.write_bytes(data)
    prompts = parses_or_user_error(read_prompts_file, str(path))
    if prompts is not None:
        assert prompts and all(p.strip() == p and p for p in prompts)


@PROPERTY
@given(st.one_of(texty, st.builds(lambda a, b: f'prior = "{a}"\ndecoder = "{b}"\n[decoder_defaults]\n{a} = {b}\n',
                                  st.text(max_size=10), st.text(max_size=10))))
def test_preset_toml(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("preset") / "p.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    preset = parses_or_user_error(load_preset_file, path)
    if preset is not None:
        assert isinstance(preset.prior, str) and isinstance(preset.decoder, str)


@pytest.mark.parametrize("text", ["64x64", "512x768"])
def test_size_strings_read_back(text):
    assert "x".join(map(str, parse_size(text))) == text
