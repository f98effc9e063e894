"""Past one server: Envoy in front of Triton replicas (``make serve REPLICAS=N``).

``config`` renders Envoy's configuration (one source for the local tooling and the Helm
chart), ``envoy`` runs Envoy and writes the endpoints it watches, ``mesh`` starts the
replicas behind it and drains, restarts and readmits them.
"""
