"""Lets the tests import the plugin module from a checkout, before it is installed."""
