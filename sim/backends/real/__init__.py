"""The real backend (see backend.py)."""
from sim.backends.real.backend import RedisBackend

BACKEND = RedisBackend()
