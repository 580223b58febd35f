"""Config sources: where config revisions come from (a YAML file now, etcd later), all feeding one pipeline."""

from __future__ import annotations

from xgate.sources.file import FileSource
from xgate.sources.revision import Revision

__all__ = ["FileSource", "Revision"]
