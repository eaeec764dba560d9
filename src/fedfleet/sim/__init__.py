"""Simulation engines: run the update pipeline over an in-memory federation."""

from fedfleet.sim.engine import TIMING_KEYS, Simulation, SimulationResult, client_seed
from fedfleet.sim.federation import Federation

__all__ = ["TIMING_KEYS", "Federation", "Simulation", "SimulationResult", "client_seed"]
