"""PgBouncerFormatter: its per-second time stamp and per-record line caches stay exact."""
import logging
import os
import time

from bouncer.log import PgBouncerFormatter


def _record(created: float, message: str = "hello") -> logging.LogRecord:
    record = logging.LogRecord("bouncer", logging.INFO, __file__, 1, message, (), None)
    record.created, record.msecs = created, (created % 1) * 1000
    return record


def test_each_line_has_the_time_stamp_of_its_own_record():
    formatter = PgBouncerFormatter()
    for created in (1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5, 1_699_999_000.0):
        local = time.localtime(created)
        expected = (time.strftime("%Y-%m-%d %H:%M:%S", local) +
                    f".{int((created % 1) * 1000):03d} " + time.strftime("%Z", local))
        assert formatter.format(_record(created)).startswith(expected + " [")


def test_handlers_sharing_the_format_write_the_same_line():
    record = _record(1_700_000_000.5, "two\nlines")
    first = PgBouncerFormatter().format(record)
    assert PgBouncerFormatter().format(record) == first
    assert first.endswith(" LOG two\\n\tlines")


def test_a_line_names_this_process_also_after_a_fork():
    # -d forks: the daemon's lines must carry the child's pid, not the parent's.
    assert f" [{os.getpid()}] LOG " in PgBouncerFormatter().format(_record(1_700_000_000.0))
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        line = PgBouncerFormatter().format(_record(1_700_000_000.0))
        os.write(writer, line.encode())
        os._exit(0)
    os.close(writer)
    line = os.read(reader, 4096).decode()
    os.close(reader)
    os.waitpid(child, 0)
    assert f" [{child}] LOG " in line
