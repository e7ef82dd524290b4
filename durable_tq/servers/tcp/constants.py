"""The TCP front's timings and bounds (the rest are settings: docs/configuration.md)."""

from __future__ import annotations

import errno

#: Bytes asked of the socket per receive.
READ_CHUNK = 65536
#: Once a connection stops reading (bye, EOF, a closing error), how long its requests already
#: read may take to finish and be answered before they are cut off (shutdown: drain_timeout).
DRAIN_TIMEOUT = 10.0
#: How long a closing connection waits for the peer to close its side (see _close_gently).
LINGER_TIMEOUT = 2.0
#: How long a notice sent just before closing (``too_many_connections``, ``shutting_down``)
#: may wait on a peer that does not read.
NOTICE_TIMEOUT = 2.0
#: How often a connection over its reply bound checks whether the peer has read some (only
#: while it has stopped reading and running that peer's requests).
TRANSPORT_DRAIN_POLL = 0.01
#: A connection with fewer unwritten reply bytes than this is never held back by the
#: broker-wide bound (max_total_reply_buffer): it is not the one filling memory.
SHARE_FLOOR = 64 * 1024
#: How long the broker-wide count of unwritten reply bytes is reused before it is summed again.
TOTAL_BUFFERED_TTL = 0.01
#: Requests read from one connection in a row before its reader lets the others run (fairness).
#: A request counts one more for every TURN_BYTES of its line: the work of a request grows
#: with its length (names of queues to claim from, tasks to enqueue, settles), so a peer
#: pipelining long requests gets fewer of them per turn of the event loop.
READS_PER_TURN = 32
TURN_BYTES = 1024
#: Accept errors that mean "out of a resource for now" (files, buffers, memory): the accept
#: loop pauses this long and tries again instead of failing.
ACCEPT_PAUSE = 0.1
#: Connections accepted in a row before the accept loop lets the open connections run.
ACCEPTS_PER_TURN = 16
ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Files the broker holds besides its connections (database, WAL, shared memory and lock file
#: per SQLite connection, the listener, the event loop's own, stdio, logs): kept free when
#: the fd limit is checked against max_connections.
RESERVED_FILES = 64
