import json
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from lmssl.config import ConfigError, load_config


def test_shipped_configs_load_with_the_user_facing_keys():
    for name, objective, seq_len in (("mlm", "mlm", 64), ("mlm-nsp", "mlm", 128), ("clm", "clm", 128)):
        cfg = load_config(REPO_ROOT / "configs" / f"{name}.yaml")
        assert cfg.objective.name == objective
        assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.data.seq_len) == (256, 4, 4,
                                                                                                         seq_len)
        for key in ("max_steps", "output_dir", "resume", "log_every", "save_every", "seed"):
            assert hasattr(cfg.train, key)
        assert cfg.data.train and cfg.data.valid


def test_overrides_are_typed_and_presets_fill_defaults():
    cfg = load_config(REPO_ROOT / "configs" / "mlm.yaml", ["train.max_steps=7", "train.lr=3e-4", "train.resume=true"])
    assert cfg.train.max_steps == 7 and cfg.train.lr == pytest.approx(3e-4) and cfg.train.resume is True
    assert cfg.model.norm == "post" and cfg.model.norm_eps == 1e-12
    gpt = load_config(None, ["model.preset=gpt2", "objective.name=clm"])
    assert (gpt.model.norm, gpt.model.activation, gpt.model.type_vocab_size, gpt.model.norm_eps) == (
        "pre", "gelu_tanh", 0, 1e-5)
    explicit = load_config(None, ["model.preset=gpt2", "model.norm=post"])
    assert explicit.model.norm == "post"  # written keys win over the preset


def block_fields(m) -> tuple:
    return (m.norm, m.norm_type, m.embedding_norm, m.final_norm, m.bias, m.mlp, m.qk_norm, m.position, m.pooler)


def test_block_presets_and_the_placement_rule_of_older_configs():
    modern = load_config(None, ["model.preset=modernbert"]).model
    assert block_fields(modern) == ("pre", "layernorm", True, True, False, "geglu", False, "rope", "head")
    assert (modern.type_vocab_size, modern.rope_theta, modern.norm_eps, modern.dropout) == (0, 160000.0, 1e-5, 0.0)
    llama = load_config(None, ["model.preset=llama", "objective.name=clm"]).model
    assert block_fields(llama) == ("pre", "rmsnorm", False, True, False, "swiglu", False, "rope", "tanh")
    assert (llama.tie_embeddings, llama.norm_eps) == (False, 1e-6)
    # a config written before the norm switches existed (a checkpoint's config.yaml names model.norm): the
    # embedding norm follows post-LN and the final norm pre-LN, as they did then
    pre_bert = load_config(None, ["model.preset=bert", "model.norm=pre"]).model
    assert (pre_bert.embedding_norm, pre_bert.final_norm) == (False, True)
    post_gpt2 = load_config(None, ["model.preset=gpt2", "model.norm=post", "objective.name=clm"]).model
    assert (post_gpt2.embedding_norm, post_gpt2.final_norm) == (True, False)
    written = load_config(None, ["model.norm=pre", "model.embedding_norm=true"]).model
    assert (written.embedding_norm, written.final_norm) == (True, True)  # written keys still win


@pytest.mark.parametrize("override, fragment", [
    ("train.max_step=5", "did you mean 'train.max_steps'"),
    ("trian.max_steps=5", "did you mean 'train'"),
    ("objective.mask_rat=0.2", "did you mean 'objective.mask_rate'"),
    ("train.max_steps=abc", "key 'train.max_steps': expected an integer"),
    ("train.resume=maybe", "key 'train.resume': expected true or false"),
    ("train.schedule=exp", "key 'train.schedule': invalid value 'exp'"),
    ("model.mlp=relu", "key 'model.mlp': invalid value 'relu'; choose one of 'gelu', 'geglu', 'swiglu'"),
    ("model.norm_type=batchnorm", "key 'model.norm_type': invalid value 'batchnorm'"),
    ("model.qk_norm=1", "key 'model.qk_norm': expected true or false"),
    ("model.num_heads=3", "key 'model.num_heads': must divide model.hidden_size=256"),
    ("data.seq_len=4096", "key 'data.seq_len': 4096 exceeds model.max_positions=128"),
    ("objective.name=bart", "key 'objective.name': unknown objective 'bart'"),
    ("objective.mask_token_prob=0.95", "key 'objective.random_token_prob'"),
    ("max_steps=5", "keys have the form section.field"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(REPO_ROOT / "configs" / "mlm.yaml", [override])
    assert fragment in str(err.value)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_stpes: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "did you mean 'train.max_steps'" in str(err.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def _cli(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_reports_config_errors_without_traceback(tmp_path):
    proc = _cli("configs/mlm.yaml", "train.max_step=5")
    assert proc.returncode == 2
    assert "did you mean 'train.max_steps'" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli("configs/mlm.yaml", "data.train=no/such/file.txt", f"train.output_dir={tmp_path / 'out'}")
    assert proc.returncode == 2
    assert "key 'data.train': file not found: no/such/file.txt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # stopped before any work


# what a 60-minute recipe may change in the config it lengthens (max_steps: decided from max_minutes)
RECIPE_LENGTH_KEYS = {"train.max_minutes", "train.max_steps", "train.warmup_steps", "train.save_every",
                      "train.output_dir", "eval.every"}


def _recipe_changes(base: str, recipe: str) -> tuple[dict, dict]:
    """The recipe's settings, and those that differ from the base config's (dotted key -> the recipe's value)."""
    shipped, lengthened = (load_config(REPO_ROOT / "configs" / f"{name}.yaml").to_dict() for name in (base, recipe))
    return lengthened, {f"{section}.{key}": lengthened[section][key] for section in shipped
                        for key in shipped[section] if shipped[section][key] != lengthened[section][key]}


def test_the_60_minute_mlm_recipe_is_the_main_job_trained_for_an_hour():
    """configs/recipes/mlm-60min.yaml differs from configs/mlm.yaml only in its length and what scales with it."""
    recipe, changed = _recipe_changes("mlm", "recipes/mlm-60min")
    assert set(changed) == RECIPE_LENGTH_KEYS
    assert recipe["train"]["max_minutes"] == 60


def test_the_60_minute_clm_recipe_is_the_clm_config_with_the_study_winner_for_an_hour():
    """configs/recipes/clm-60min.yaml is configs/clm.yaml with the CLM recipe study's winning cell's overrides
    (no dropout, Muon) and an hour's length: nothing else changed that the study did not measure."""
    recipe, changed = _recipe_changes("clm", "recipes/clm-60min")
    assert {key: value for key, value in changed.items() if key not in RECIPE_LENGTH_KEYS} == {
        "model.dropout": 0.0, "model.attention_dropout": 0.0, "train.optimizer": "muon"}  # muon_lr: the default
    assert recipe["train"]["max_minutes"] == 60
    # those are the settings of the committed study's best cell by valid perplexity
    study = json.loads((REPO_ROOT / "docs" / "studies" / "recipe-cpu" / "clm" / "results.json").read_text())
    best = min(study["cells"], key=lambda cell: cell["evaluations"]["likelihood"]["ppl"])
    assert all(best["settings"][key] == recipe[key.split(".")[0]][key.split(".")[1]]
               for key in ("model.preset", "model.dropout", "model.attention_dropout", "train.optimizer",
                           "train.muon_lr", "train.lr", "train.batch_size", "data.seq_len")), best["cell"]
