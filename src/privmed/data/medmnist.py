"""MedMNIST v2 (being written, issue #2)."""

from privmed.data.base import Dataset

INFO: dict = {}


def load_medmnist(name: str, *, size: int = 28, root: str | None = None, download: bool = True) -> Dataset:
    raise NotImplementedError("issue #2")
