"""Simulation engines: the synchronous round loop and FedBuff's asynchronous one."""

from fedfleet.sim.clock import ClientClock, ClientTimes
from fedfleet.sim.engine import TIMING_KEYS, Simulation, SimulationResult, client_seed
from fedfleet.sim.fedbuff import FedBuffSimulation, polynomial_staleness
from fedfleet.sim.federation import Federation

__all__ = [
    "TIMING_KEYS",
    "ClientClock",
    "ClientTimes",
    "FedBuffSimulation",
    "Federation",
    "Simulation",
    "SimulationResult",
    "client_seed",
    "polynomial_staleness",
]
