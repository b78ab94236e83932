"""Pipeline configs: defaults, file formats, and errors that name the key, the value and what is allowed."""

import json

import pytest

import zoprune
from zoprune import Budget, ConfigError, PipelineConfig


def test_defaults_are_the_papers():
    config = PipelineConfig()
    assert config.scorer.name == "zo_sensitivity" and config.selector.name == "coverage"
    scorer_cls, params = config.component("scorer")
    assert params.directions == 64 and params.step == 0.01
    assert config.component("selector")[1].fusion == "product"
    assert config.scoring_dtype == "float32" and config.adapter is None


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_round_trip_through_files(tmp_path, suffix):
    config = PipelineConfig(scorer={"name": "zo_sensitivity", "directions": 16, "step": 0.1},
                            selector={"name": "coverage", "fusion": "sum"}, budget={"ratio": 0.25}, seed=7)
    path = tmp_path / f"pipeline{suffix}"
    config.save(path)
    assert PipelineConfig.load(path) == config


def test_scorer_none_round_trips_through_toml(tmp_path, scoreless_selector):
    # TOML has no null: "no scorer" is written and read as the string "none"
    config = PipelineConfig(scorer=None, selector=scoreless_selector)
    path = tmp_path / "p.toml"
    config.save(path)
    assert 'scorer = "none"' in path.read_text()
    assert PipelineConfig.load(path).scorer is None
    with pytest.raises(ConfigError, match="needs scores"):
        PipelineConfig(scorer=None, selector="topk")


def test_yaml_file_with_shorthands(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text("selector: topk\nbudget: 32\nscorer:\n  name: zo_sensitivity\n  directions: 8\n")
    config = PipelineConfig.load(path)
    assert config.selector.name == "topk" and config.budget.keep == 32
    assert config.component("scorer")[1].directions == 8


@pytest.mark.parametrize("data, fragments", [
    ({"budget": {"keep": 0}}, ["budget.keep", "0", "greater than or equal to 1"]),
    ({"budget": {"keep": -3}}, ["budget.keep", "-3"]),
    ({"budget": {"ratio": 1.5}}, ["budget.ratio", "1.5", "less than or equal to 1"]),
    ({"budget": {"ratio": 0.0}}, ["budget.ratio", "greater than 0"]),
    ({"budget": {"keep": 4, "ratio": 0.5}}, ["exactly one"]),
    ({"bugdet": 64}, ["bugdet", "unknown key", "allowed keys", "budget"]),
    ({"budget": {"kep": 4}}, ["budget.kep", "unknown key", "keep, ratio"]),
    ({"scorer": {"name": "zo_sensitivity", "directions": 0}}, ["scorer.directions", "0", "greater than or equal"]),
    ({"scorer": {"name": "zo_sensitivity", "stepp": 0.1}}, ["scorer.stepp", "unknown key", "directions", "step"]),
    ({"selector": {"name": "coverage", "fusion": "max"}}, ["selector.fusion", "'max'", "product", "sum"]),
    ({"scorer": "no_such_scorer"}, ["unknown scorer 'no_such_scorer'", "zo_sensitivity"]),
    ({"selector": "nope"}, ["unknown selector 'nope'", "coverage", "topk"]),
    ({"selector": {"nam": "coverage"}}, ["selector", "no `name` key", "keys given: nam"]),
    ({"scoring_dtype": "int8"}, ["scoring_dtype", "int8", "float32"]),
    ({"seed": "abc"}, ["seed", "abc"]),
])
def test_errors_name_key_value_and_allowed(data, fragments):
    with pytest.raises(ConfigError) as info:
        PipelineConfig(**data)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_a_component_error_is_headed_once():
    with pytest.raises(ConfigError) as info:
        PipelineConfig(selector={"name": "visionzip", "contextual": 3, "contextual_ratio": 0.1})
    assert str(info.value).startswith("invalid config: give `contextual`")
    assert str(info.value).count("invalid config") == 1


def test_every_components_problems_are_reported():
    with pytest.raises(ConfigError) as info:
        PipelineConfig(scorer={"name": "zo_sensitivity", "directions": 0, "step": -1},
                       selector={"name": "coverage", "fusion": "max"})
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid config:"
    assert [line.split(" = ")[0].strip() for line in lines[1:]] == ["scorer.directions", "scorer.step",
                                                                     "selector.fusion"]


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"budget": {"keep": 0}}))
    with pytest.raises(ConfigError, match="bad.json.*budget.keep"):
        PipelineConfig.load(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("budget: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PipelineConfig.load(broken)
    with pytest.raises(ConfigError, match="not found"):
        PipelineConfig.load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown config format"):
        (tmp_path / "c.ini").write_text("x")
        PipelineConfig.load(tmp_path / "c.ini")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        PipelineConfig.load(listing)


@pytest.mark.parametrize("budget, n, expected", [
    (Budget(keep=64), 576, 64), (Budget(keep=1000), 576, 576), (Budget(ratio=0.25), 576, 144),
    (Budget(ratio=1.0), 10, 10), (Budget(ratio=0.01), 10, 1), (Budget(ratio=0.5), 5, 3),
])
def test_budget_tokens(budget, n, expected):
    assert budget.tokens_for(n) == expected


def test_configs_are_immutable():
    from pydantic import ValidationError

    config = PipelineConfig()
    with pytest.raises(ValidationError, match="seed\n.*Instance is frozen"):
        config.seed = 3  # frozen: a pruned model's config cannot drift from what it was built with
    with pytest.raises(ValidationError, match="keep\n.*Instance is frozen"):
        config.budget.keep = 3  # nested parts too
    assert config.seed == 0 and config.budget.keep == 64
    assert zoprune.PipelineConfig(seed=3).seed == 3
