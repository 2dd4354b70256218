"""Export to and import from Hugging Face `transformers` model directories.

A `transformers` model directory is config.json + model.safetensors + tokenizer files, and with the `bert`
and `gpt2` presets our parameters are exactly HF's under other names (q/k/v fused into one projection,
GPT-2's Conv1D weights stored transposed). So both directions are one table of renames (`Rule`) per
architecture, read forwards or backwards, and `transformers` is never imported here: the tests load the
exports with its Auto classes and compare logits.

    objective            exported as (architectures[0])            imported from
    mlm                  BertForMaskedLM                           BertForMaskedLM
    mlm + nsp/sop        BertForPreTraining                        BertForPreTraining
    mlm, factorised emb. ElectraForMaskedLM                        ElectraForMaskedLM (an ELECTRA generator)
    clm                  GPT2LMHeadModel                           GPT2LMHeadModel, GPT2Model (tied head)
    electra              discriminator/ ElectraForPreTraining      both subdirectories, or a discriminator
                         generator/     ElectraForMaskedLM         alone (the generator is then fresh)
    simcse               BertModel (its training MLP as pooler)    BertModel or any other bert/electra
                         + sentence-transformers pooling files     encoder (heads it has are ignored)

A config the target cannot express (RoPE, pre-LN BERT, post-LN GPT-2, factorised BERT embeddings...)
makes the export stop with a message naming the option; weights missing from an import stop it too
(never a silently random layer).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lmssl.config import Config, ConfigError, ModelConfig, config_from_dict

# our activation -> HF's name for the same function (gelu_pytorch_tanh is F.gelu(approximate="tanh") itself)
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
ACTIVATION_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}
BASE_PREFIX = {"bert": "bert.", "electra": "electra.", "gpt2": "transformer."}  # base model inside *For* heads
IGNORED_HF_BUFFERS = ("embeddings.position_ids", ".attn.bias", ".attn.masked_bias")  # buffers, not weights
ELECTRA_PARTS = ("discriminator", "generator")


@dataclass(frozen=True)
class Rule:
    """One of our parameters and the HF tensor(s) it is made of: `copy`, `transpose` (GPT-2 Conv1D), or
    `fuse` (ours = cat(theirs, dim 0): BERT's query, key, value in one projection)."""
    ours: str
    theirs: tuple[str, ...]
    op: str = "copy"

    def to_ours(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [tensors[k] for k in self.theirs]
        if self.op == "fuse":
            return torch.cat(parts, 0)
        return parts[0].T if self.op == "transpose" else parts[0]

    def to_theirs(self, value: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.op == "fuse":
            return dict(zip(self.theirs, value.chunk(len(self.theirs), 0)))
        return {self.theirs[0]: value.T if self.op == "transpose" else value}


def _copy(ours: str, theirs: str, op: str = "copy") -> list[Rule]:
    """Rules for a module's weight and bias (`ours`/`theirs` are module paths)."""
    return [Rule(f"{ours}.weight", (f"{theirs}.weight",), op), Rule(f"{ours}.bias", (f"{theirs}.bias",))]


def bert_trunk_rules(m: ModelConfig, ours: str, theirs: str) -> list[Rule]:
    """Our Transformer (post-LN) at prefix `ours` <-> HF BertModel / ElectraModel at prefix `theirs`."""
    rules = [Rule(f"{ours}embeddings.word.weight", (f"{theirs}embeddings.word_embeddings.weight",)),
             Rule(f"{ours}embeddings.position.weight", (f"{theirs}embeddings.position_embeddings.weight",))]
    if m.type_vocab_size:
        rules.append(Rule(f"{ours}embeddings.token_type.weight", (f"{theirs}embeddings.token_type_embeddings.weight",)))
    rules += _copy(f"{ours}embeddings.norm", f"{theirs}embeddings.LayerNorm")
    if (m.embedding_size or m.hidden_size) != m.hidden_size:
        rules += _copy(f"{ours}embed_proj", f"{theirs}embeddings_project")  # ELECTRA only
    for i in range(m.num_layers):
        o, t = f"{ours}layers.{i}.", f"{theirs}encoder.layer.{i}."
        qkv = [f"{t}attention.self.{n}" for n in ("query", "key", "value")]
        rules += [Rule(f"{o}attn.qkv.weight", tuple(f"{n}.weight" for n in qkv), "fuse"),
                  Rule(f"{o}attn.qkv.bias", tuple(f"{n}.bias" for n in qkv), "fuse")]
        rules += _copy(f"{o}attn.out", f"{t}attention.output.dense")
        rules += _copy(f"{o}attn_norm", f"{t}attention.output.LayerNorm")
        rules += _copy(f"{o}ffn.fc_in", f"{t}intermediate.dense")
        rules += _copy(f"{o}ffn.fc_out", f"{t}output.dense")
        rules += _copy(f"{o}ffn_norm", f"{t}output.LayerNorm")
    return rules


def gpt2_trunk_rules(m: ModelConfig, ours: str, theirs: str) -> list[Rule]:
    """Our Transformer (pre-LN) at prefix `ours` <-> HF GPT2Model at prefix `theirs` (Conv1D = transposed Linear)."""
    rules = [Rule(f"{ours}embeddings.word.weight", (f"{theirs}wte.weight",)),
             Rule(f"{ours}embeddings.position.weight", (f"{theirs}wpe.weight",))]
    for i in range(m.num_layers):
        o, t = f"{ours}layers.{i}.", f"{theirs}h.{i}."
        rules += _copy(f"{o}attn_norm", f"{t}ln_1")
        rules += _copy(f"{o}attn.qkv", f"{t}attn.c_attn", "transpose")  # (H, 3H) [q|k|v] -> (3H, H)
        rules += _copy(f"{o}attn.out", f"{t}attn.c_proj", "transpose")
        rules += _copy(f"{o}ffn_norm", f"{t}ln_2")
        rules += _copy(f"{o}ffn.fc_in", f"{t}mlp.c_fc", "transpose")
        rules += _copy(f"{o}ffn.fc_out", f"{t}mlp.c_proj", "transpose")
    return rules + _copy(f"{ours}final_norm", f"{theirs}ln_f")


def masked_lm_head_rules(m: ModelConfig, ours: str, transform: str, bias: str, decoder: str, word: str) -> list[Rule]:
    """Our MaskedLMHead at `ours` <-> BERT's cls.predictions / ELECTRA's generator_predictions + lm head. A tied
    decoder is read from (and written as) the word embeddings, as HF stores it."""
    norm = "LayerNorm" if transform.startswith("generator") else "transform.LayerNorm"
    dense = "dense" if transform.startswith("generator") else "transform.dense"
    return (_copy(f"{ours}dense", f"{transform}.{dense}") + _copy(f"{ours}norm", f"{transform}.{norm}")
            + [Rule(f"{ours}decoder.bias", (bias,)),
               Rule(f"{ours}decoder.weight", (word if m.tie_embeddings else decoder,))])


# ---------------------------------------------------------------------------------------------
# targets: which HF architecture(s) an objective becomes
# ---------------------------------------------------------------------------------------------

@dataclass
class Target:
    """One HF model directory: its architecture, the trunk config it describes and the renames."""
    subdir: str  # "" = OUT_DIR itself; ELECTRA writes discriminator/ and generator/
    architecture: str  # config.json "architectures"[0]
    model_type: str  # bert | gpt2 | electra
    model: ModelConfig  # the trunk described by config.json
    rules: list[Rule]


def _refuse(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"cannot export: key '{key}' is {value!r} but {why}")


def _check_bert_like(m: ModelConfig, architecture: str, factorised_ok: bool = False) -> None:
    _refuse(m.position == "learned", "model.position", m.position, f"{architecture} has learned absolute positions only")
    _refuse(m.norm == "post", "model.norm", m.norm, f"{architecture} is post-LN (LayerNorm after each residual)")
    _refuse(m.type_vocab_size >= 1, "model.type_vocab_size", m.type_vocab_size, f"{architecture} always has token types")
    if not factorised_ok:
        _refuse(m.embedding_size in (0, m.hidden_size), "model.embedding_size", m.embedding_size,
                f"{architecture} has no factorised embeddings (only ELECTRA does)")


def export_targets(cfg: Config, objective: torch.nn.Module) -> list[Target]:
    """The HF model directories `objective` is exported as; ConfigError names an option the target cannot express."""
    m, name = cfg.model, cfg.objective.name
    if name == "clm":
        arch = "GPT2LMHeadModel"
        _refuse(m.position == "learned", "model.position", m.position, f"{arch} has learned absolute positions only")
        _refuse(m.norm == "pre", "model.norm", m.norm, f"{arch} is pre-LN (LayerNorm before each sub-block, plus a final one)")
        _refuse(m.type_vocab_size == 0, "model.type_vocab_size", m.type_vocab_size,
                f"{arch} has no token-type embeddings (it would add token types through the word embeddings)")
        _refuse(m.embedding_size in (0, m.hidden_size), "model.embedding_size", m.embedding_size,
                f"{arch} has no factorised embeddings")
        head = Rule("head.proj.weight", ("transformer.wte.weight" if m.tie_embeddings else "lm_head.weight",))
        return [Target("", arch, "gpt2", m, gpt2_trunk_rules(m, "trunk.", "transformer.") + [head])]
    if name == "mlm":
        task = cfg.objective.sentence_task
        if m.embedding_size not in (0, m.hidden_size):  # factorised: the ELECTRA generator's shape
            _refuse(task == "none", "objective.sentence_task", task, "ElectraForMaskedLM (the only masked LM with "
                    "factorised embeddings) has no sentence head; set model.embedding_size=0 for BertForPreTraining")
            return [_electra_generator_target(m, "", "")]
        arch = "BertForMaskedLM" if task == "none" else "BertForPreTraining"
        _check_bert_like(m, arch)
        rules = bert_trunk_rules(m, "trunk.", "bert.") + masked_lm_head_rules(
            m, "head.", "cls.predictions", "cls.predictions.bias", "cls.predictions.decoder.weight",
            "bert.embeddings.word_embeddings.weight")
        if task != "none":  # SOP's head has NSP's shape and label convention (1 = not in order)
            rules += _copy("pooler.dense", "bert.pooler.dense") + _copy("seq_relationship", "cls.seq_relationship")
        return [Target("", arch, "bert", m, rules)]
    if name == "electra":
        _check_bert_like(m, "ElectraForPreTraining", factorised_ok=True)
        rules = (bert_trunk_rules(m, "trunk.", "electra.") + _copy("head.dense", "discriminator_predictions.dense")
                 + _copy("head.dense_prediction", "discriminator_predictions.dense_prediction"))
        generator = objective.generator.trunk.cfg
        return [Target("discriminator", "ElectraForPreTraining", "electra", m, rules),
                _electra_generator_target(generator, "generator.", "generator")]
    if name == "simcse":
        _check_bert_like(m, "BertModel")
        rules = bert_trunk_rules(m, "trunk.", "")
        if objective.mlp is not None:  # SimCSE's released checkpoints store the training MLP as BERT's pooler
            rules += _copy("mlp.dense", "pooler.dense")
        return [Target("", "BertModel", "bert", m, rules)]
    raise ConfigError(f"cannot export objective '{name}': no Hugging Face architecture is mapped for it")


def _electra_generator_target(g: ModelConfig, ours: str, subdir: str) -> Target:
    arch = "ElectraForMaskedLM"
    _check_bert_like(g, arch, factorised_ok=True)
    _refuse(g.activation == "gelu", "model.activation", g.activation, f"{arch}'s prediction head always uses exact GELU")
    rules = bert_trunk_rules(g, f"{ours}trunk.", "electra.") + masked_lm_head_rules(
        g, f"{ours}head.", "generator_predictions", "generator_lm_head.bias", "generator_lm_head.weight",
        "electra.embeddings.word_embeddings.weight")
    return Target(subdir, arch, "electra", g, rules)


# ---------------------------------------------------------------------------------------------
# config.json and tokenizer files
# ---------------------------------------------------------------------------------------------

def hf_config(t: Target, tokenizer) -> dict[str, Any]:
    m = t.model
    common = {"architectures": [t.architecture], "model_type": t.model_type, "vocab_size": m.vocab_size,
              "initializer_range": m.init_std, "tie_word_embeddings": m.tie_embeddings, "torch_dtype": "float32"}
    if t.model_type == "gpt2":
        eos = tokenizer.eos_id
        return {**common, "n_positions": m.max_positions, "n_embd": m.hidden_size, "n_layer": m.num_layers,
                "n_head": m.num_heads, "n_inner": m.ffn_size, "activation_function": ACTIVATION_TO_HF[m.activation],
                "resid_pdrop": m.dropout, "embd_pdrop": m.dropout, "attn_pdrop": m.attention_dropout,
                "layer_norm_epsilon": m.norm_eps, "bos_token_id": eos, "eos_token_id": eos, "scale_attn_weights": True,
                "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}
    out = {**common, "hidden_size": m.hidden_size, "num_hidden_layers": m.num_layers,
           "num_attention_heads": m.num_heads, "intermediate_size": m.ffn_size,
           "hidden_act": ACTIVATION_TO_HF[m.activation], "hidden_dropout_prob": m.dropout,
           "attention_probs_dropout_prob": m.attention_dropout, "max_position_embeddings": m.max_positions,
           "type_vocab_size": m.type_vocab_size, "layer_norm_eps": m.norm_eps, "position_embedding_type": "absolute",
           "pad_token_id": tokenizer.pad_id if tokenizer.pad_id is not None else 0}
    if t.model_type == "electra":
        out["embedding_size"] = m.embedding_size or m.hidden_size
    return out


def tokenizer_files(tokenizer, model: ModelConfig, causal: bool) -> dict[str, str]:
    """tokenizer_config.json and special_tokens_map.json for our tokenizer.json, loaded by AutoTokenizer as a
    fast tokenizer that tokenizes exactly as ours (the same `tokenizers` file: normalizer, pre-tokenizer,
    model and the [CLS] A [SEP] B [SEP] template with token types)."""
    def token(role):
        i = tokenizer.roles.get(role)
        return None if i is None else tokenizer.tokenizer.id_to_token(i)

    if causal:  # GPT-2's convention: one <|endoftext|> for bos/eos/unk, no padding token
        eos = token("eos")
        special = {"bos_token": eos, "eos_token": eos, "unk_token": eos}
        names = ["input_ids", "attention_mask"]  # GPT2 would add token_type_ids through its word embeddings
    else:
        special = {f"{r}_token": token(r) for r in ("unk", "sep", "pad", "cls", "mask")}
        names = ["input_ids", "token_type_ids", "attention_mask"]
    special = {k: v for k, v in special.items() if v is not None}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.max_positions,
              "padding_side": "right", "model_input_names": names, "clean_up_tokenization_spaces": False, **special}
    return {"tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}


def sentence_transformers_files(pooling: str, model: ModelConfig, seq_len: int) -> dict[str, str]:
    """modules.json + 1_Pooling/config.json: the export is also a sentence-transformers model with SimCSE's
    evaluation pooling ([CLS] state before the MLP, or the mean over tokens)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    pool = {"word_embedding_dimension": model.hidden_size, "pooling_mode_cls_token": pooling != "mean",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False}
    return {"modules.json": json.dumps(modules, indent=2) + "\n",
            "1_Pooling/config.json": json.dumps(pool, indent=2) + "\n",
            "sentence_bert_config.json": json.dumps({"max_seq_length": seq_len, "do_lower_case": False}) + "\n"}


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------

def hf_state_dict(state: dict[str, torch.Tensor], rules: list[Rule]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        for key, value in rule.to_theirs(state[rule.ours]).items():
            out[key] = value.detach().to("cpu", torch.float32).contiguous().clone()  # no shared storage in safetensors
    return out


def export(checkpoint: str | Path, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the `transformers` model directory (or ELECTRA's two) of an lmssl checkpoint. Written to a
    temporary directory and renamed into place: a failed export leaves nothing behind."""
    from lmssl.checkpoint import load_pretrained

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; choose another output directory or pass --overwrite")
    cfg, tokenizer, objective = load_pretrained(checkpoint)
    targets = export_targets(cfg, objective)
    state = objective.state_dict()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for t in targets:
            d = tmp / t.subdir
            d.mkdir(parents=True, exist_ok=True)
            save_file(hf_state_dict(state, t.rules), str(d / "model.safetensors"), metadata={"format": "pt"})
            files = {"config.json": json.dumps(hf_config(t, tokenizer), indent=2) + "\n",
                     **tokenizer_files(tokenizer, t.model, causal=t.model_type == "gpt2")}
            if cfg.objective.name == "simcse":
                files.update(sentence_transformers_files(cfg.objective.pooling, t.model, cfg.data.seq_len))
            for name, text in files.items():
                (d / name).parent.mkdir(parents=True, exist_ok=True)
                (d / name).write_text(text)
            tokenizer.save(d)
        tmp.chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out_dir), "architectures": {t.subdir or ".": t.architecture for t in targets},
            "objective": cfg.objective.name}


# ---------------------------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------------------------

def is_hf_dir(path: Path) -> bool:
    """A `transformers` model directory (config.json, no lmssl config.yaml), or ELECTRA's exported pair."""
    path = Path(path)
    if (path / "config.yaml").is_file():
        return False
    return (path / "config.json").is_file() or all((path / p / "config.json").is_file() for p in ELECTRA_PARTS)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as JSON ({e})") from None


def model_fields(hf: dict, where: Path) -> dict[str, Any]:
    """ModelConfig fields equivalent to a HF config.json (bert, electra or gpt2); ConfigError otherwise."""
    mt = hf.get("model_type")

    def activation(key: str, default: str) -> str:
        name = hf.get(key, default)
        if name not in ACTIVATION_FROM_HF:
            raise ConfigError(f"{where}: {key}={name!r} is not supported; lmssl has {', '.join(ACTIVATION_FROM_HF)}")
        return ACTIVATION_FROM_HF[name]

    if mt == "gpt2":
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if hf.get(flag):
                raise ConfigError(f"{where}: {flag}=true is not supported by lmssl's attention")
        if not hf.get("scale_attn_weights", True):
            raise ConfigError(f"{where}: scale_attn_weights=false is not supported by lmssl's attention")
        hidden = hf.get("n_embd", 768)
        return dict(preset="gpt2", vocab_size=hf.get("vocab_size", 50257), hidden_size=hidden,
                    num_layers=hf.get("n_layer", 12), num_heads=hf.get("n_head", 12), ffn_size=hf.get("n_inner") or 4 * hidden,
                    max_positions=hf.get("n_positions", 1024), embedding_size=0, type_vocab_size=0, norm="pre",
                    norm_eps=hf.get("layer_norm_epsilon", 1e-5), position="learned",
                    activation=activation("activation_function", "gelu_new"), dropout=hf.get("resid_pdrop", 0.1),
                    attention_dropout=hf.get("attn_pdrop", 0.1), tie_embeddings=hf.get("tie_word_embeddings", True),
                    init_std=hf.get("initializer_range", 0.02))
    if mt in ("bert", "electra"):
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"{where}: position_embedding_type={hf['position_embedding_type']!r} is not supported; "
                              f"lmssl imports absolute position embeddings")
        hidden = hf.get("hidden_size", 768 if mt == "bert" else 256)
        embedding = hf.get("embedding_size", hidden) if mt == "electra" else hidden
        return dict(preset="bert", vocab_size=hf.get("vocab_size", 30522), hidden_size=hidden,
                    num_layers=hf.get("num_hidden_layers", 12), num_heads=hf.get("num_attention_heads", 12),
                    ffn_size=hf.get("intermediate_size", 4 * hidden), max_positions=hf.get("max_position_embeddings", 512),
                    embedding_size=0 if embedding == hidden else embedding, type_vocab_size=hf.get("type_vocab_size", 2),
                    norm="post", norm_eps=hf.get("layer_norm_eps", 1e-12), position="learned",
                    activation=activation("hidden_act", "gelu"), dropout=hf.get("hidden_dropout_prob", 0.1),
                    attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
                    tie_embeddings=hf.get("tie_word_embeddings", True), init_std=hf.get("initializer_range", 0.02))
    raise ConfigError(f"{where}: model_type {mt!r} is not supported; lmssl imports bert, electra and gpt2 models")


def weight_names(directory: Path) -> set[str]:
    """The tensor names of a weights directory, without reading the tensors when they are safetensors."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        with safe_open(str(directory / "model.safetensors"), "pt") as f:
            return set(f.keys())
    if index.is_file():
        return set(_read_json(index)["weight_map"])
    return set(read_weights(directory))


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (possibly sharded) or pytorch_model.bin, as float32 CPU tensors."""
    index = directory / "model.safetensors.index.json"
    if (directory / "model.safetensors").is_file():
        tensors = load_file(str(directory / "model.safetensors"))
    elif index.is_file():
        tensors = {}
        for shard in sorted(set(_read_json(index)["weight_map"].values())):
            tensors.update(load_file(str(directory / shard)))
    elif (directory / "pytorch_model.bin").is_file():
        tensors = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ConfigError(f"{directory}: no weights (model.safetensors or pytorch_model.bin)")
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def read_tokenizer(directory: Path):
    """tokenizer.json, else the slow tokenizer's vocabulary files, as a TextTokenizer; truncation and padding
    that a tokenizer.json may carry are removed (our pipelines window and pad themselves)."""
    from tokenizers import Tokenizer
    from tokenizers.implementations import BertWordPieceTokenizer, ByteLevelBPETokenizer

    from lmssl.data.tokenizer import TextTokenizer

    if (directory / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    elif (directory / "vocab.txt").is_file():
        options = _read_json(directory / "tokenizer_config.json") if (directory / "tokenizer_config.json").is_file() else {}
        tok = BertWordPieceTokenizer(str(directory / "vocab.txt"), lowercase=options.get("do_lower_case", True))._tokenizer
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        tok = ByteLevelBPETokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"))._tokenizer
    else:
        raise ConfigError(f"{directory}: no tokenizer (tokenizer.json, vocab.txt, or vocab.json + merges.txt)")
    tok.no_truncation()
    tok.no_padding()
    return TextTokenizer(tok, directory / "tokenizer.json")


def base_prefix(names, model_type: str) -> str:
    """The base model's key prefix in a weights file: `bert.` etc. in the *For* models, "" in a bare BertModel."""
    prefix = BASE_PREFIX[model_type]
    return prefix if any(k.startswith(prefix) for k in names) else ""


@dataclass
class Source:
    """A HF model directory read for import; its tensors are read on first use."""
    directory: Path
    config: dict
    model: dict[str, Any]  # ModelConfig fields
    names: set[str]  # tensor names in the weights file(s)
    prefix: str  # the base model's key prefix in `names` ("" for a bare BertModel / GPT2Model)
    _tensors: dict[str, torch.Tensor] | None = None

    @classmethod
    def read(cls, directory: Path) -> "Source":
        config = _read_json(directory / "config.json")
        model = model_fields(config, directory / "config.json")
        names = weight_names(directory)
        return cls(directory, config, model, names, base_prefix(names, config["model_type"]))

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            self._tensors = read_weights(self.directory)
        return self._tensors

    def has(self, key: str) -> bool:
        return key in self.names


def _objective_for(src: Source) -> dict[str, Any]:
    """The objective section an imported model becomes (see the module docstring)."""
    mt = src.config["model_type"]
    if mt == "gpt2":
        return {"name": "clm"}
    if mt == "bert" and src.has("cls.predictions.transform.dense.weight"):
        return {"name": "mlm", "sentence_task": "nsp" if src.has("cls.seq_relationship.weight") else "none"}
    if mt == "electra" and src.has("generator_predictions.dense.weight"):
        return {"name": "mlm", "sentence_task": "none"}
    if mt == "electra" and src.has("discriminator_predictions.dense.weight"):
        return {"name": "electra"}
    pooling_file = src.directory / "1_Pooling" / "config.json"
    mean = pooling_file.is_file() and _read_json(pooling_file).get("pooling_mode_mean_tokens", False)
    has_pooler = src.has(f"{src.prefix}pooler.dense.weight")
    pooling = "mean" if mean else ("cls" if has_pooler and mt == "bert" else "cls_before_pooler")
    return {"name": "simcse", "pooling": pooling}


def _import_rules(cfg: Config, objective, src: Source) -> list[Rule]:
    """Our objective's parameters <-> the HF tensors of `src` (prefix as found in the file)."""
    m, p = cfg.model, src.prefix
    name = cfg.objective.name
    if name == "clm":
        head = Rule("head.proj.weight", (f"{p}wte.weight" if m.tie_embeddings else "lm_head.weight",))
        return gpt2_trunk_rules(m, "trunk.", p) + [head]
    trunk = bert_trunk_rules(m, "trunk.", p)
    if name == "mlm" and src.config["model_type"] == "electra":
        return _electra_generator_target(m, "", "").rules
    if name == "mlm":
        return export_targets(cfg, objective)[0].rules
    if name == "electra":
        return trunk + _copy("head.dense", "discriminator_predictions.dense") + _copy(
            "head.dense_prediction", "discriminator_predictions.dense_prediction")
    return trunk + (_copy("mlp.dense", f"{p}pooler.dense") if objective.mlp is not None else [])


def _load_rules(objective: torch.nn.Module, rules: list[Rule], src: Source, what: str) -> set[str]:
    """Set our parameters from `src` by `rules`; returns the HF keys used. Missing tensors or shapes that
    differ stop the import (a partly random model is never returned)."""
    state = objective.state_dict()
    missing = sorted({k for r in rules for k in r.theirs if not src.has(k)})
    if missing:
        raise ConfigError(f"{src.directory}: {what} needs weights the file does not have: {', '.join(missing[:6])}"
                          + (f" (+{len(missing) - 6} more)" if len(missing) > 6 else ""))
    for rule in rules:
        value = rule.to_ours(src.tensors)
        if tuple(value.shape) != tuple(state[rule.ours].shape):
            raise ConfigError(f"{src.directory}: {', '.join(rule.theirs)} has shape {tuple(value.shape)}, "
                              f"expected {tuple(state[rule.ours].shape)} for {rule.ours}")
        state[rule.ours].copy_(value)
    return {k for r in rules for k in r.theirs}


def _warn_unused(src: Source, used: set[str]) -> None:
    unused = sorted(k for k in src.names if k not in used and not k.endswith(IGNORED_HF_BUFFERS)
                    and not (src.config.get("tie_word_embeddings", True) and k in TIED_COPIES))
    if unused:
        print(f"note: {src.directory}: weights not used by the imported lmssl model: {', '.join(unused[:6])}"
              + (f" (+{len(unused) - 6} more)" if len(unused) > 6 else ""), file=sys.stderr)


# tied copies some exporters write although they equal the word embeddings / the prediction bias
TIED_COPIES = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "generator_lm_head.weight", "lm_head.weight")


def read_sources(path: Path) -> tuple[Source, Source | None]:
    """(the model, None), or (discriminator, generator) for ELECTRA's exported pair of directories."""
    if not (path / "config.json").is_file() and all((path / p / "config.json").is_file() for p in ELECTRA_PARTS):
        return Source.read(path / "discriminator"), Source.read(path / "generator")
    return Source.read(path), None


def import_config(path: str | Path, sources: tuple[Source, Source | None] | None = None) -> Config:
    """The lmssl config of a HF model directory: trunk from config.json, objective from its heads."""
    path = Path(path)
    first, generator = sources or read_sources(path)
    if generator is not None:
        return _config(first.model, {"name": "electra", "generator_size": _generator_size(first, generator)}, path)
    return _config(first.model, _objective_for(first), path)


def _generator_size(disc: Source, gen: Source) -> float:
    from lmssl.objectives.electra import generator_config

    ratio = gen.model["hidden_size"] / disc.model["hidden_size"]
    derived = generator_config(ModelConfig(**disc.model), ratio)
    for key in ("hidden_size", "num_heads", "ffn_size", "num_layers", "embedding_size"):
        want = gen.model[key] if key != "embedding_size" else (gen.model[key] or gen.model["hidden_size"])
        if getattr(derived, key) != want:
            raise ConfigError(f"{gen.directory}: the generator's {key} is {want}, but lmssl derives {getattr(derived, key)} "
                              f"from the discriminator (objective.generator_size={ratio:g}: same depth, heads of 64, "
                              f"FFN in proportion); import the discriminator directory alone instead")
    return ratio


def _config(model: dict[str, Any], objective: dict[str, Any], path: Path) -> Config:
    data = {"tokenizer": str(path), "tokenizer_type": "bpe" if model["preset"] == "gpt2" else "wordpiece",
            "seq_len": min(model["max_positions"], 512)}
    if objective["name"] == "simcse":
        data["valid"] = ""
    return config_from_dict({"model": model, "objective": objective, "data": data}, f"{path} (Hugging Face import)")


def import_pretrained(path: str | Path):
    """(config, tokenizer, objective with weights) of a HF model directory, like `load_pretrained`."""
    from lmssl.objectives import build_objective

    path = Path(path)
    first, generator = read_sources(path)
    cfg = import_config(path, (first, generator))
    tokenizer = read_tokenizer(first.directory)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"{first.directory}: the tokenizer has {tokenizer.vocab_size} tokens but vocab_size is "
                          f"{cfg.model.vocab_size}")
    objective = build_objective(cfg, tokenizer)
    with torch.no_grad():
        _warn_unused(first, _load_rules(objective, _import_rules(cfg, objective, first), first, cfg.objective.name))
        if generator is not None:
            # the embeddings are shared: the generator's copy must equal the discriminator's
            _check_shared_embeddings(first, generator)
            rules = _electra_generator_target(objective.generator.trunk.cfg, "generator.", "generator").rules
            _warn_unused(generator, _load_rules(objective, rules, generator, "ElectraForMaskedLM"))
        elif cfg.objective.name == "electra":
            print(f"note: {path} holds the ELECTRA discriminator only; the generator is freshly initialised",
                  file=sys.stderr)
    return cfg, tokenizer, objective


def _check_shared_embeddings(disc: Source, gen: Source) -> None:
    for key in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        for suffix in ("weight", "bias"):
            k = f"{disc.prefix}embeddings.{key}.{suffix}"
            kg = f"{gen.prefix}embeddings.{key}.{suffix}"
            if k in disc.tensors and kg in gen.tensors and not torch.equal(disc.tensors[k], gen.tensors[kg]):
                raise ConfigError(f"{gen.directory}: {kg} differs from the discriminator's; lmssl's ELECTRA shares "
                                  f"one embedding module, so the pair cannot be imported together")


def import_model(path: str | Path, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """`lmssl import`: a HF model directory as an lmssl checkpoint directory (model.safetensors, config.yaml,
    tokenizer.json), written atomically."""
    from lmssl.checkpoint import write_model_files

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir} exists and is not empty; choose another output directory or pass --overwrite")
    cfg, tokenizer, objective = import_pretrained(path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=str(out_dir / "tokenizer.json")))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_model_files(tmp, objective, cfg, tokenizer)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out_dir), "objective": cfg.objective.name,
            "parameters": sum(p.numel() for p in objective.parameters())}
