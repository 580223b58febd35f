"""Running the Envoy data plane: its bootstrap config and its process."""
