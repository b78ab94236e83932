"""Helpers the adapters share (adapters/common.py), on cases the family tests do not reach: inputs that do not add
up and models that name their padding id only in the language model's config."""

from types import SimpleNamespace

import pytest
import torch

from zoprune.errors import InputError
from zoprune_plugins.adapters.common import assign_to_prompts, pad_token_id


def test_inputs_fill_prompts_in_order():
    assert assign_to_prompts(torch.tensor([8, 0, 4]), [4, 4, 4], "image") == [0, 0, 2]


@pytest.mark.parametrize("counts, lengths", [([4, 4], [4]),  # the inputs run out before the second prompt is full
                                             ([4, 2], [4, 4]),  # the second input does not fit the second prompt
                                             ([4], [4, 4])])  # an input left over
def test_inputs_that_do_not_match_the_placeholders_are_an_input_error(counts, lengths):
    with pytest.raises(InputError, match="placeholder"):
        assign_to_prompts(torch.tensor(counts), lengths, "image")


def test_pad_id_comes_from_generation_config_then_text_config_then_config():
    def model(generation=None, text=None, top=None):
        config = SimpleNamespace(pad_token_id=top)
        if text is not None:
            config.text_config = SimpleNamespace(pad_token_id=text)
        return SimpleNamespace(generation_config=SimpleNamespace(pad_token_id=generation), config=config)

    assert pad_token_id(model(generation=5, text=6, top=7)) == 5
    assert pad_token_id(model(text=6, top=7)) == 6
    assert pad_token_id(model(top=7)) == 7
    assert pad_token_id(model()) == 0
