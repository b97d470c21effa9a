"""Heterogeneous batches (a list of prompts, each with its own seeds), the per-step callback and the interrupt flag,
and making one image of a mixed batch again from its record."""
import threading

import numpy as np
import pytest

from imagegen import StepInfo, UserError
from imagegen.errors import Interrupted

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow triangle", "a white cross", "a small red heart",
           "a large blue circle", "a purple square at the top"]
ONE_LEVEL = 1 / 255  # the pixels of an 8-bit image


def test_a_list_of_prompts_equals_separate_calls(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    seeds = [11 * i for i in range(len(PROMPTS))]
    negatives = ["", "dark"] * 4
    batch = tiny_pipe(PROMPTS, seed=seeds, negative_prompt=negatives, prior=prior, decoder=decoder, progress=False)
    assert [r.prompt for r in batch.records] == PROMPTS and batch.seeds == seeds
    assert [r.negative_prompt for r in batch.records] == negatives and batch.prior_seeds == seeds
    alone = [tiny_pipe(p, seed=s, negative_prompt=n, prior=prior, decoder=decoder, progress=False).pixels[0]
             for p, s, n in zip(PROMPTS, seeds, negatives)]
    assert np.abs(batch.pixels - np.stack(alone)).max() <= ONE_LEVEL
    assert np.abs(batch.pixels[0] - batch.pixels[1]).max() > 0.05  # different prompts, different images


def test_each_prompt_gets_num_images_with_seed_plus_k(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    result = tiny_pipe(PROMPTS[:2], seed=[5, 50], prior_seed=[7, 70], num_images=2, prior=prior, decoder=decoder,
                       progress=False)
    assert result.seeds == [5, 6, 50, 51] and result.prior_seeds == [7, 8, 70, 71]
    assert [r.batch_index for r in result.records] == [0, 1, 2, 3] and result.records[3].batch_size == 4


def test_an_image_of_a_mixed_batch_is_made_again_bit_exactly_from_its_record(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    batch = tiny_pipe(PROMPTS[:4], seed=[1, 2, 3, 4], negative_prompt="dark", prior=prior, decoder=decoder,
                      progress=False)
    for index in (0, 2):
        record = batch.records[index]
        again = tiny_pipe(**record.batch_call(), progress=False)
        assert np.array_equal(again.pixels[index], batch.pixels[index])
        assert again.records[index] == record


@pytest.mark.parametrize("call,message", [
    (dict(prompt=PROMPTS[:2], seed=[1]), "seed is a list of 1; give one per prompt"),
    (dict(prompt=PROMPTS[:2], negative_prompt=["x"] * 3), "negative prompt is a list of 3"),
    (dict(prompt=[]), "a non-empty list of texts"),
    (dict(prompt=["a red circle <lora:a:1>", "a blue square"]), "must ask for the same LoRA adapters"),
    (dict(prompt="a red circle", loras=[3]), "a LoRA adapter is a spec like 'heart:0.8'"),
    (dict(prompt="a red\x00 circle"), "control character '\\\\x00' at position 5"),
])
def test_bad_batches_are_one_user_error(tiny_pipe, fast_settings, call, message):
    prior, decoder = fast_settings
    with pytest.raises(UserError, match=message):
        tiny_pipe(**call, prior=prior, decoder=decoder, progress=False)


def test_the_step_callback_sees_every_step_of_both_loops(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    steps = []
    result = tiny_pipe(PROMPTS[:2], seed=[1, 2], prior=prior, decoder=decoder, progress=False,
                       callback_on_step_end=steps.append)
    assert all(isinstance(s, StepInfo) for s in steps)
    assert [(s.stage, s.index, s.total) for s in steps] == (
        [("prior", i, prior.steps) for i in range(prior.steps)] + [("decoder", i, decoder.steps) for i in range(decoder.steps)])
    assert tuple(steps[-1].latents.shape) == (2, tiny_pipe.unet.config.in_channels, 16, 16)
    assert tuple(steps[0].latents.shape) == (2, tiny_pipe.prior.config.embedding_dim)
    assert len(result.images) == 2


def test_the_interrupt_flag_stops_between_steps_and_the_pipeline_runs_again(tiny_pipe, fast_settings):
    prior, decoder = fast_settings
    stop, seen = threading.Event(), []

    def watch(info):
        seen.append((info.stage, info.index))
        if info.stage == "decoder" and info.index == 1:
            stop.set()

    with pytest.raises(Interrupted, match="after decoder step 2 of 4"):
        tiny_pipe("a red circle", seed=1, prior=prior, decoder=decoder, progress=False, callback_on_step_end=watch,
                  interrupt=stop)
    assert seen[-1] == ("decoder", 1)
    first = tiny_pipe("a red circle", seed=1, prior=prior, decoder=decoder, progress=False)
    assert np.array_equal(first.pixels, tiny_pipe("a red circle", seed=1, prior=prior, decoder=decoder,
                                                  progress=False).pixels)
