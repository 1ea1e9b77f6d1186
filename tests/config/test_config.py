"""The training config: schema errors name the dotted key, --set parsing, YAML quirks."""

from pathlib import Path

import pytest
import yaml

from chanloss.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    dump_config,
    load_config,
    parse_overrides,
    yaml_load,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def base() -> dict:
    return {
        "model": {"name": "convnet_small", "width": 4},
        "data": {"name": "digits"},
        "losses": [{"name": "ce"}, {"name": "cc", "weight": 0.5}],
    }


def error_of(raw: dict, overrides: list[str] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw=raw, overrides=list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_filled_and_the_dump_round_trips(tmp_path):
    config = load_config(raw=base())
    assert config.epochs == 10 and config.optim.name == "sgd" and config.schedule.name == "cosine"
    assert config.losses[1].weight == 0.5 and config.losses[0].lr is None
    # every option and loss parameter is stored, the defaults included (not the ones the
    # trainer takes from the data and the model: num_classes, num_channels, embedding_dim)
    assert config.model.options() == {"width": 4, "feature_channels": 64, "pools": 1}
    params = config.losses[1].params()
    assert {"reduction": 16, "eps": 1e-6, "gather": True, "check_finite": False}.items() <= (
        params.items()
    )
    assert "num_channels" not in params and "weight" not in params
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(config))
    assert load_config(path) == config
    assert yaml.safe_load(path.read_text())["optim"]["weight_decay"] == 5e-4


@pytest.mark.parametrize(
    ("raw_change", "expected"),
    [
        ({"epoch": 3}, "config: epoch: unknown key (did you mean 'epochs'?)"),
        ({"optim": {"lrate": 0.1}}, "optim.lrate: unknown key"),
        (
            {"data": {"name": "digits", "augment": {"hflp": True}}},
            "data.augment.hflp: unknown key (did you mean 'hflip'?)",
        ),
        ({"optim": {"lr": "0.1"}}, "optim.lr: Input should be a valid number, got '0.1'"),
        ({"epochs": 1.5}, "epochs: Input should be a valid integer, got 1.5"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1, got 0"),
        ({"amp": "yes"}, "amp: Input should be a valid boolean, got 'yes'"),
        ({"device": "gpu"}, "device: device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({"optim": {"name": "adam"}}, "optim.name: Input should be 'sgd' or 'adamw', got 'adam'"),
        ({"losses": []}, "losses: List should have at least 1 item"),
        ({"model": {"width": 4}}, "model.name: required key is missing"),
    ],
)
def test_bad_keys_and_values_name_the_dotted_key(raw_change, expected):
    raw = {**base(), **raw_change}
    assert expected in error_of(raw)


def test_several_errors_are_reported_on_one_line():
    raw = {**base(), "epochs": "ten", "seed": -1}
    message = error_of(raw)
    assert "epochs: Input should be a valid integer" in message
    assert "; seed: Input should be greater than or equal to 0, got -1" in message


def test_unknown_loss_name_and_parameter():
    raw = base()
    raw["losses"][1] = {"name": "ccloss"}
    message = error_of(raw)
    assert "losses.1: unknown loss 'ccloss'; expected one of [" in message and "'cc'" in message
    raw["losses"][1] = {"name": "cc", "reduktion": 4}
    message = error_of(raw)
    assert "losses.1: loss 'cc' has no parameter 'reduktion' (did you mean 'reduction'?)" in message


def test_unknown_model_dataset_and_their_options():
    assert "model: unknown model 'resnet21' (did you mean 'resnet20'?)" in error_of(
        {**base(), "model": {"name": "resnet21"}}
    )
    assert "model: model 'convnet_small' has no option 'widht' (did you mean 'width'?)" in error_of(
        {**base(), "model": {"name": "convnet_small", "widht": 4}}
    )
    assert "data: unknown dataset 'digit' (did you mean 'digits'?)" in error_of(
        {**base(), "data": {"name": "digit"}}
    )
    message = error_of({**base(), "data": {"name": "finegrained", "options": {"classes": 3}}})
    assert "data: dataset 'finegrained' has no option 'classes'" in message


def test_schedule_and_optimiser_consistency_checks():
    assert "schedule: a step schedule needs exactly one of step_size and milestones" in error_of(
        {**base(), "schedule": {"name": "step"}}
    )
    assert "schedule: milestones is only used when name is 'step', got name 'cosine'" in error_of(
        {**base(), "schedule": {"milestones": [3]}}
    )
    assert "milestones must be increasing epochs >= 1, got [5, 3]" in error_of(
        {**base(), "schedule": {"name": "step", "milestones": [5, 3]}}
    )
    assert "optim: nesterov needs name 'sgd' and momentum > 0" in error_of(
        {**base(), "optim": {"name": "adamw", "nesterov": True}}
    )
    assert "data.augment.resize: resize must be a size >= 1 or [height, width], got [1, 2, 3]" in (
        error_of({**base(), "data": {"name": "digits", "augment": {"resize": [1, 2, 3]}}})
    )


def test_scientific_notation_without_a_dot_is_a_float():
    assert yaml_load("a: 5e-4\nb: 1E3\nc: 1.5\nd: 7\ne: '5e-4'") == {
        "a": 5e-4,
        "b": 1000.0,
        "c": 1.5,
        "d": 7,
        "e": "5e-4",
    }


def test_parse_overrides_reads_yaml_values():
    assert parse_overrides(
        ["epochs=1", "optim.lr=5e-2", "amp=true", "x.y=[1, 2]", "s=abc", "n=null"]
    ) == [
        ("epochs", 1),
        ("optim.lr", 0.05),
        ("amp", True),
        ("x.y", [1, 2]),
        ("s", "abc"),
        ("n", None),
    ]
    for bad in ["epochs", "=3", "a..b=1", ".a=1"]:
        with pytest.raises(ConfigError, match="--set expects KEY=VALUE with a dotted KEY"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match=r"--set a: the value '\[1, 2' is not valid YAML"):
        parse_overrides(["a=[1, 2"])


def test_apply_overrides_indexes_lists_appends_and_creates_mappings():
    raw = base()
    apply_overrides(
        raw,
        parse_overrides(
            [
                "epochs=2",
                "losses.1.weight=2",
                "losses.2.name=center",
                "optim.lr=0.01",
                "model.width=8",
            ]
        ),
    )
    assert raw["epochs"] == 2 and raw["optim"] == {"lr": 0.01} and raw["model"]["width"] == 8
    assert raw["losses"] == [{"name": "ce"}, {"name": "cc", "weight": 2}, {"name": "center"}]
    with pytest.raises(ConfigError, match=r"index 5 is out of range for losses \(it has 3 entries"):
        apply_overrides(raw, [("losses.5.name", "ce")])
    with pytest.raises(ConfigError, match="losses is a list, expected an index, got 'first'"):
        apply_overrides(raw, [("losses.first.name", "ce")])
    with pytest.raises(ConfigError, match="epochs is a int, not a mapping or a list"):
        apply_overrides(raw, [("epochs.x", 1)])


def test_overrides_are_validated_like_the_file():
    config = load_config(raw=base(), overrides=["losses.1.weight=2", "epochs=3"])
    assert config.losses[1].weight == 2.0 and config.epochs == 3
    assert "optim.lr: Input should be a valid number, got 'fast'" in error_of(
        base(), ["optim.lr=fast"]
    )
    assert "losses.1: loss 'cc' has no parameter 'wieght'" in error_of(
        base(), ["losses.1.wieght=2"]
    )


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml, line 2, column 1: invalid YAML: ") as err:
        load_config(bad)
    assert "from line 1, column 8" in str(err.value) and "<unicode string>" not in str(err.value)
    bad.write_text("model:\n\tname: x\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line 2, column 1: .*a tab indents the line"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping of keys, got list"):
        load_config(bad)


def test_every_shipped_config_validates():
    paths = sorted(CONFIGS.glob("*.yaml"))
    names = {p.stem for p in paths}
    for dataset in ("digits", "mnist5k", "finegrained", "cifar10"):
        assert {f"{dataset}-ce", f"{dataset}-cc", f"{dataset}-mc"} <= names
    assert {"cub-ce", "cub-mc"} <= names
    for path in paths:
        config = load_config(path)
        assert config.losses[0].name == "ce"
        loss = path.stem.rsplit("-", 1)[1]
        assert [entry.name for entry in config.losses] == (["ce"] if loss == "ce" else ["ce", loss])


def test_every_schema_field_has_a_description():
    from pydantic import BaseModel

    seen = set()
    stack: list[type[BaseModel]] = [TrainConfig]
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    stack.append(arg)
    assert len(seen) == 8  # TrainConfig and its 7 sections


def test_cub_configs_kept_under_their_earlier_names_equal_the_vgg16_ones():
    for loss in ("ce", "mc"):
        old = load_config(CONFIGS / f"cub-{loss}.yaml")
        assert old == load_config(CONFIGS / f"cub-vgg16-{loss}.yaml")
    r50 = load_config(CONFIGS / "cub-r50-mc.yaml")
    assert r50.model.options()["weights"] and r50.optim.pretrained_lr_mult == 0.1
    assert r50.data.options == {
        "image_size": 448,
        "resize": 600,
        "resize_mode": "stretch",
        "num_workers": None,  # the default, stored too
    }
