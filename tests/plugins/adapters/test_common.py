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


def test_drop_columns_repads_on_the_batch_side_keeping_the_shared_padding():
    from zoprune_plugins.adapters.common import drop_columns

    t, f = True, False
    # left padded, every row padded by at least 1: rows shrink, the shared padding stays, ids are padded with pad_id
    left = {"input_ids": torch.tensor([[0, 0, 5, 6, 7], [0, 5, 6, 7, 8]]),
            "attention_mask": torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]]),
            "token_type_ids": torch.tensor([[0, 0, 1, 2, 3], [0, 1, 2, 3, 4]])}
    out = drop_columns(left, torch.tensor([[f, f, f, t, f], [f, f, t, f, f]]), pad_id=9)
    assert out["input_ids"].tolist() == [[9, 9, 5, 7], [9, 5, 7, 8]]
    assert out["attention_mask"].tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]
    assert out["token_type_ids"].tolist() == [[0, 0, 1, 3], [0, 1, 3, 4]]  # other per-token tensors padded with 0
    # right padded: padding goes back on the right
    right = {"input_ids": torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    out = drop_columns(right, torch.tensor([[f, t, f, f], [f, f, f, f]]), pad_id=9)
    assert out["input_ids"].tolist() == [[5, 7, 9, 9], [5, 6, 7, 8]]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    # no padding at all: left, as generation wants
    unpadded = {"input_ids": torch.tensor([[5, 6, 7], [5, 6, 8]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
    out = drop_columns(unpadded, torch.tensor([[f, t, f], [f, f, f]]), pad_id=9)
    assert out["input_ids"].tolist() == [[9, 5, 7], [5, 6, 8]]
    # no attention mask: every token is real
    out = drop_columns({"input_ids": torch.tensor([[5, 6, 7]])}, torch.tensor([[f, t, f]]), pad_id=9)
    assert out["input_ids"].tolist() == [[5, 7]] and out["attention_mask"].tolist() == [[1, 1]]
