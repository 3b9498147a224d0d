"""Seeded client sampling: which clients train in a round depends only on (seed, round).

Flower's :class:`~flwr.server.SimpleClientManager` samples with Python's global ``random``; node ids are
random per run, too. :class:`SeededClientManager` orders the candidates by partition id (learnt in the
server's handshake) and draws from a generator seeded with ``(seed, round, draw)``, so a resumed run and an
uninterrupted run sample the same clients, in simulation and deployment alike.
"""

from __future__ import annotations

import threading

import numpy as np
from flwr.server import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.criterion import Criterion

from privmed.config import Config
from privmed.errors import PrivmedError


def sampled_clients(cfg: Config) -> int:
    """The clients FedAvg samples per round when all are available: ``max(⌊fraction_fit · N⌋, min_fit_clients)``
    (Flower's ``FedAvg.num_fit_clients``)."""
    n = cfg.data.num_clients
    return max(int(cfg.federation.fraction_fit * n), cfg.federation.min_fit_clients)


class SeededClientManager(SimpleClientManager):
    """A client manager whose :meth:`sample` is reproducible.

    Parameters
    ----------
    seed
        Base seed (the run's ``data.seed``... any int; the server passes ``train.seed``).
    connect_timeout
        Seconds :meth:`sample` waits for enough clients before raising a :class:`PrivmedError`.
    """

    def __init__(self, seed: int, *, connect_timeout: float = 120.0) -> None:
        super().__init__()
        self.seed = seed
        self.connect_timeout = connect_timeout
        #: client id (``str(node_id)``) -> partition id, filled by the server's handshake
        self.partition_of: dict[str, int] = {}
        self._round = 0
        self._draws = 0
        self._lock = threading.Lock()

    def begin_round(self, server_round: int) -> None:
        """Start the draws of ``server_round`` (call before the round's fit and evaluate)."""
        with self._lock:
            self._round, self._draws = server_round, 0

    def _order(self, cid: str) -> tuple[int, str]:
        return (self.partition_of.get(cid, 1 << 30), cid)

    def sample(
        self,
        num_clients: int,
        min_num_clients: int | None = None,
        criterion: Criterion | None = None,
    ) -> list[ClientProxy]:
        """``num_clients`` clients drawn with a generator seeded by ``(seed, round, draw)``, in partition order."""
        need = num_clients if min_num_clients is None else max(min_num_clients, 0)
        if not self.wait_for(need, timeout=max(int(self.connect_timeout), 1)):
            raise PrivmedError(
                f"only {self.num_available()} client(s) connected within {self.connect_timeout:.0f} s but a round "
                f"needs {need}; start more SuperNodes, lower federation.min_fit_clients or raise run.connect-timeout"
            )
        candidates = sorted(
            (cid for cid, proxy in self.clients.items() if criterion is None or criterion.select(proxy)),
            key=self._order,
        )
        if num_clients > len(candidates):
            return []
        with self._lock:
            rng = np.random.default_rng([self.seed, self._round, self._draws])
            self._draws += 1
        chosen = np.sort(rng.choice(len(candidates), size=num_clients, replace=False))
        return [self.clients[candidates[i]] for i in chosen]
