"""Encoder models: the architecture table of the analysed components, and loading."""

from .adapters import (
    ARCHITECTURES,
    COMPONENTS,
    ArchitectureLayout,
    LayerModules,
    builtin_model_path,
    check_component,
    encoder_layers,
    from_user_layer,
    load_model,
    max_sequence_length,
    register_architecture,
    to_user_layer,
)

__all__ = [
    "ARCHITECTURES",
    "COMPONENTS",
    "ArchitectureLayout",
    "LayerModules",
    "builtin_model_path",
    "check_component",
    "encoder_layers",
    "from_user_layer",
    "load_model",
    "max_sequence_length",
    "register_architecture",
    "to_user_layer",
]
