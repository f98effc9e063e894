"""The declarations and serving logic every other folder builds on.

A small shared core (tensor contracts, feature-view declarations, the circuit breaker,
Feast's online layout, the ONNX Runtime runner, settings, paths, the store table) and one
sub-package per pipeline (``fraud``, ``recommender``; the image pipeline is ``image.py``).
The core never imports a pipeline package. Imported by the Triton Python-backend models in
the serving interpreter (numpy<2, ONNX Runtime, redis-py, confluent-kafka, PyYAML, Pillow;
never Feast or pandas), and by the tools. See ``python_backend/README.md``.
"""
