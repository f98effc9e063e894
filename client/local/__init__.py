"""The local processes the tooling and the tests start, in one place: Triton from the PyPI
wheel (``triton``), Redis and the Kafka-protocol broker on free loopback ports
(``services``), and the stub watchdog beside Triton (``watchdog``)."""
