"""Past one server: Envoy in front of Triton replicas (``make serve REPLICAS=N``).

``config`` renders Envoy's configuration (one source for the local tooling and the Helm
chart), ``envoy`` runs Envoy, ``rotation`` keeps the endpoints it watches (drain, admit, and
a model reload out of rotation for every operator's tool), ``mesh`` starts the replicas
behind it and restarts them.
"""
