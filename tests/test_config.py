"""Tests of :mod:`lmcollapse.config`: loading, dotted overrides, coercion and validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lmcollapse.config import config_diff, load_config
from lmcollapse.errors import ConfigError
from lmcollapse.settings import ExperimentConfig, PolicySpec

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIG_FILES = [p for p in sorted(CONFIG_DIR.glob("*.yaml")) + sorted(CONFIG_DIR.glob("*.yml"))
                if not p.name.endswith(".claims.yaml")]
#: a study's declared claims (lmcollapse claims), beside its config
CLAIMS_FILES = sorted(CONFIG_DIR.glob("*.claims.yaml"))


def config_error(overrides: list[str] | None = None, path: Path | str | None = None) -> str:
    """The message of the ConfigError that loading must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    return str(info.value)


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- shipped configs


def test_configs_folder_is_not_empty() -> None:
    assert CONFIG_FILES, f"no YAML configs in {CONFIG_DIR}"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_loads_and_validates(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    # the file's explicit values survive loading (spot check on what every config sets)
    raw = yaml.safe_load(path.read_text())
    assert cfg.experiment == raw.get("experiment", ExperimentConfig().experiment)
    assert [p.key for p in cfg.policies] == [
        (p.get("label") or p["name"]) if isinstance(p, dict) else p
        for p in raw.get("policies", ["replace"])
    ]
    # the resolved config round-trips: its dump loads back to the same config
    assert _roundtrip(cfg) == cfg


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_shipped_config_opens_with_launch_comment(path: Path) -> None:
    first = path.read_text().lstrip().splitlines()[0]
    assert first.startswith("#"), f"{path.name} should open with a comment giving its command"


@pytest.mark.parametrize("path", CLAIMS_FILES, ids=lambda p: p.name)
def test_shipped_claims_name_cells_of_their_config(path: Path) -> None:
    """Every claims file loads, sits beside its config and names that config's cells (or
    populations) and generations."""
    from lmcollapse.grid import Grid
    from lmcollapse.report.claims import load_claims

    config = CONFIG_DIR / path.name.replace(".claims.yaml", ".yaml")
    cfg = load_config(config)
    assert path.read_text().startswith("#")
    grid = Grid.of(cfg)
    cells = set(grid.cells) | set(grid.lineages)  # a population, or one of its participants
    for claim in load_claims(path):
        for side in (claim.a, claim.b):
            cell, _, gen = side.partition("/gen_")
            assert cell in cells, (claim.id, side, sorted(cells))
            assert not gen or 0 <= int(gen) <= cfg.generations


def _roundtrip(cfg: ExperimentConfig) -> ExperimentConfig:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resolved.yaml"
        path.write_text(yaml.safe_dump(cfg.to_dict()))
        return load_config(path)


# ---------------------------------------------------------------- overrides and coercion


def test_defaults_validate() -> None:
    assert load_config() == ExperimentConfig()


def test_dotted_override_coerces_float() -> None:
    cfg = load_config(None, ["train.lr=5e-5"])
    assert type(cfg.train.lr) is float
    assert cfg.train.lr == 5e-05


def test_yaml_file_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "train:\n  lr: 5e-5\n  epochs: 2\n")
    assert yaml.safe_load(path.read_text())["train"]["lr"] == "5e-5"  # PyYAML: a string
    cfg = load_config(path)
    assert type(cfg.train.lr) is float and cfg.train.lr == 5e-05
    assert cfg.train.epochs == 2


def test_overrides_apply_on_top_of_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "generations: 3\ntrain:\n  lr: 1.0e-3\n  epochs: 2\n")
    cfg = load_config(path, ["train.lr=2e-4", "generations=4"])
    assert cfg.train.lr == 2e-4
    assert cfg.train.epochs == 2  # sibling of an overridden key is kept
    assert cfg.generations == 4


def test_override_list_and_literal() -> None:
    cfg = load_config(None, ["seeds=[0,1]", "generate.strategy=greedy"])
    assert cfg.seeds == [0, 1]
    assert cfg.generate.strategy == "greedy"


def test_scalar_for_list_field_becomes_one_item_list() -> None:
    assert load_config(None, ["seeds=3"]).seeds == [3]


def test_int_from_float_string_and_integral_float() -> None:
    cfg = load_config(None, ["train.budget_tokens=1e6", "train.batch_size=16.0"])
    assert cfg.train.budget_tokens == 1_000_000 and type(cfg.train.budget_tokens) is int
    assert cfg.train.batch_size == 16 and type(cfg.train.batch_size) is int


def test_nested_sections_override() -> None:
    cfg = load_config(None, [
        "data.source=synthetic", "data.synthetic.vocab_size=300",
        "model.source=scratch", "model.scratch.arch=gpt2", "metrics.perplexity.stride=32",
    ])
    assert cfg.data.source == "synthetic"
    assert cfg.data.synthetic.vocab_size == 300
    assert cfg.data.synthetic.branching == 16  # untouched default
    assert cfg.model.scratch.arch == "gpt2"
    assert cfg.metrics.perplexity.stride == 32


def test_nested_sections_from_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "data:\n  source: synthetic\n  synthetic:\n    seed: 7\n"
                                "  block_tokens: 32\ngenerate:\n  prompt_tokens: 16\n")
    cfg = load_config(path)
    assert cfg.data.synthetic.seed == 7
    assert cfg.data.block_tokens == 32
    assert cfg.generate.prompt_tokens == 16


def test_bool_override() -> None:
    assert load_config(None, ["generate.keep_prompt=true"]).generate.keep_prompt is True
    assert load_config(None, ["train.select_best=no"]).train.select_best is False


def test_empty_override_value_sets_optional_to_none() -> None:
    cfg = load_config(None, ["train.budget_steps=10"])
    assert cfg.train.budget_steps == 10
    assert load_config(None, ["train.budget_steps=10", "train.budget_steps="]).train.budget_steps \
        is None


def test_override_without_equals_sign() -> None:
    assert "train.lr" in config_error(["train.lr"])


# ---------------------------------------------------------------- policies


def test_policy_shorthand_strings() -> None:
    cfg = load_config(None, ["policies=[replace, accumulate]"])
    assert cfg.policies == [PolicySpec("replace"), PolicySpec("accumulate")]
    assert [p.key for p in cfg.policies] == ["replace", "accumulate"]


def test_policy_mappings_with_fraction_and_label(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "policies:\n  - replace\n"
                                "  - {name: mix, fraction: 0.2, label: mix-0.2}\n"
                                "  - {name: mix, fraction: 0.5, label: mix-0.5}\n")
    cfg = load_config(path)
    assert [p.key for p in cfg.policies] == ["replace", "mix-0.2", "mix-0.5"]
    assert cfg.policies[1].fraction == 0.2


def test_unknown_policy_suggests_close_match() -> None:
    msg = config_error(["policies=[replce]"])
    assert "policies[0].name" in msg
    assert "did you mean 'replace'" in msg
    assert "accumulate-subsample" in msg  # lists what exists


def test_unknown_policy_in_shorthand_list_names_index() -> None:
    msg = config_error(["policies=[replace, acumulate]"])
    assert "policies[1].name" in msg and "'accumulate'" in msg


def test_duplicate_policy_labels() -> None:
    msg = config_error(["policies=[mix, {name: mix, fraction: 0.3}]"])
    assert "policies" in msg and "unique" in msg


def test_duplicate_labels_resolved_by_label() -> None:
    cfg = load_config(None, ["policies=[mix, {name: mix, fraction: 0.3, label: mix-0.3}]"])
    assert [p.key for p in cfg.policies] == ["mix", "mix-0.3"]


@pytest.mark.parametrize("fraction", [1.5, -0.1])
def test_fraction_out_of_range(fraction: float) -> None:
    msg = config_error([f"policies=[{{name: mix, fraction: {fraction}}}]"])
    assert "policies[0].fraction" in msg and "[0, 1]" in msg


def test_fraction_on_policy_that_takes_none() -> None:
    msg = config_error(["policies=[{name: replace, fraction: 0.1}]"])
    assert "policies[0].fraction" in msg and "replace" in msg


def test_fresh_needs_disjoint_shards() -> None:
    msg = config_error(["generations=5", "policies=[{name: fresh, fraction: 0.3}]"])
    assert "policies[0].fraction" in msg and "generations" in msg
    # the default fraction (0.2) with 6 generations is also refused, with 5 it fits
    assert "policies[0].fraction" in config_error(["generations=6", "policies=[fresh]"])
    resolved = load_config(None, ["generations=5", "policies=[fresh]"]).policies[0]
    assert resolved.fraction == 0.2
    cfg = load_config(None, ["generations=5", "policies=[{name: fresh, fraction: 0.2}]"])
    assert cfg.policies[0].fraction == 0.2


def test_no_policies() -> None:
    assert "policies" in config_error(["policies=[]"])


# ---------------------------------------------------------------- unknown keys


def test_unknown_nested_key_names_dotted_path_and_valid_keys() -> None:
    msg = config_error(["train.lrr=1"])
    assert "'train.lrr'" in msg
    assert "did you mean 'lr'" in msg
    assert "valid keys:" in msg
    for key in ("epochs", "lr", "batch_size", "scheduler", "mixed_precision"):
        assert key in msg


def test_unknown_top_level_key_in_yaml(tmp_path: Path) -> None:
    msg = config_error(path=write_yaml(tmp_path, "generationz: 3\n"))
    assert "'generationz'" in msg
    assert "did you mean 'generations'" in msg
    assert "seeds" in msg and "policies" in msg


def test_unknown_deeply_nested_key(tmp_path: Path) -> None:
    msg = config_error(path=write_yaml(tmp_path, "data:\n  synthetic:\n    vocab: 3\n"))
    assert "'data.synthetic.vocab'" in msg and "did you mean 'vocab_size'" in msg


def test_unknown_key_without_close_match_still_lists_keys() -> None:
    msg = config_error(["generate.zzzzzz=1"])
    assert "'generate.zzzzzz'" in msg and "did you mean" not in msg
    assert "strategy" in msg


def test_unknown_key_inside_policy_mapping() -> None:
    msg = config_error(["policies=[{name: mix, fracton: 0.2}]"])
    assert "policies[0].fracton" in msg and "did you mean 'fraction'" in msg


# ---------------------------------------------------------------- types and ranges


def test_wrong_type_int() -> None:
    msg = config_error(["train.batch_size=abc"])
    assert "train.batch_size" in msg and "int" in msg and "'abc'" in msg


def test_non_integral_float_for_int() -> None:
    assert "train.epochs" in config_error(["train.epochs=1.5"])


def test_bool_is_not_an_int() -> None:
    assert "generations" in config_error(["generations=true"])


def test_wrong_type_float() -> None:
    assert "train.lr" in config_error(["train.lr=fast"])


def test_section_given_a_scalar() -> None:
    msg = config_error(["train=3"])
    assert "train" in msg and "mapping" in msg


def test_override_through_a_scalar() -> None:
    msg = config_error(["generations.x=3"])
    assert "generations" in msg


def test_bad_literal_lists_allowed() -> None:
    msg = config_error(["generate.strategy=nucleus"])
    assert "generate.strategy" in msg and "'nucleus'" in msg
    for allowed in ("beam", "greedy", "sample"):
        assert allowed in msg


def test_bad_literal_in_yaml_file(tmp_path: Path) -> None:
    msg = config_error(path=write_yaml(tmp_path, "data:\n  source: hub\n"))
    assert "data.source" in msg and "synthetic" in msg


def test_unknown_metric_suggests_close_match() -> None:
    msg = config_error(["metrics.names=[perplexty]"])
    assert "metrics.names[0]" in msg and "did you mean 'perplexity'" in msg


def test_prompt_longer_than_block() -> None:
    msg = config_error(["data.block_tokens=32", "generate.prompt_tokens=48"])
    assert "generate.prompt_tokens" in msg and "data.block_tokens" in msg
    cfg = load_config(None, ["data.block_tokens=32", "generate.prompt_tokens=32"])
    assert cfg.generate.prompt_tokens == 32


@pytest.mark.parametrize(("override", "field"), [
    ("train.lr=0", "train.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("generations=-1", "generations"),
    ("data.block_tokens=0", "data.block_tokens"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio"),
    ("generate.top_p=0", "generate.top_p"),
    ("generate.temperature=-1", "generate.temperature"),
    ("seeds=[1,1]", "seeds"),
    ("seeds=[]", "seeds"),
    ("experiment=a/b", "experiment"),
    ("version=2", "version"),
])
def test_out_of_range_values(override: str, field: str) -> None:
    assert field in config_error([override])


def test_budget_steps_and_tokens_exclusive() -> None:
    msg = config_error(["train.budget_steps=10", "train.budget_tokens=1000"])
    assert "train.budget_steps" in msg and "train.budget_tokens" in msg


def test_scratch_heads_must_divide_hidden() -> None:
    msg = config_error(["model.source=scratch", "model.scratch.hidden_size=66"])
    assert "model.scratch.hidden_size" in msg


def test_text_source_needs_train_file() -> None:
    assert "data.text.train" in config_error(["data.source=text"])


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    msg = config_error(path=missing)
    assert "not found" in msg and str(missing) in msg


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- a\n- b\n")
    assert str(path) in config_error(path=path)


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write_yaml(tmp_path, "# nothing\n")) == ExperimentConfig()


# ---------------------------------------------------------------- config_diff


def test_config_diff_lists_changed_dotted_keys() -> None:
    old = load_config().to_dict()
    new = load_config(None, ["train.lr=1e-3", "generations=7", "data.synthetic.seed=3"]).to_dict()
    diff = config_diff(old, new)
    assert len(diff) == 3
    changed = {line.split(":")[0] for line in diff}
    assert changed == {"train.lr", "generations", "data.synthetic.seed"}
    assert "train.lr: 5e-05 -> 0.001" in diff
    assert "generations: 5 -> 7" in diff


def test_config_diff_empty_for_equal_and_reports_added_keys() -> None:
    cfg = load_config().to_dict()
    assert config_diff(cfg, load_config().to_dict()) == []
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}}) == ["a.c: None -> 2"]
    assert config_diff({"p": [1]}, {"p": [1, 2]}) == ["p: [1] -> [1, 2]"]


# ---------------------------------------------------------------- edge cases


def test_mixed_precision_no_literal() -> None:
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_malformed_override_value_is_config_error() -> None:
    assert "seeds" in config_error(["seeds=[0,1"])


@pytest.mark.parametrize("value", ["nan", ".inf"])
def test_non_finite_lr_refused(value: str) -> None:
    assert "train.lr" in config_error([f"train.lr={value}"])


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys; a config that says a thing twice is refused,
    wherever the mapping is (a participant's label here), before any work."""
    text = (CONFIG_DIR / "quickstart.yaml").read_text()
    text += ("grid:\n  - key: train.lr\n    values: [0.001]\n    name: lr\n"
             "    name: rate\n")
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    line = len(text.splitlines())
    with pytest.raises(ConfigError, match=rf"line {line}: the key 'name' is given twice in one "
                       rf"mapping \(first on line {line - 1}\)"):
        load_config(path)
    from lmcollapse.cli import run_main

    assert run_main(["validate", "--config", str(path)]) == 2


@pytest.mark.parametrize(("override", "needle"), [
    ("jobs=AUTO", "jobs: invalid value 'AUTO'; allowed: an integer or 'auto'"),
    ("policies=[{name: replace, label: yes}]",
     "policies[0].label: expected a string, got True: YAML reads yes"),
])
def test_a_refusal_says_what_is_allowed(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG_DIR / "quickstart.yaml", [override])
    assert needle in str(err.value)


def test_a_window_is_only_checked_where_a_crawl_uses_one() -> None:
    """``window: 0`` means nothing with ``crawl: all``; with ``crawl: window`` it is refused."""
    entry = ("policies=[{name: internet, synthetic_share: [0.5], human_source: source, "
             "participants: [{label: a}], crawl: CRAWL, window: 0}]")
    cfg = load_config(CONFIG_DIR / "quickstart.yaml", [entry.replace("CRAWL", "all")])
    assert cfg.policies[0].settings.window == 0
    with pytest.raises(ConfigError, match=r"policies\[0\]\.window: must be > 0"):
        load_config(CONFIG_DIR / "quickstart.yaml", [entry.replace("CRAWL", "window")])
