"""PgBouncerFormatter: its per-second time stamp and per-record line caches stay exact."""
import logging
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
