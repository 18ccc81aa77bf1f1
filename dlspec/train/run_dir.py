"""The run directory of ``dlspec build``: the files it writes and the keys of what they hold.

Every reader (``export``, ``sample``, ``bench``) and writer (``build``, the training loop)
names them from here: the checkpoint's ``info`` (which spec and values the weights belong
to) and the keys of ``metrics.json`` that other commands read.
"""

from __future__ import annotations

from typing import Any

MODEL_PY = "model.py"
CHECKPOINT = "checkpoint.pt"
# a sharded run's checkpoints beside it, one folder per epoch (torch.distributed.checkpoint);
# a checkpoint's state[SHARDS] names the folder that goes with it
SHARDS = "checkpoint.shards"
METRICS_JSON = "metrics.json"
CURVES_PNG = "learning_curves.png"
CONFUSION_PNG = "confusion_matrix.png"

# keys of a checkpoint's info, also copied into metrics.json
SPEC = "spec"  # the spec's path
MODEL = "model"  # the model's name
PARAMS = "params"  # the model's parameter values (after --set)
BINDINGS = "bindings"  # the values of its symbolic dimensions
SPEC_TEXT = "spec_text"  # the spec itself, so a run directory is self-contained
CLASSES = "classes"  # the data's class names (a language model's vocabulary)

# keys of metrics.json
SPEC_HASH = "spec_hash"
CONFIG = "config"
DATA = "data"


def run_info(
    path: str, model: str, arguments: dict[str, Any], bindings: dict[str, int], text: str
) -> dict[str, Any]:
    """The checkpoint info of a run of the model ``model`` of the spec at ``path``."""
    return {SPEC: path, MODEL: model, PARAMS: arguments, BINDINGS: bindings, SPEC_TEXT: text}
