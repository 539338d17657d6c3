"""obce: explain and compress BERT-family encoders with 0-dimensional persistent homology.

The pipeline, each step a plain object that saves and loads:

    corpus → activations → importance (λ per neuron) → plan → prune → fine-tune / evaluate

Importing obce registers its compressed model types with transformers' Auto classes, so a saved
compressed model loads with ``AutoModel.from_pretrained(folder)``.
"""

from ._version import __version__
from .activations import TOKEN_MODES, Activations, compute_activations
from .corpus import Corpus, sample_sentences
from .importance import ImportanceTable, analyze, compute_importance, head_importance
from .kernel import build_info, fast_death_radii, h0_deaths
from .models import COMPONENTS, encoder_layers, load_model
from .models.compressed import export_onnx, is_compressed
from .plans import PruningPlan, dry_run, paper_plan, target_plan, uniform_plan
from .prune import prune_model
from .tasks import GLUE_TASKS, OFFLINE_TASKS, Task, fetch_offline_tasks, list_tasks, load_task
from .train import compare, count_parameters, evaluate, finetune

__all__ = [
    "COMPONENTS",
    "GLUE_TASKS",
    "OFFLINE_TASKS",
    "TOKEN_MODES",
    "Activations",
    "Corpus",
    "ImportanceTable",
    "PruningPlan",
    "Task",
    "__version__",
    "analyze",
    "build_info",
    "compare",
    "compute_activations",
    "compute_importance",
    "count_parameters",
    "dry_run",
    "encoder_layers",
    "evaluate",
    "export_onnx",
    "fast_death_radii",
    "fetch_offline_tasks",
    "finetune",
    "h0_deaths",
    "head_importance",
    "is_compressed",
    "list_tasks",
    "load_model",
    "load_task",
    "paper_plan",
    "prune_model",
    "sample_sentences",
    "target_plan",
    "uniform_plan",
]
