"""Simulation engines: the synchronous round loop and FedBuff's asynchronous one, and the
cohort executors that train a round's clients in-process, over forked processes, or on Ray."""

from fedfleet.sim._clock import ClientClock, ClientTimes
from fedfleet.sim._cohort import SequentialExecutor, VectorisedExecutor
from fedfleet.sim._deadline import DropLate, OverSelect, PartialWork
from fedfleet.sim._engine import TIMING_KEYS, Simulation, SimulationResult, client_seed
from fedfleet.sim._fedbuff import FedBuffSimulation, polynomial_staleness
from fedfleet.sim._federation import Federation
from fedfleet.sim._he_run import run_he_fedavg
from fedfleet.sim._population import SyntheticPopulation
from fedfleet.sim._procpool import ProcessExecutor
from fedfleet.sim._profiles import ClientProfiles, Lognormal, ProfileSpec, load_profiles_csv
from fedfleet.sim._ray_executor import RayExecutor

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
    "ProcessExecutor",
    "ProfileSpec",
    "RayExecutor",
    "SequentialExecutor",
    "Simulation",
    "SimulationResult",
    "SyntheticPopulation",
    "VectorisedExecutor",
    "client_seed",
    "load_profiles_csv",
    "polynomial_staleness",
    "run_he_fedavg",
]
