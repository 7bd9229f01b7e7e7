import json

import pytest

from gsva.config import NAMED_CONFIGS, ConfigError, GSVAConfig, get_named_config


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_named_configs_round_trip(name, tmp_path):
    cfg = get_named_config(name)
    cfg.save(tmp_path / "config.json")
    assert GSVAConfig.load(tmp_path / "config.json") == cfg


def test_paper_configs_follow_table_a3():
    assert get_named_config("gsva-vicuna-7b").lora.rank == 8
    for name in ("gsva-vicuna-13b", "gsva-llama2-13b"):
        cfg = get_named_config(name)
        assert cfg.lora.rank == 64 and cfg.text.hidden_size == 5120
    cfg = get_named_config("gsva-vicuna-7b")
    assert (cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules) == (16, 0.05, ["q_proj", "v_proj"])
    assert (cfg.loss.ce_weight, cfg.loss.bce_weight, cfg.loss.dice_weight) == (1.0, 2.0, 0.5)
    assert cfg.num_image_tokens == 256 and cfg.sam.encoder_embed_dim == 1280
    assert not any(vars(cfg.trainable).values())  # the paper keeps CLIP, projector, SAM encoder frozen


def test_unknown_and_mistyped_keys_are_errors(tmp_path):
    data = get_named_config("gsva-tiny").to_dict()
    data["lora"]["rnak"] = 4
    with pytest.raises(ConfigError, match="rnak"):
        GSVAConfig.from_dict(data)
    data = get_named_config("gsva-tiny").to_dict()
    data["text"]["hidden_size"] = "256"
    with pytest.raises(ConfigError, match="hidden_size"):
        GSVAConfig.from_dict(data)
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="c.json"):
        GSVAConfig.load(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="unknown config"):
        get_named_config("gsva-huge")
    (tmp_path / "d.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError):
        GSVAConfig.load(tmp_path / "d.json")
