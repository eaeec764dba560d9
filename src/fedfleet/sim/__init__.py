"""Simulation engines: the synchronous round loop and FedBuff's asynchronous one."""

from fedfleet.sim.clock import ClientClock, ClientTimes
from fedfleet.sim.cohort import SequentialExecutor, VectorisedExecutor
from fedfleet.sim.deadline import DropLate, OverSelect, PartialWork
from fedfleet.sim.engine import TIMING_KEYS, Simulation, SimulationResult, client_seed
from fedfleet.sim.fedbuff import FedBuffSimulation, polynomial_staleness
from fedfleet.sim.federation import Federation
from fedfleet.sim.population import SyntheticPopulation
from fedfleet.sim.profiles import ClientProfiles, Lognormal, ProfileSpec, load_profiles_csv

__all__ = [
    "TIMING_KEYS",
    "ClientClock",
    "ClientProfiles",
    "ClientTimes",
    "DropLate",
    "FedBuffSimulation",
    "Federation",
    "Lognormal",
    "OverSelect",
    "PartialWork",
    "ProfileSpec",
    "SequentialExecutor",
    "Simulation",
    "SimulationResult",
    "SyntheticPopulation",
    "VectorisedExecutor",
    "client_seed",
    "load_profiles_csv",
    "polynomial_staleness",
]
