"""Traffic dyeing: the ext_proc service that gives requests a release stage (see plugins.dyeing)."""

from xgate.dyeing.rules import Dye, Dyer, DyeRequest, baggage_with, sticky_bucket
from xgate.dyeing.service import DyeingServer, DyeingService, DyerRegistry, serve

__all__ = [
    "Dye",
    "DyeRequest",
    "DyeingServer",
    "DyeingService",
    "Dyer",
    "DyerRegistry",
    "baggage_with",
    "serve",
    "sticky_bucket",
]
