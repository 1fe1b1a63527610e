"""What a command measures beyond one run: sweeps over seeds, capacity, cost, fidelity, calibration."""
