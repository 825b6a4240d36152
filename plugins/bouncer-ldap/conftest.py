"""Lets the tests import the plugin package from a checkout, before it is installed."""
