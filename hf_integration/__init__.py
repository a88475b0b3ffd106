"""Hugging Face integration for indrnn-triton: IndRNN models for the Auto classes.

Importing this package registers model type "indrnn" with AutoConfig, AutoModel,
AutoModelForSequenceClassification, AutoModelForTokenClassification and AutoModelForCausalLM,
and marks the classes so that ``save_pretrained`` also writes their code and a full
``auto_map`` (loadable with ``trust_remote_code=True`` without this package).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_indrnn import IndRNNConfig
from .modeling_indrnn import (
    IndRNNCache,
    IndRNNForCausalLM,
    IndRNNForSequenceClassification,
    IndRNNForTokenClassification,
    IndRNNModel,
    IndRNNPreTrainedModel,
)

_AUTO_CLASSES = (
    (AutoModel, IndRNNModel),
    (AutoModelForSequenceClassification, IndRNNForSequenceClassification),
    (AutoModelForTokenClassification, IndRNNForTokenClassification),
    (AutoModelForCausalLM, IndRNNForCausalLM),
)

AutoConfig.register(IndRNNConfig.model_type, IndRNNConfig, exist_ok=True)
IndRNNConfig.register_for_auto_class()
for _auto, _model in _AUTO_CLASSES:
    _auto.register(IndRNNConfig, _model, exist_ok=True)
    _model.register_for_auto_class(_auto.__name__)

__all__ = [
    "IndRNNCache",
    "IndRNNConfig",
    "IndRNNPreTrainedModel",
    "IndRNNModel",
    "IndRNNForSequenceClassification",
    "IndRNNForTokenClassification",
    "IndRNNForCausalLM",
]
