"""PgBouncerFormatter's per-second time stamp stays exact; LineHandler writes both places."""
import io
import logging
import os
import time

from bouncer.log import LineHandler, PgBouncerFormatter, _LeanRecord


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


def test_the_line_handler_writes_one_line_to_stderr_and_to_the_file(tmp_path):
    handler = LineHandler()
    handler.stderr = io.StringIO()
    handler.open_file(str(tmp_path / "bouncer.log"))
    handler.handle(_record(1_700_000_000.5, "two\nlines"))
    (tmp_path / "bouncer.log").rename(tmp_path / "bouncer.log.1")  # logrotate, then SIGHUP
    handler.reopen_file()
    handler.handle(_record(1_700_000_001.5, "after"))
    handler.close()
    first, second = handler.stderr.getvalue().splitlines()
    assert first.endswith(" LOG two\\n\tlines") and second.endswith(" LOG after")
    assert (tmp_path / "bouncer.log.1").read_text() == first + "\n"
    assert (tmp_path / "bouncer.log").read_text() == second + "\n"


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


def test_a_lean_record_has_the_fields_of_logging_s_own_with_the_switches_off(monkeypatch):
    for switch in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, switch, False)
    for args in (("bouncer.x", logging.INFO, "(unknown file)", 0, "a %s", ("b",), None),
                 ("bouncer.x", logging.ERROR, "/a/mod.py", 7, "%(k)s", ({"k": 1},), None, "f")):
        ours, theirs = vars(_LeanRecord(*args)), vars(logging.LogRecord(*args))
        for timed in ("created", "msecs", "relativeCreated"):
            ours.pop(timed), theirs.pop(timed)
        ours.pop("taskName")  # (logging's own has it only from Python 3.12 on)
        theirs.pop("taskName", None)
        assert ours == theirs
