"""Faust agents: thin adapters that decode, call the pure core, and encode."""
