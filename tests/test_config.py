"""Stage configs: YAML + flags + --set overrides, validation messages that name the setting."""

import pytest

from slmkit.config import DistillConfig, TrainConfig, load_config, save_config
from slmkit.errors import UserError


def test_precedence_defaults_yaml_flags_set(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("data:\n  train: a.csv\ntrain:\n  lr: 1.0e-4\n  epochs: 2\nout: runs/a\n")
    cfg = load_config(TrainConfig, path, ["train.lr=3e-5", "train.epochs=4"], **{"train.epochs": 3, "out": "runs/b"})
    assert cfg.data.train == "a.csv"
    assert cfg.train.lr == pytest.approx(3e-5)  # "3e-5" is a string to YAML: coerced to float
    assert cfg.train.epochs == 4  # --set beats the flag
    assert cfg.out == "runs/b"  # the flag beats the YAML
    assert cfg.train.batch_size == 32  # default kept


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(TrainConfig, None, ["data.train=x.csv", "model.max_length=64", "train.bf16=true"], out="o")
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(TrainConfig, tmp_path / "config.yaml") == cfg


def test_layer_pairs_are_not_base_60_numbers(tmp_path):
    """YAML 1.1 reads 3:6 as 186 (base 60); a layer pair must stay a pair, from --set and from a config file."""
    assert load_config(DistillConfig, None, ["loss.layer_map=3:6"]).loss.layer_map == ["3:6"]
    assert load_config(DistillConfig, None, ["loss.layer_map=1:2,3:6"]).loss.layer_map == ["1:2", "3:6"]
    path = tmp_path / "distill.yaml"
    path.write_text("loss:\n  layer_map: [1:2, 3:6]\ntrain:\n  epochs: 3\n  lr: 1.0e-4\n")
    cfg = load_config(DistillConfig, path)
    assert (cfg.loss.layer_map, cfg.train.epochs, cfg.train.lr) == (["1:2", "3:6"], 3, pytest.approx(1e-4))
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(DistillConfig, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown setting train.lrr; did you mean train.lr?"),
        ("train.epochs=two", "setting train.epochs must be int"),
        ("train.lr=-1", "setting train.lr must be positive"),
        ("train.metric=f1", "setting train.metric must be accuracy or macro_f1"),
        ("train.device=gpu", "setting train.device must be cpu, cuda or cuda:N"),
        ("train.bucket_pool=0", "setting train.bucket_pool must be at least 1"),
        ("lr", "expected key=value"),
    ],
)
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(UserError, match=message.replace("?", r"\?")):
        load_config(TrainConfig, None, [override, "data.train=x.csv"], out="o").validate()


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(UserError, match=r"bad.yaml line \d+: not valid YAML"):
        load_config(TrainConfig, path)
