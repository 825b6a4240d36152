import struct, time
import psycopg2
from tests.support import pgwire
from tests.support.inifile import common_ini
from tests.support.observe import scalar, backend_pid

def test_partial(pg, bouncer_factory):
    b = bouncer_factory(common_ini(pg, pool_mode="transaction", default_pool_size=1))
    for junk in [b"P" + struct.pack("!I", 100) + b"x" * 10, b"Q" + struct.pack("!I", 50) + b"SELECT 1", b"S", b"P\0\0", b"P" + struct.pack("!I", 12) + b"\0SELECT 1\0\0\0" + b"B"+struct.pack("!I", 14)+b"\0\0\0\0\0\0\0\0\0\0" + b"E" + struct.pack("!I", 9) + b"\0\0\0\0\0"]:
        sock, _ = pgwire.open_session(b.host, b.port, "md5user", "md5pass")
        sock.sendall(junk)
        time.sleep(0.2)
        sock.close()
        time.sleep(0.2)
        c = b.connect(); c.autocommit = True
        try:
            print(junk[:8], "next:", scalar(c, "SELECT 42"))
        except psycopg2.Error as e:
            print(junk[:8], "next ERR:", str(e).strip()[:100])
        c.close()
    print(b.log_tail(8))
