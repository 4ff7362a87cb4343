"""`tokenbook envoy-config`: the Envoy bootstrap and snippet for the routing contract."""
