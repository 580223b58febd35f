"""Config sources: where config revisions come from (a YAML file or directory, etcd), all feeding the control plane."""

from __future__ import annotations

from xgate.sources.file import FileSource
from xgate.sources.revision import Revision

__all__ = ["FileSource", "Revision"]
