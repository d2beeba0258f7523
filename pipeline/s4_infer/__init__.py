"""Infer: preprocess frames into the engine's input buffer and run the model on a batch."""
from pipeline.s4_infer.engine import Engine, ModelInfo, load_engine

__all__ = ["Engine", "ModelInfo", "load_engine"]
