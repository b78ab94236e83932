"""Tests of the example plugin, as its author would write them: through zoprune's public API, on the tiny model
zoprune.testing builds in memory. Run them with `python -m pytest` from the plugin's folder."""

import pytest
import torch

import zoprune
from zoprune.testing import llava_batch, tiny_llava


def test_contrast_and_stratified_from_a_yaml_file(tmp_path):
    config = tmp_path / "contrast.yaml"
    config.write_text("scorer: {name: contrast, center: median, power: 2}\n"
                      "selector: {name: stratified, order: raster}\n"
                      "budget: 4\n")
    model = tiny_llava()  # a random LLaVA with 16 visual tokens (a 4 x 4 grid) per image, built in memory
    inputs = llava_batch(model, prompts=[[6, 7, 8]], images_per_prompt=[1])
    pruned = zoprune.prune(model, config)

    assert pruned.scorer.config.center == "median" and pruned.scorer.config.power == 2
    (selection,) = pruned.select(**inputs)
    # raster slices of 16 / 4 tokens: one kept token per row of the 4 x 4 grid, the most unusual of its row
    assert (selection.kept // 4).tolist() == [0, 1, 2, 3]
    scores = selection.scores.view(4, 4)
    assert selection.kept.tolist() == [4 * row + int(scores[row].argmax()) for row in range(4)]
    # the scores are squared distances from the median token (power: 2)
    embeddings = pruned.adapter.extract(inputs, pruned.adapter.projector(), torch.float32)[0].embeddings
    expected = (embeddings - embeddings.median(0).values).norm(dim=-1) ** 2
    torch.testing.assert_close(selection.scores, expected)


def test_a_bad_parameter_in_the_file_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("scorer: {name: contrast, power: 9}\nselector: stratified\n")
    with pytest.raises(zoprune.ConfigError, match=r"bad.yaml: .*scorer.power = 9: .*less than or equal to 4"):
        zoprune.PipelineConfig.load(config)


def test_every_token_kept_gives_the_unpruned_answers():
    model = tiny_llava()
    inputs = llava_batch(model, prompts=[[6, 7], [8, 9, 10]], images_per_prompt=[1, 2])  # left-padded batch
    pruned = zoprune.prune(model, {"scorer": "contrast", "selector": "stratified", "budget": 16})
    expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(pruned.generate(**inputs, max_new_tokens=3, do_sample=False), expected)
    assert [s.num_kept for s in pruned.last_selection] == [16, 16, 16]


def test_the_plugin_is_registered_under_its_distribution():
    registry = zoprune.get_registry()
    assert registry.get("scorer", "contrast").distribution == "zoprune-example"
    assert registry.get("selector", "stratified").distribution == "zoprune-example"
    assert registry.method("contrast-stratified").config == {"scorer": "contrast", "selector": "stratified"}
