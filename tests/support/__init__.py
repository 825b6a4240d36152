"""Plain helpers (no pytest) shared by the test fixtures, the demo and the benchmark."""
