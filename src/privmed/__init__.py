"""privmed: privacy-preserving federated learning on medical images, and an audit of what it still leaks.

The package follows the flow of the data::

    data -> models -> train (plain torch) -> privacy (wrapping) -> federation (Flower) -> results JSON
"""

from privmed.errors import PrivmedError

__all__ = ["PrivmedError", "__version__"]
__version__ = "0.1.0"
