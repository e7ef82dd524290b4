"""The broker's network front: accept, TLS, hello/auth, framing, limits, dispatch, shutdown.

One task per connection reads newline-delimited JSON frames; after ``hello`` every request
runs as its own task (so a parked ``claim`` does not hold up the requests behind it), and
one writer task per connection sends the replies, whole lines, all that are waiting in one
write. Backpressure is plain: a connection with ``max_inflight`` unanswered requests is not
read from until one is answered, and a reply that cannot be written (a peer that does not
read) keeps its slot, so a slow reader ends up blocking only itself and TCP pushes back on it.

A claim that ends without its reply going out (the peer left, ``bye``, shutdown) hands the
tasks it leased straight back (``release``), so they do not wait for their leases to expire.

Shutdown (:meth:`BrokerServer.request_shutdown`) stops accepting, ends parked claims with
``shutting_down``, lets the requests already read finish and answer, answers anything read
afterwards with ``shutting_down``, closes every connection, and only then closes the store,
so every ``ok`` that went out is committed and nothing committed is cut in half.
"""

from __future__ import annotations

from durable_tq.servers.tcp.framing import FrameReader, PeerGone
from durable_tq.servers.tcp.listener import BrokerServer, raise_file_limit
from durable_tq.servers.tcp.process import run

__all__ = ["BrokerServer", "FrameReader", "PeerGone", "raise_file_limit", "run"]
