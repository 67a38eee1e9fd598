"""The inference module: one engine owns loaded models and the device; app, CLI and benchmarks sample through it."""
from cedm.inference.engine import (INTERACTIVE_DEFAULTS, PAPER_DEFAULTS, Cancelled, EngineBusy, EngineClosed,
                                   InferenceEngine, Ticket, get_engine, model_key)
from cedm.inference.reference import reference_sample

__all__ = ["INTERACTIVE_DEFAULTS", "PAPER_DEFAULTS", "Cancelled", "EngineBusy", "EngineClosed", "InferenceEngine",
           "Ticket", "get_engine", "model_key", "reference_sample"]
