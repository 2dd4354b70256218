"""The sections of a pretraining config: plain dataclasses, one line of comment per field."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal


@dataclass
class ModelConfig:
    # architecture family; sets the defaults of the fields below (and names the Hugging Face class an export becomes)
    preset: Literal["bert", "gpt2", "modernbert", "llama"] = "bert"
    vocab_size: int = 0  # 0 = the tokenizer's vocabulary size
    hidden_size: int = 256  # width of the residual stream
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads; must divide hidden_size
    ffn_size: int = 1024  # inner width of the feed-forward block
    max_positions: int = 512  # rows of the learned position table (upper bound on sequence length)
    embedding_size: int = 0  # factorised embedding width (ELECTRA); 0 = hidden_size
    type_vocab_size: int = 2  # token-type (segment) embeddings; 0 = none
    norm: Literal["post", "pre"] = "post"  # norm placement: after each residual add (BERT), before each branch (GPT-2)
    norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"  # every norm of trunk and heads: LayerNorm or RMSNorm
    norm_eps: float = 1e-12  # norm epsilon (BERT 1e-12, GPT-2 and ModernBERT 1e-5, Llama 1e-6)
    # a norm on the embeddings (BERT, ModernBERT); with norm=pre the first block then has no attention norm (ModernBERT)
    embedding_norm: bool = True
    final_norm: bool = False  # a norm on the last block's output (GPT-2, ModernBERT, Llama)
    bias: bool = True  # biases in the trunk's and heads' linear layers and LayerNorms (RMSNorm has none)
    mlp: Literal["gelu", "geglu", "swiglu"] = "gelu"  # feed-forward: act(x W1) W2, or gated: (act(x W) * x V) W2
    qk_norm: bool = False  # normalise each head's queries and keys (model.norm_type) before RoPE and the dot product
    position: Literal["learned", "rope"] = "learned"  # absolute learned positions, or rotary embeddings
    rope_theta: float = 10000.0  # RoPE base frequency
    # GELU of the gelu/geglu feed-forward and the heads: exact (BERT) or tanh approximation (GPT-2); swiglu uses SiLU
    activation: Literal["gelu", "gelu_tanh"] = "gelu"
    dropout: float = 0.1  # dropout on embeddings and residual branches
    attention_dropout: float = 0.1  # dropout on attention probabilities
    tie_embeddings: bool = True  # output projection shares the input embedding matrix
    init_std: float = 0.02  # std of the normal initialisation
    pooler: Literal["tanh", "head"] = "tanh"  # [CLS] pooler: BERT's dense + tanh, or ModernBERT's dense + act + norm
    # attention kernel: sdpa (PyTorch, CPU/GPU); flash (flash-attn varlen: CUDA, fp16/bf16); auto = flash where it runs
    attention_backend: Literal["auto", "sdpa", "flash"] = "auto"
    # checkpoint, run or Hugging Face directory whose encoder initialises the trunk (unset model keys take its shape)
    init_from: str = ""


# fields that may differ from the model.init_from source: regularisation and execution choices, and the output
# head's tying; every other field shapes or defines the trunk and must match the source
INIT_FREE_FIELDS = ("preset", "dropout", "attention_dropout", "init_std", "attention_backend", "tie_embeddings",
                    "pooler", "init_from")

# architecture families; values here are defaults, keys written in the config win
_CLASSIC = dict(norm_type="layernorm", bias=True, mlp="gelu", qk_norm=False, position="learned", pooler="tanh")
_MODERN = dict(norm="pre", bias=False, qk_norm=False, position="rope", type_vocab_size=0, dropout=0.0,
               attention_dropout=0.0, final_norm=True)
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "bert": dict(_CLASSIC, norm="post", norm_eps=1e-12, activation="gelu", type_vocab_size=2, embedding_norm=True,
                 final_norm=False),
    "gpt2": dict(_CLASSIC, norm="pre", norm_eps=1e-5, activation="gelu_tanh", type_vocab_size=0,
                 embedding_norm=False, final_norm=True),
    # ModernBertModel (Warner et al. 2024) with global attention in every layer: pre-LN without biases, GeGLU, RoPE
    "modernbert": dict(_MODERN, norm_type="layernorm", norm_eps=1e-5, mlp="geglu", activation="gelu",
                       embedding_norm=True, rope_theta=160000.0, pooler="head"),
    # LlamaModel: pre-RMSNorm, SwiGLU, RoPE, untied output head
    "llama": dict(_MODERN, norm_type="rmsnorm", norm_eps=1e-6, mlp="swiglu", activation="gelu",
                  embedding_norm=False, rope_theta=10000.0, tie_embeddings=False, pooler="tanh"),
}
# where a config names model.norm but not these, they follow the placement as before they existed: an embedding norm
# with post-LN, a final norm with pre-LN
NORM_PLACEMENT_DEFAULTS: dict[str, dict[str, bool]] = {"post": dict(embedding_norm=True, final_norm=False),
                                                       "pre": dict(embedding_norm=False, final_norm=True)}


@dataclass
class ObjectiveConfig:
    name: str = "mlm"  # registered objective: see lmssl.objectives.OBJECTIVES
    # data.valid when the config does not set it (or sets data.train by an override only): validation comes from the
    # training corpus unless the user names another
    default_valid: ClassVar[str] = "auto"

    def check(self, cfg: "Config", check) -> None:
        """Cross-field validation: call check(condition, key, message) for each rule (see validate.py)."""


@dataclass
class DataConfig:
    root: str = ""  # data root for relative paths; "" = $LMSSL_DATA, else ../shared/data from the working dir
    # training corpus: file (text/.jsonl/.csv/.tsv/.parquet/.arrow), save_to_disk dir, or cached Hub name:config:split
    train: str = "wikitext-2/train.txt"
    # validation corpus, as data.train; auto = hold out data.valid_fraction of data.train's documents; "" = none
    valid: str = "auto"
    valid_fraction: float = 0.01  # share of data.train's documents held out when data.valid=auto
    # file format; auto = from the file suffix
    format: Literal["auto", "text", "jsonl", "csv", "tsv", "parquet", "arrow"] = "auto"
    doc_split: Literal["auto", "blank_line", "line", "wikitext"] = "auto"  # how lines (or rows) group into documents
    text_field: str = "text"  # column holding the text in every format but plain text
    tokenizer: str = "wikitext2-wordpiece"  # name under tokenizers/ or path to a tokenizer.json
    tokenizer_type: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"  # recipe if the tokenizer must be trained
    tokenizer_vocab_size: int = 8192  # vocabulary size if the tokenizer must be trained
    seq_len: int = 128  # tokens per training sequence
    document_mask: bool = False  # stop attention at document boundaries inside packed sequences
    streaming: bool = False  # read and tokenize the corpus on the fly (corpora larger than memory)
    shuffle_buffer: int = 10000  # sequences in the shuffle buffer when streaming
    cache_dir: str = ""  # tokenization cache; "" = $LMSSL_CACHE, else ~/.cache/lmssl


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"  # metrics, TensorBoard logs and checkpoints go here
    max_steps: int = 300  # optimizer steps
    # compute budget in FLOPs (0 = off): max_steps = budget / the mean FLOPs of the first steps (lmssl.model.flops)
    max_flops: float = 0.0
    # wall-clock budget in minutes (0 = off): sets max_steps once from the first steps' speed; evaluations not counted
    max_minutes: float = 0.0
    batch_size: int = 32  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.01  # AdamW's (and Muon's) decoupled decay, never applied to norms, biases, embeddings
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.98  # AdamW beta2
    adam_eps: float = 1e-6  # AdamW epsilon
    # adamw; muon = torch.optim.Muon for the transformer blocks' 2-D weight matrices, AdamW for the rest (torch engine)
    optimizer: Literal["adamw", "muon"] = "adamw"
    # muon: peak lr of the block matrices, scaled by Muon by sqrt(max(1, rows/cols)) (torch's default adjust_lr_fn)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95  # muon: Nesterov momentum of the block matrices
    warmup_steps: int = 30  # linear warmup steps
    # after warmup: linear or cosine decay, constant, or wsd (constant, then linear decay over the last decay_fraction)
    schedule: Literal["linear", "cosine", "constant", "wsd"] = "linear"
    decay_fraction: float = 0.2  # wsd: share of max_steps at the end over which the lr decays linearly
    final_lr_ratio: float = 0.0  # learning rate at max_steps as a fraction of lr
    clip_grad: float = 1.0  # max global gradient norm; 0 = no clipping
    max_skipped_steps: int = 3  # steps in a row with a non-finite loss or gradient (skipped) that stop the run
    # torch engine: bf16 autocast over fp32 weights; deepspeed: its bf16/fp16 mixed precision (fp16: deepspeed only)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 0  # seeds python, numpy, torch and the data order
    log_every: int = 10  # steps between metrics.jsonl lines
    save_every: int = 100  # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # most recent checkpoints kept (0 = all)
    resume: bool = False  # continue from the latest checkpoint in output_dir
    overwrite: bool = False  # replace the lmssl run in output_dir (nothing else), once this run has checkpointed
    tensorboard: bool = True  # also write TensorBoard event files
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    compile: bool = False  # torch.compile (inductor) the objective; a part that fails to compile runs eagerly
    # gradient checkpointing: each transformer block's activations are recomputed in backward, not stored (less
    # memory, about a third more compute; the same dropout draws, so the same gradients)
    activation_checkpointing: bool = False
    engine: Literal["torch", "deepspeed"] = "torch"  # plain PyTorch (DDP under torchrun) or DeepSpeed
    zero_stage: int = 0  # deepspeed: ZeRO stage 0-3 (optimizer states / + gradients / + parameters partitioned)
    offload_optimizer: bool = False  # deepspeed: keep optimizer states in CPU memory (ZeRO stage >= 1)
    offload_params: bool = False  # deepspeed: keep parameters in CPU memory (ZeRO stage 3)
    deepspeed: str = ""  # deepspeed: JSON file whose keys are added to the generated config (contradictions stop)


@dataclass
class EvalConfig:
    every: int = 0  # evaluate on data.valid every N steps; 0 = only at the end
    max_batches: int = 0  # validation batches per evaluation; 0 = the whole split
    batch_size: int = 32  # sequences per validation batch
    likelihood_max_words: int = 500  # PPL (causal) / pseudo-PPL (masked) on the first N words of data.valid; 0 = off
    # online linear probe: a GLUE task or task card path whose probe (lmssl finetune's finetune.probe=true) is logged
    # as val_probe_<metric> every eval.every steps and at the end; "" = none
    probe_task: str = ""
    probe_examples: int = 1000  # the probe's fixed subsample: this many training and (per dev set) dev examples


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # the trunk
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # pretraining objective
    data: DataConfig = field(default_factory=DataConfig)  # corpora, tokenizer, packing
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation and checkpoints
    eval: EvalConfig = field(default_factory=EvalConfig)  # validation during and after training

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "objective": ObjectiveConfig, "data": DataConfig, "train": TrainConfig,
            "eval": EvalConfig}
