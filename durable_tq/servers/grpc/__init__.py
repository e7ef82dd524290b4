"""durable_tq over gRPC: the proto, its generated code, the service and its error mapping.

Needs the ``grpc`` extra (``pip install 'durable_tq[grpc]'``); nothing else imports this
package unless the broker is started with a gRPC address.
"""
