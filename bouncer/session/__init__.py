"""One connection's life: clients (login, relay) and servers (connect, login)."""
import itertools

#: The ``id`` of SHOW CLIENTS, SHOW SERVERS and SHOW SOCKETS and KILL_CLIENT's argument: one
#: sequence for clients and servers, in the order their sockets were opened, as PgBouncer's.
next_socket_id = itertools.count(1).__next__
