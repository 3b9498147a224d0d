"""Federated training on Flower 1.41: a ServerApp and a ClientApp, run embedded or on a real deployment.

- :mod:`~privmed.federation.config_bridge`: privmed config <-> Flower's flat run config;
- :mod:`~privmed.federation.task`: data partitions, local training and evaluation (plain privmed/torch);
- :mod:`~privmed.federation.client_app`, :mod:`~privmed.federation.server_app`: the Flower apps;
- :mod:`~privmed.federation.run`: the embedded simulation (``privmed federate``);
- :mod:`~privmed.federation.deploy`: SuperLink / SuperNode processes, TLS certificates, node keys.

Submodules are imported on use so that ``import privmed.federation`` stays cheap.
"""
