"""The simulated backend (see backend.py)."""
from sim.backends.model.backend import SimBackend

BACKEND = SimBackend()
