"""Throwaway plugin modules that functional tests load into bouncer with ``plugins =``."""
