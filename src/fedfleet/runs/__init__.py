"""Runs: configuration, assembling a run from it, and the run directory it writes."""

from fedfleet.runs._config import RunConfig, dump_config, load_config
from fedfleet.runs._deploy_policy import for_deployment
from fedfleet.runs._rundir import RunDir, load_model_vector, save_model

__all__ = [
    "RunConfig",
    "RunDir",
    "dump_config",
    "for_deployment",
    "load_config",
    "load_model_vector",
    "save_model",
]
