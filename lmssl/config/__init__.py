"""Config as plain data: dataclasses, YAML + `key=value` overrides, validation. Imports no torch and reads
nothing but the YAML file; filling keys from the world (model.init_from, the tokenizer) is lmssl.training.prepare."""
from lmssl.config.finetune import FinetuneConfig, Grid, finetune_config, finetune_grid
from lmssl.config.objectives import (
                                     OBJECTIVE_CONFIGS,
                                     STS_SETS,
                                     STS_TEST_SETS,
                                     CLMConfig,
                                     ElectraConfig,
                                     MLMConfig,
                                     SimCSEConfig,
                                     generator_config,
                                     objective_config_class,
                                     register_objective_config,
)
from lmssl.config.parse import (
                                     RawConfig,
                                     build_config,
                                     build_section,
                                     config_from_dict,
                                     config_yaml,
                                     load_config,
                                     parse_override,
                                     read_config,
)
from lmssl.config.sections import (
                                     INIT_FREE_FIELDS,
                                     MODEL_PRESETS,
                                     SECTIONS,
                                     Config,
                                     DataConfig,
                                     EvalConfig,
                                     ModelConfig,
                                     ObjectiveConfig,
                                     TrainConfig,
)
from lmssl.errors import ConfigError

__all__ = ["CLMConfig", "Config", "ConfigError", "DataConfig", "ElectraConfig", "EvalConfig", "FinetuneConfig", "Grid",
           "INIT_FREE_FIELDS", "MLMConfig", "MODEL_PRESETS", "ModelConfig", "OBJECTIVE_CONFIGS", "ObjectiveConfig",
           "RawConfig", "SECTIONS", "STS_SETS", "STS_TEST_SETS", "SimCSEConfig", "TrainConfig",
           "build_config", "build_section", "config_from_dict", "config_yaml", "finetune_config", "finetune_grid",
           "generator_config", "load_config", "objective_config_class", "parse_override", "read_config",
           "register_objective_config"]
