"""Pool limits across the workers of a pooler with ``workers`` above 1 (issue #13).

Design note.  The supervisor is the arbiter of server-connection *slots*.  Each worker keeps a
unix socketpair to it for its whole life (handed over as an inherited descriptor, like the
ready byte's).  Before a pool opens a server connection it asks for a slot, sending the pool's
(database, user) and the limits it applies itself (``pool_size``, plus ``reserve_pool_size``
when its clients waited ``reserve_pool_timeout``; ``max_db_connections`` and
``max_user_connections``, as its configuration and SET USER / SET POOL say), so the supervisor
needs no configuration.  The supervisor counts granted slots per pool, per database and per
user (:mod:`bouncer.slots.table`), grants the slot or queues the request, and grants queued
requests oldest first as slots come back.  A worker returns a slot when that server connection
closes; a worker that dies returns all of its slots, because the supervisor sees its end of
the channel close.  A request stays queued while the pool has clients waiting; their wait is
still bounded by ``query_wait_timeout`` (and a connection, once granted, by
``server_connect_timeout``), as in one process.

When requests wait on a scope (a pool, a database, a user), the supervisor asks the workers
holding more than a max-min fair share of it to come down to that share: idle servers close at
once, busy ones when they are released.  Without that, servers a worker keeps (pooled between
transactions, they never close on their own) would starve clients that the kernel sent to
another worker.  A limit below one server per worker makes the shares 0; the slot left then
goes to a worker that holds none, so a pool of one server passes between two workers (a new
login each time) instead of staying with the first.  PgBouncer, for ``max_db_connections``,
closes an idle server of another pool; this is the same across processes.  A limit lowered
on one worker (SET POOL, SET USER, RELOAD) is announced, and the supervisor has every worker
shrink to its fair share of it.

``min_pool_size`` holds for the pooler, as in one process: a pool keeps that many servers
across the workers together, not that many in each (N times the connections PostgreSQL is
budgeted for, idle).  A worker whose pool has clients (or a forced user) and fewer servers
than that asks for a slot without waiting; the supervisor grants it only while the pool has
fewer across the workers, so workers filling at once open the minimum between them.  A
refused worker is remembered and told (``Refill``) once the slot would be granted, when a
server of the pool closes or a worker dies; until then it does not ask again (no request at
every janitor tick), and nobody closes a server for a connection that no client waits for.
Whoever asks first keeps them: a share per worker would open servers for a worker with one
idle client while another's clients are busy, and move them as clients come and go; clients
of a worker that has none open their own within ``pool_size``, as a burst does in one
process once the minimum is in use.

Why a channel to the supervisor rather than shared memory: pools and users appear at run time
(auto-databases, any user) and would need a shared hash table; a waiting worker must be woken
when a slot frees in another process (shared memory would need a second mechanism, or
polling); and a dead worker's slots must come back, which a socket's end-of-file gives for
free.  Only server connects and closes cross the channel, each already costing a TCP
connection and a login: nothing is sent per transaction or per client.  The frames are
PostgreSQL-shaped and sans-IO (:mod:`bouncer.slots.messages`), the I/O is
:mod:`bouncer.slots.channel`, the two ends :mod:`bouncer.slots.arbiter` (supervisor) and
:mod:`bouncer.slots.client` (worker).

The client limits (``max_client_conn``, ``max_db_client_connections``,
``max_user_client_connections``) are checked at every login, where a round trip to the
supervisor would cost the connection-storm benchmark; they use counts shared through a file
instead (:mod:`bouncer.slots.client_count`), with the same refusals as one process.  There
the shared hash table is all it takes: a client over a limit is refused, never woken later,
and a dead worker's counts are zeroed by the supervisor, which restarts it.  With
``workers = 1`` none of this exists: no channel, no shared file, and the pool's hot path is
unchanged.
"""
