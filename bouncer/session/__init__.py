"""One connection's life: clients (login, relay) and servers (connect, login)."""
import itertools

#: The ``id`` of SHOW CLIENTS, SHOW SERVERS and SHOW SOCKETS and KILL_CLIENT's argument: one
#: sequence for clients and servers, in the order their sockets were opened, as PgBouncer's.
_socket_ids = itertools.count(1)


def next_socket_id() -> int:
    return next(_socket_ids)


def number_socket_ids(first: int, step: int) -> None:
    """Number sockets *first*, *first* + *step*, ...: with workers, each worker's ids are its
    own, so an id names one socket in the whole pooler (see WorkerSpec.owner_of)."""
    global _socket_ids
    _socket_ids = itertools.count(first, step)
