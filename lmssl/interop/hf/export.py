"""`lmssl export`: an lmssl model as `transformers` model directories (config.json + model.safetensors +
tokenizer files), as its objective's adapter maps it (lmssl.interop.hf.adapter):

    mlm                  BertForMaskedLM; + nsp/sop: BertForPreTraining; factorised embeddings: ElectraForMaskedLM;
                         modernbert preset: ModernBertForMaskedLM
    clm                  GPT2LMHeadModel; llama preset: LlamaForCausalLM
    electra              discriminator/ ElectraForPreTraining + generator/ ElectraForMaskedLM
    simcse               BertModel (its training MLP as pooler) + sentence-transformers pooling files

A config the target cannot express (RoPE, pre-LN BERT, post-LN GPT-2, ...) stops with a message naming the
option; an objective without an adapter is refused by name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lmssl.checkpoint.model_dir import ModelDir
from lmssl.config import Config, ModelConfig
from lmssl.data.tokenizer import TextTokenizer
from lmssl.interop.hf.adapter import Target
from lmssl.interop.hf.classifier import classifier_config, classifier_target, fold_head_bias
from lmssl.interop.hf.model_card import model_card
from lmssl.interop.hf.rules import Rule
from lmssl.objectives import hf_adapter
from lmssl.storage.atomic import atomic_directory, check_output_target
from lmssl.storage.ownership import check_model_output

# our activation -> HF's name for the same function (gelu_pytorch_tanh is F.gelu(approximate="tanh") itself)
ACTIVATION_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def hf_config(t: Target, tokenizer: TextTokenizer) -> dict[str, Any]:
    m = t.model
    common = {"architectures": [t.architecture], "model_type": t.model_type, "vocab_size": m.vocab_size,
              "initializer_range": m.init_std, "tie_word_embeddings": m.tie_embeddings, "torch_dtype": "float32"}
    if t.model_type == "modernbert":
        return {**common, **modernbert_config(m, tokenizer)}
    if t.model_type == "llama":
        eos = tokenizer.eos_id
        return {**common, "hidden_size": m.hidden_size, "intermediate_size": m.ffn_size,
                "num_hidden_layers": m.num_layers, "num_attention_heads": m.num_heads,
                "num_key_value_heads": m.num_heads, "head_dim": m.hidden_size // m.num_heads, "hidden_act": "silu",
                "max_position_embeddings": m.max_positions, "rms_norm_eps": m.norm_eps,
                "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
                "attention_bias": m.bias, "mlp_bias": m.bias, "attention_dropout": m.attention_dropout,
                "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": None}
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


def export_config(cfg: Config, tokenizer: TextTokenizer) -> dict[str, Any]:
    """The config.json `lmssl export` writes for a model of `cfg` (its first directory: ELECTRA's discriminator)."""
    return hf_config(hf_adapter(cfg.objective.name).export_targets(cfg)[0], tokenizer)


def modernbert_config(m: ModelConfig, tokenizer: TextTokenizer) -> dict[str, Any]:
    """ModernBertConfig with global attention in every layer (one RoPE base for all), one bias switch for all."""
    rope = {"rope_type": "default", "rope_theta": m.rope_theta}
    ids = {f"{role}_token_id": tokenizer.roles.get(role) for role in ("pad", "cls", "sep")}
    return {"hidden_size": m.hidden_size, "intermediate_size": m.ffn_size, "num_hidden_layers": m.num_layers,
            "num_attention_heads": m.num_heads, "hidden_activation": ACTIVATION_TO_HF[m.activation],
            "classifier_activation": ACTIVATION_TO_HF[m.activation], "max_position_embeddings": m.max_positions,
            "norm_eps": m.norm_eps, "norm_bias": m.bias, "attention_bias": m.bias, "mlp_bias": m.bias,
            "classifier_bias": m.bias, "decoder_bias": True, "layer_types": ["full_attention"] * m.num_layers,
            "rope_parameters": {"full_attention": rope, "sliding_attention": dict(rope)},
            "embedding_dropout": m.dropout, "mlp_dropout": m.dropout, "attention_dropout": m.attention_dropout,
            "classifier_dropout": m.dropout, "classifier_pooling": "cls", **ids,
            "bos_token_id": ids["cls_token_id"], "eos_token_id": ids["sep_token_id"]}


def tokenizer_files(tokenizer: TextTokenizer, model: ModelConfig, causal: bool,
                    classifier: bool = False) -> dict[str, str]:
    """tokenizer_config.json and special_tokens_map.json for our tokenizer.json, loaded by AutoTokenizer as a
    fast tokenizer that tokenizes exactly as ours (the same `tokenizers` file: normalizer, pre-tokenizer,
    model and the template: [CLS] A [SEP] B [SEP] with token types, or TextTokenizer.causal_template's)."""
    def token(role):
        i = tokenizer.roles.get(role)
        return None if i is None else tokenizer.tokenizer.id_to_token(i)

    if causal:  # GPT-2's convention: one <|endoftext|> for bos/eos/unk, no padding token
        eos = token("eos")
        special = {"bos_token": eos, "eos_token": eos, "unk_token": eos}
        names = ["input_ids", "attention_mask"]  # GPT2 would add token_type_ids through its word embeddings
    else:
        special = {f"{r}_token": token(r) for r in ("unk", "sep", "pad", "cls", "mask")}
        names = ["input_ids", "token_type_ids", "attention_mask"] if model.type_vocab_size else [
            "input_ids", "attention_mask"]
    special = {k: v for k, v in special.items() if v is not None}
    # a language model's text follows <|endoftext|> (transformers rebuilds causal_template's template from these,
    # as for Llama); a classifier's template is causal_template's own, which these flags would replace
    flags = {"add_bos_token": True, "add_eos_token": False} if causal and not classifier else {}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.max_positions,
              "padding_side": "right", "model_input_names": names, "clean_up_tokenization_spaces": False,
              **flags, **special}
    return {"tokenizer_config.json": json.dumps(config, indent=2) + "\n",
            "special_tokens_map.json": json.dumps(special, indent=2) + "\n"}


def hf_state_dict(state: dict[str, torch.Tensor], rules: list[Rule]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        for key, value in rule.to_theirs(state[rule.ours]).items():
            out[key] = value.detach().to("cpu", torch.float32).contiguous().clone()  # no shared storage in safetensors
    return out


def export(checkpoint: str | Path, out_dir: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write the `transformers` model directory (or ELECTRA's two) of a checkpoint or a fine-tuned model (any path
    lmssl.checkpoint.model_dir reads). Written to a temporary directory and renamed into place: a failed export leaves
    nothing behind."""
    out_dir, source = Path(out_dir), ModelDir.open(checkpoint)
    check_output_target(out_dir, source.path, "OUT_DIR")
    check_model_output(out_dir, overwrite)
    if source.kind == "finetuned":
        return export_classifier(source, out_dir)
    cfg, tokenizer, objective = source.config, source.tokenizer, source.objective()
    adapter = hf_adapter(cfg.objective.name)
    targets = adapter.export_targets(cfg)
    state = objective.state_dict()
    architectures = {t.subdir or ".": t.architecture for t in targets}
    with atomic_directory(out_dir) as tmp:
        sentence_transformers = False
        for t in targets:
            d = tmp / t.subdir
            d.mkdir(parents=True, exist_ok=True)
            save_file(hf_state_dict(state, t.rules), str(d / "model.safetensors"), metadata={"format": "pt"})
            files = {"config.json": json.dumps(hf_config(t, tokenizer), indent=2) + "\n",
                     **tokenizer_files(tokenizer, t.model, causal=objective.causal), **adapter.extra_files(cfg, t)}
            for name, text in files.items():
                (d / name).parent.mkdir(parents=True, exist_ok=True)
                (d / name).write_text(text)
            sentence_transformers |= "modules.json" in files
            (tokenizer.causal_template() if objective.causal else tokenizer).save(d)
        (tmp / "README.md").write_text(model_card(source, out_dir, architectures, sentence_transformers))
    return {"out": str(out_dir), "architectures": architectures, "objective": cfg.objective.name}


def export_classifier(source: ModelDir, out_dir: Path) -> dict[str, Any]:
    """A fine-tuned model as *ForSequenceClassification (lmssl.interop.hf.classifier)."""
    model, tokenizer, info, cfg = source.classifier(), source.tokenizer, source.finetune_info, source.config
    target = classifier_target(cfg, info)
    state = model.state_dict()
    tensors = hf_state_dict(state, target.rules)
    if target.model_type == "gpt2":
        fold_head_bias(tensors, state)
    config = {**hf_config(target, tokenizer), **classifier_config(info)}
    with atomic_directory(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, text in tokenizer_files(tokenizer, target.model, causal=info["causal"], classifier=True).items():
            (tmp / name).write_text(text)
        (tokenizer.causal_template(classifier=True) if info["causal"] else tokenizer).save(tmp)
        (tmp / "README.md").write_text(model_card(source, out_dir, {".": target.architecture}, False))
    return {"out": str(out_dir), "architectures": {".": target.architecture}, "task": info["card"]["name"]}
