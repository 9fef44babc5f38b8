"""`modelmake olive`: an Olive workflow config, or the Olive lab's `olive` commands, as modelmake settings.

    modelmake olive import CONFIG.json [--name NAME]      -> conf/experiment/NAME.yaml and a table
    modelmake olive translate -- olive finetune ARGS...   -> the equivalent `modelmake build` line

Every Olive setting ends in one row of the table: the Hydra override(s) it became, how the same
words mean a different computation here, or why it was not taken. Nothing is dropped silently:
after the mappings run, every leaf of the config no mapping read gets a row of its own.

The layouts read (each confirmed in Olive's sources; citations are repository paths):

- oldest (Olive <= 0.4, 2023): `input_model: {type: PyTorchModel, config: {hf_config: {model_name,
  from_pretrained_args|model_loading_args}}}`, `data_configs` a dict, each with `params_config` and
  `params_config.component_kwargs.{load_dataset,pre_process_data}` (microsoft/Olive commit 230ee08
  "Add component_kwargs in DataConfig.params_config"; examples/llama2/llama2_qlora.json at a4b9e51;
  microsoft/Phi-3CookBook code/04.Finetuning/olive-ort-example/phrase-classification.json, the
  cookbook's classification config, and md/04.Fine-tuning/FineTuning_MicrosoftOlive.md);
  `engine.execution_providers`, `engine.search_strategy`;
- middle (Olive 0.5-0.6, 2024): `HfModel` with `config: {model_path, load_kwargs}`, `data_configs` a
  list, `load_dataset_config.params` / `pre_process_data_config.params`, every pass and system
  nested under `config` (examples/llama2/llama2_qlora.json at 076e792^; the "Fine-tuning Phi-3 with
  Microsoft Olive" guide, Phi-3CookBook md/03.FineTuning/FineTuning_MicrosoftOlive.md);
- today's (Olive >= 0.7): the same fields flat (commit 076e792 "NestedConfigs: config fields don't
  need nesting"; olive/data/config.py DataComponentConfig, olive/workflows/run/config.py RunConfig
  whose engine fields may also sit at the top level), e.g. examples/phi3/phi3_template.json at 78f7712^.

The `olive` commands are turned into the workflow config Olive's own CLI builds for them
(olive/cli/finetune.py, quantize.py, auto_opt.py, capture_onnx.py, generate_adapter.py and the
shared options in olive/cli/base.py), then mapped like an imported config: one mapping, two entry
points. The lab's commands: Phi-3CookBook md/03.FineTuning/olive-lab/readme.md and scripts/flow.sh.
"""

from modelmake.olive.commands import build_line, script_commands, split_commands, translate_commands
from modelmake.olive.data import derive_marker
from modelmake.olive.document import Doc, leaves, read_config, show
from modelmake.olive.experiment import import_config, table
from modelmake.olive.mapper import Mapper, map_config
from modelmake.olive.settings import ADDED, DEFAULT, DIFFERS, NO_EQUIVALENT, NOT_TAKEN, TAKEN, Mapped, Options, Row

__all__ = ["ADDED", "DEFAULT", "DIFFERS", "NOT_TAKEN", "NO_EQUIVALENT", "TAKEN", "Doc", "Mapped", "Mapper", "Options",
           "Row", "build_line", "derive_marker", "import_config", "leaves", "map_config", "read_config",
           "script_commands", "show", "split_commands", "table", "translate_commands"]
