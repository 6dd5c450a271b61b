"""The per-node object store: immutable serialized objects in shared memory.

Layering, bottom up:

- ``runtime.protocol.codec`` turns values into one contiguous layout (header, pickle,
  64-byte-aligned out-of-band buffers) and back without copying buffers;
- ``shm`` writes that layout to a file under /dev/shm and maps it back read-only
  (``write_object`` / ``read_object``), in any process on the node;
- ``store`` is the node manager's bookkeeping of those files (``SharedMemoryStore``):
  sizes, LRU order, pins, spilling to disk when full and restoring on demand.
"""

from runtime.object_store.shm import read_object, write_object
from runtime.object_store.store import SharedMemoryStore

__all__ = ["SharedMemoryStore", "read_object", "write_object"]
