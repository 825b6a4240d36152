"""The Debian package: what debian/ and etc/ promise, then the real thing end to end.

The fast tests read the files in the tree. The slow ones (class TestInstalledPackage) build the
.deb with ``make deb`` outside the repository, install it with ``apt-get install ./...deb``, check
what it installed, run the installed daemon as the ``bouncer`` user in front of a test
PostgreSQL and connect through it with psql, then purge the package and the dependencies it
pulled in. They change the machine, so they run only with ``BOUNCER_TEST_DEB=1``, as root on
Debian bookworm (CI runs them in a step of their own).
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import urllib.request
from typing import Dict, Iterator, List, Set

import pytest

from bouncer import VERSION_STRING, __version__
from bouncer.config import SETTINGS, load_config
from bouncer.testing.pgcluster import PgCluster, make_shared_tempdir
from bouncer.testing.ports import accepts_connections, free_port, wait_until

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE_INI = os.path.join(REPO_ROOT, "etc", "bouncer.ini")
UNIT_FILE = os.path.join(REPO_ROOT, "debian", "bouncer.service")
SERVICE_USER = "bouncer"
CONFIG = "/etc/bouncer/bouncer.ini"
USERLIST = "/etc/bouncer/userlist.txt"
#: The daemon must run on Debian's python3 and modules, never on the test runner's.
SYSTEM_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
DEPENDENCIES = ("python3-gevent", "python3-pluggy", "python3-configobj", "python3-openssl")
#: Each first-party plugin's package -> what it must depend on, and its entry point.
PLUGIN_PACKAGES = {
    "bouncer-prometheus": (("bouncer", "python3-prometheus-client", "python3-gevent"),
                           "bouncer_prometheus.plugin"),
    "bouncer-ldap": (("bouncer", "python3-ldap3", "python3-gevent"), "bouncer_ldap.plugin"),
    "bouncer-pam": (("bouncer", "python3-pampy", "python3-gevent"), "bouncer_pam"),
}
PACKAGES = ("bouncer", *PLUGIN_PACKAGES)
DASHBOARD = "/usr/share/bouncer-prometheus/bouncer-grafana.json"
INI_SECTIONS = {"databases", "users", "pools", "peers", "pgbouncer"}


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def unit_settings(text: str) -> Dict[str, List[str]]:
    """``Key=value`` lines of a systemd unit; a key may appear more than once."""
    settings: Dict[str, List[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def uncommented_examples(text: str) -> str:
    """The ini with every commented example line (``;key = value``, not ``;;`` prose) made
    active."""
    return re.sub(r"^;(?=[^;\s])", "", text, flags=re.M)


# -- the files in the tree -------------------------------------------------------------------

def test_changelog_version_is_the_python_version():
    first_line = read(os.path.join(REPO_ROOT, "debian", "changelog")).splitlines()[0]
    assert re.match(r"bouncer \(([^)]+)\)", first_line).group(1) == __version__


def test_example_config_has_every_section():
    sections = set(re.findall(r"^\[(\w+)\]$", read(EXAMPLE_INI), flags=re.M))
    assert sections == INI_SECTIONS


def test_example_config_shows_every_setting():
    text = read(EXAMPLE_INI)
    missing = [setting.name for setting in SETTINGS
               if not re.search(rf"^;?{setting.name} =", text, flags=re.M)]
    assert missing == []


def test_example_config_is_what_the_service_expects():
    config = load_config(EXAMPLE_INI)
    unit = unit_settings(read(UNIT_FILE))
    assert config.listen_addr == ("127.0.0.1",) and config.listen_port == 6432
    assert config.unix_socket_dir == "/run/" + unit["RuntimeDirectory"][0]
    assert os.path.dirname(config.pidfile) == config.unix_socket_dir
    assert config.auth_file == USERLIST
    assert config.warnings == ()


def test_every_commented_example_is_valid(tmp_path):
    """Uncommenting any example must give a file bouncer loads, with the defaults the
    comments claim."""
    path = tmp_path / "bouncer.ini"
    path.write_text(uncommented_examples(read(EXAMPLE_INI)))
    config = load_config(str(path))
    assert config.databases and config.users and config.pools and config.peers
    active = load_config(EXAMPLE_INI).explicit
    changed = [setting.name for setting in SETTINGS if setting.name not in active
               and config.settings[setting.name] != setting.default]
    assert changed == ["logfile"]  # the one example that is not the default


def test_unit_runs_the_checked_config_as_the_service_user():
    unit = unit_settings(read(UNIT_FILE))
    expected = {
        "Type": ["notify"],
        "User": [SERVICE_USER],
        "ExecStartPre": [f"/usr/bin/bouncer --check {CONFIG}"],
        "ExecStart": [f"/usr/bin/bouncer {CONFIG}"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "KillSignal": ["SIGINT"],
        "RuntimeDirectory": [SERVICE_USER],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "PrivateTmp": ["yes"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert int(unit["LimitNOFILE"][0]) > 1024


# -- the package, built and installed --------------------------------------------------------

def run(args: List[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command; on failure fail the test with its output."""
    result = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {result.returncode}:\n"
                    f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def apt_get(*args: str) -> None:
    # Wait for the dpkg lock rather than fail when something else is installing.
    run(["apt-get", "-y", "-o", "DPkg::Lock::Timeout=300", *args],
        env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def installed_packages() -> Set[str]:
    listing = run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n"]).stdout
    return {line.split()[1] for line in listing.splitlines() if line.startswith("ii")}


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def pid1_is_systemd() -> bool:
    return os.path.realpath("/proc/1/exe").endswith("/systemd")


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> Dict[str, str]:
    """Package name -> its .deb (bouncer and each plugin's), built by ``make deb`` into a
    directory outside the tree."""
    if os.geteuid() != 0:
        pytest.fail("BOUNCER_TEST_DEB=1 needs root: it installs packages")
    outdir = tmp_path_factory.mktemp("deb")
    run(["make", "--no-print-directory", "deb", f"DEB_OUTDIR={outdir}"], cwd=REPO_ROOT)
    built = {package: str(outdir / f"{package}_{__version__}_all.deb")
             for package in PACKAGES}
    assert sorted(built.values()) == sorted(glob.glob(str(outdir / "*.deb"))), \
        os.listdir(outdir)
    return built


@pytest.fixture(scope="module")
def deb(debs: Dict[str, str]) -> str:
    return debs["bouncer"]


@pytest.fixture(scope="module")
def installed(debs: Dict[str, str]) -> Iterator[None]:
    """All the packages installed with apt; afterwards removed, purged, and the machine as before
    (dependencies they pulled in and the system user created are removed too)."""
    before = installed_packages()
    user_existed = user_exists(SERVICE_USER)
    apt_get("install", *debs.values())
    pulled_in = installed_packages() - before - set(PACKAGES)
    try:
        yield
    finally:
        problems = uninstall(pulled_in)
        if not user_existed and user_exists(SERVICE_USER):
            run(["userdel", SERVICE_USER])
        assert problems == []


def uninstall(pulled_in: Set[str]) -> List[str]:
    """Remove, then purge; returns what did not behave as Debian's conventions say."""
    problems = []
    apt_get("remove", *PACKAGES)
    if not os.path.exists(CONFIG):
        problems.append("apt-get remove deleted the configuration")
    apt_get("purge", *PACKAGES, *sorted(pulled_in))
    if os.path.exists("/etc/bouncer"):
        problems.append(f"purge left /etc/bouncer: {os.listdir('/etc/bouncer')}")
    if run(["dpkg-statoverride", "--list"]).stdout.count(USERLIST):
        problems.append("purge left the statoverride of the userlist")
    return problems


@pytest.fixture
def service_workdir() -> Iterator[str]:
    """Stands in for the service's RuntimeDirectory: a directory the service user owns."""
    path = make_shared_tempdir("bouncer-deb-")
    shutil.chown(path, SERVICE_USER, SERVICE_USER)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_service_user(args: List[str], **kwargs) -> subprocess.CompletedProcess:
    return run(args, user=SERVICE_USER, group=SERVICE_USER, extra_groups=[], cwd="/",
               env=SYSTEM_ENV, **kwargs)


def configure_for_test(text: str, pg: PgCluster, port: int, workdir: str,
                       metrics_port: int) -> str:
    """The packaged config pointed at *pg*, on a free port, with its socket and pidfile in
    *workdir* (a service may already own 6432 and /run/bouncer on this machine), and the
    metrics plugin's commented-out section turned on, on *metrics_port*."""
    replacements = {"listen_port": str(port), "unix_socket_dir": workdir,
                    "pidfile": os.path.join(workdir, "bouncer.pid")}
    for key, value in replacements.items():
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        assert count == 1, f"the packaged config no longer sets {key}"
    database = f"testdb = host=127.0.0.1 port={pg.port} dbname=testdb\n"
    text = text.replace("[databases]\n", "[databases]\n" + database, 1)
    for commented, active in ((";[plugin.prometheus]", "[plugin.prometheus]"),
                              (";listen_port = 9127", f"listen_port = {metrics_port}")):
        assert text.count(commented) == 1, f"the packaged config no longer has {commented}"
        text = text.replace(commented, active)
    return text


@pytest.mark.slow
@pytest.mark.timeout(420)  # includes building and installing, in the first test's setup
@pytest.mark.skipif(os.environ.get("BOUNCER_TEST_DEB") != "1",
                    reason="builds and installs the .deb as root: set BOUNCER_TEST_DEB=1")
class TestInstalledPackage:

    def test_build_leaves_no_artefact_in_the_tree(self, deb):
        leftovers = [path for path in ("debian/bouncer", "debian/files", "debian/.debhelper",
                                       ".pybuild", "man/bouncer.1", "man/bouncer.5")
                     if os.path.exists(os.path.join(REPO_ROOT, path))]
        assert leftovers == []

    def test_depends_on_debians_own_python_modules(self, deb):
        depends = run(["dpkg-deb", "--field", deb, "Depends"]).stdout
        assert set(DEPENDENCIES) <= {item.split()[0] for item in depends.split(",")}

    @pytest.mark.parametrize("package", sorted(PLUGIN_PACKAGES))
    def test_plugin_packages_depend_on_bouncer_and_their_libraries(self, debs, package):
        depends = run(["dpkg-deb", "--field", debs[package], "Depends"]).stdout
        wanted = PLUGIN_PACKAGES[package][0]
        assert set(wanted) <= {item.split()[0] for item in depends.split(",")}

    def test_lintian_finds_no_error(self, debs):
        if shutil.which("lintian") is None:
            apt_get("install", "lintian")
        run(["lintian", "--fail-on", "error", *debs.values()])

    def test_plugin_packages_install_the_plugins_found_by_their_entry_points(self, installed):
        code = ("from importlib.metadata import entry_points; "
                "print(*sorted(e.value for e in entry_points(group='bouncer.plugins')))")
        found = as_service_user(["/usr/bin/python3", "-c", code]).stdout.split()
        assert found == sorted(entry for _, entry in PLUGIN_PACKAGES.values())
        assert os.path.isfile(DASHBOARD)

    def test_installs_command_config_unit_logrotate_and_man_pages(self, installed):
        for path in ("/usr/bin/bouncer", CONFIG, USERLIST, "/lib/systemd/system/bouncer.service",
                     "/etc/logrotate.d/bouncer", "/usr/share/man/man1/bouncer.1.gz",
                     "/usr/share/man/man5/bouncer.5.gz"):
            assert os.path.isfile(path), path
        conffiles = read("/var/lib/dpkg/info/bouncer.conffiles").split()
        assert {CONFIG, USERLIST} <= set(conffiles)

    def test_userlist_is_readable_by_the_service_user_only(self, installed):
        info = os.stat(USERLIST)
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert (info.st_uid, info.st_gid) == (0, pwd.getpwnam(SERVICE_USER).pw_gid)

    def test_creates_a_system_user_without_login(self, installed):
        user = pwd.getpwnam(SERVICE_USER)
        assert user.pw_uid < 1000
        assert user.pw_shell in ("/usr/sbin/nologin", "/bin/false")

    def test_unit_verifies(self, installed):
        verify = subprocess.run(["systemd-analyze", "verify", "bouncer.service"],
                                capture_output=True, text=True)
        complaints = [line for line in (verify.stdout + verify.stderr).splitlines()
                      if "bouncer.service" in line]
        assert complaints == []
        if verify.returncode != 0 and not pid1_is_systemd():
            pytest.skip("systemd-analyze verify does not work without systemd as PID 1:\n"
                        + verify.stderr)
        assert verify.returncode == 0, verify.stderr

    def test_runs_on_the_system_python(self, installed):
        with open("/usr/bin/bouncer", encoding="utf-8") as script:
            assert script.readline().strip() == "#!/usr/bin/python3"
        assert as_service_user(["/usr/bin/bouncer", "--version"]).stdout.strip() == \
            VERSION_STRING

    def test_packaged_config_passes_the_start_check(self, installed):
        # What ExecStartPre runs, as the service's user.
        as_service_user(["/usr/bin/bouncer", "--check", CONFIG])

    def test_installed_daemon_serves_psql_and_stops_on_sigint(self, installed, pg: PgCluster,
                                                               service_workdir):
        port, metrics_port = free_port(), free_port()
        config = os.path.join(service_workdir, "bouncer.ini")
        pidfile = os.path.join(service_workdir, "bouncer.pid")
        output = os.path.join(service_workdir, "output")
        with open(config, "w", encoding="utf-8") as out:
            out.write(configure_for_test(read(CONFIG), pg, port, service_workdir,
                                         metrics_port))
        # Into the packaged userlist, so the service user must read it through its group.
        with open(USERLIST, "a", encoding="utf-8") as userlist:
            userlist.write('"md5user" "md5pass"\n')
        with open(output, "wb") as log:
            daemon = subprocess.Popen(["/usr/bin/bouncer", config], stdout=log,
                                      stderr=subprocess.STDOUT, user=SERVICE_USER,
                                      group=SERVICE_USER, extra_groups=[], cwd="/",
                                      env=SYSTEM_ENV, start_new_session=True)
        try:
            listening = wait_until(
                lambda: accepts_connections(socket.AF_INET, ("127.0.0.1", port)), 20,
                give_up=lambda: daemon.poll() is not None)
            assert listening, read(output)
            assert read(pidfile).strip() == str(daemon.pid)
            self.check_psql(pg, port, service_workdir)
            self.check_metrics(metrics_port)
        finally:
            daemon.send_signal(signal.SIGINT)  # the unit's KillSignal
            exit_code = daemon.wait(20)
        assert exit_code == 0, f"SIGINT did not stop it cleanly:\n{read(output)}"
        assert not os.path.exists(pidfile), "the pidfile was left behind after exit"

    @staticmethod
    def check_metrics(port: int) -> None:
        """The packaged plugin, turned on by its section, serves what psql just did."""
        url = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(url + "/healthz", timeout=5) as health:
            assert health.read() == b"ok\n"
        with urllib.request.urlopen(url + "/metrics", timeout=5) as metrics:
            text = metrics.read().decode()
        assert "\npgbouncer_up 1.0\n" in text
        assert 'pgbouncer_stats_queries_pooled_total{database="testdb"}' in text

    @staticmethod
    def check_psql(pg: PgCluster, port: int, socket_dir: str) -> None:
        psql = [os.path.join(pg.bindir, "psql"), "-X", "-A", "-t", "-p", str(port)]
        through_tcp = run([*psql, "-h", "127.0.0.1", "-U", "md5user", "-d", "testdb",
                           "-c", "SELECT current_user"],
                          env=dict(SYSTEM_ENV, PGPASSWORD="md5pass", PGCONNECT_TIMEOUT="5"))
        assert through_tcp.stdout.strip() == "md5user"
        # The local admin of bouncer(1): the service's own unix user, no password.
        console = as_service_user([*psql, "-h", socket_dir, "-U", "pgbouncer", "-d",
                                   "pgbouncer", "-c", "SHOW VERSION"])
        assert console.stdout.strip() == VERSION_STRING
