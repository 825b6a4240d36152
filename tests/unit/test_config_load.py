"""Loading whole files: typed settings, the section models, warnings and cross-field checks."""
from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from bouncer.config import (SETTINGS, Config, ConfigProblems, DatabaseDef, UserDef, load_config,
                            parse_pool_key, parse_pool_options, parse_user_options, read_config,
                            read_config_report, validate)
from bouncer.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "data" / "pgbouncer-example.ini"


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "bouncer.ini"
    path.write_text(text, encoding="utf-8")
    return load_config(str(path))


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value


class TestRealFiles:
    def test_debian_example_loads_unchanged(self) -> None:
        config = load_config(str(EXAMPLE))
        assert config.listen_addr == ("localhost",)
        assert config.unix_socket_dir == "/var/run/postgresql"
        assert config.auth_file == "/etc/pgbouncer/userlist.txt"
        assert config.max_client_conn == 100  # a default, filled in
        assert config.databases == {} and config.warnings == ()
        assert config.conffile == str(EXAMPLE)

    def test_every_commented_example_line_also_loads(self, tmp_path: Path) -> None:
        # Uncommenting each ';key = value' line exercises nearly every key PgBouncer documents;
        # all but resolv_conf, which bouncer refuses (its own test).
        text = re.sub(r"(?m)^; ?((?!resolv_conf)[a-z_0-9*]+ *=)", r"\1",
                      EXAMPLE.read_text(encoding="utf-8"))
        config = load(tmp_path, text)
        forcedb = config.databases["forcedb"]
        assert (forcedb.host, forcedb.port, forcedb.user, forcedb.password) == \
            (("localhost",), 300, "baz", "foo")
        assert forcedb.startup_params == {"client_encoding": "UNICODE", "DateStyle": "ISO"}
        assert forcedb.connect_query == "SELECT 1"
        assert config.databases["nondefaultdb"].reserve_pool_size == 10
        assert config.databases["foodb"].auth_user == "bar"  # the later duplicate wins
        assert config.databases["*"].host == ("testserver",)
        assert config.users["user1"] == UserDef(name="user1", pool_mode="transaction",
                                                max_user_connections=10)
        assert config.admin_users == ("user2", "someadmin", "otheradmin")
        assert config.service_name == "pgbouncer"
        assert config.warnings == ()  # every setting it gives is one bouncer honours


class TestSettings:
    def test_every_setting_has_a_typed_value(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\n")
        assert set(config.settings) == {setting.name for setting in SETTINGS}
        assert config.explicit == frozenset()

    def test_values_are_typed_and_explicit_keys_recorded(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\nlisten_port = 7432\nquery_timeout = 1500ms\n"
                                "so_reuseport = 1\nunix_socket_mode = 0700\n")
        assert (config.listen_port, config.query_timeout, config.so_reuseport) == (7432, 1.5, True)
        assert config.unix_socket_mode == 0o700
        assert config.explicit == {"listen_port", "query_timeout", "so_reuseport",
                                   "unix_socket_mode"}

    def test_settings_are_read_only(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\n")
        with pytest.raises(TypeError):
            config.settings["listen_port"] = 1  # type: ignore[index]

    def test_unknown_attribute_is_an_attribute_error(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\n")
        with pytest.raises(AttributeError, match="listen_prot"):
            config.listen_prot  # noqa: B018
        assert copy.copy(config) == config  # a half-built copy must not recurse

    def test_alias_sets_its_target_and_the_later_line_wins(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\nreserve_pool_size = 2\nreserve_pool = 3\n")
        assert config.reserve_pool_size == 3
        assert config.explicit == {"reserve_pool_size"}

    def test_explicit_conffile_is_kept(self, tmp_path: Path) -> None:
        assert load(tmp_path, "[pgbouncer]\nconffile = /etc/other.ini\n").conffile == \
            "/etc/other.ini"

    @pytest.mark.parametrize("line, fragment", [
        ("listen_prot = 1", "unknown parameter"),
        ("listen_port = 64x", "invalid integer"),
        ("listen_port = 70000", "maximum"),
        ("pool_mode = sometimes", "expected one of"),
        ("log_connections = maybe", "invalid boolean"),
        ("server_lifetime = forever", "invalid time"),
    ])
    def test_bad_values_name_file_line_and_key(self, tmp_path: Path, line: str,
                                               fragment: str) -> None:
        error = load_error(tmp_path, f"[pgbouncer]\nlogfile = x\n{line}\n")
        assert (error.lineno, error.key) == (3, line.split(" ")[0])
        assert error.filename and error.filename.endswith("bouncer.ini")
        assert fragment in str(error) and f"bouncer.ini:3: {error.key}:" in str(error)

    def test_tuning_settings_load_without_a_warning(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\nsbuf_loopcnt = 10\npkt_buf = 8192\n"
                                "tcp_defer_accept = 0\nservice_name = x\n")
        assert (config.sbuf_loopcnt, config.pkt_buf, config.warnings) == (10, 8192, ())

    def test_prepared_statements_are_honoured_without_a_warning(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\nmax_prepared_statements = 100\n")
        assert config.warnings == ()


class TestSections:
    def test_main_section_is_required(self, tmp_path: Path) -> None:
        assert "main section [pgbouncer] missing" in str(load_error(tmp_path, "[databases]\n"))

    def test_unknown_section_names_its_line(self, tmp_path: Path) -> None:
        error = load_error(tmp_path, "[pgbouncer]\n\n[database]\n")
        assert ("invalid section", error.lineno) == ("invalid section", 3)

    def test_database_line(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\n[databases]\n"
                                "App = host=h1,h2 port=6000 dbname=app pool_size=5 "
                                "pool_mode=Transaction server_lifetime=2min "
                                "query_wait_timeout=-1 timezone=UTC application_name=x "
                                "load_balance_hosts=disable auth_query='SELECT ''a'''\n"
                                "local =\n")
        app = config.databases["App"]
        assert app == DatabaseDef(
            name="App", host=("h1", "h2"), port=6000, dbname="app", pool_size=5,
            pool_mode="transaction", server_lifetime=120.0, query_wait_timeout=None,
            load_balance_hosts="disable", auth_query="SELECT 'a'",
            startup_params={"TimeZone": "UTC", "application_name": "x"})
        assert config.databases["local"] == DatabaseDef(name="local")
        assert hash(app) == hash(app)

    @pytest.mark.parametrize("value, fragment", [
        ("host=a sslmode=require", "unrecognized connection parameter: sslmode"),
        ("host=a port=0", "out of range"),
        ("host=a pool_size=0d", "invalid integer"),
        ("host=a pool_mode=sometimes", "expected one of"),
        ("host=a,,b", "empty entry"),
        ("host='oops", "unterminated"),
        ("host= dbname= port=", "empty value"),
    ])
    def test_bad_database_lines_name_file_line_and_database(self, tmp_path: Path, value: str,
                                                            fragment: str) -> None:
        error = load_error(tmp_path, f"[pgbouncer]\n[databases]\nappdb = {value}\n")
        assert (error.lineno, error.key) == (3, "appdb")
        assert fragment in str(error)

    def test_database_pgbouncer_is_reserved(self, tmp_path: Path) -> None:
        error = load_error(tmp_path, "[pgbouncer]\n[databases]\npgbouncer = host=a\n")
        assert "reserved" in str(error) and error.key == "pgbouncer"

    def test_users_pools_and_peers(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\n[users]\nbob = max_user_connections=3 "
                                "query_timeout=30 pool_size=-1\n"
                                "[pools]\nbob.app = pool_size=4\n"
                                "[peers]\n1 = host=/tmp/b1\n2 = host=10.0.0.2 port=7000\n")
        assert config.users["bob"].max_user_connections == 3
        assert config.users["bob"].query_timeout == 30.0
        assert config.users["bob"].pool_size is None
        assert config.pools[("bob", "app")].pool_size == 4
        assert config.peers[1].host == "/tmp/b1" and config.peers[1].port == 6432
        assert config.peers[2].port == 7000

    @pytest.mark.parametrize("key, value", [
        ("bob.app", "pool_size=0d"), ("bob.app", ""), ("bob.app", "pool_size=''"),
        (".app", "pool_size=1"), ("bob.", "pool_size=1"), ("a.b.c", "pool_size=1"),
        ("bobapp", "pool_size=1"), ("bob.app", "max_user_connections=1"),
    ])
    def test_bad_pool_lines(self, tmp_path: Path, key: str, value: str) -> None:
        error = load_error(tmp_path, f"[pgbouncer]\n[pools]\n{key} = {value}\n")
        assert (error.lineno, error.key) == (3, key)

    @pytest.mark.parametrize("line", ["bob = pool_mode=weird", "bob = max_user_connections=x",
                                      "bob = host=a"])
    def test_bad_user_lines(self, tmp_path: Path, line: str) -> None:
        assert load_error(tmp_path, f"[pgbouncer]\n[users]\n{line}\n").key == "bob"

    @pytest.mark.parametrize("line", ["0 = host=a", "x = host=a", "1 = host=a user=b"])
    def test_bad_peer_lines(self, tmp_path: Path, line: str) -> None:
        assert load_error(tmp_path, f"[pgbouncer]\n[peers]\n{line}\n").lineno == 3


class TestAdminHelpers:
    def test_user_options_reset_what_they_leave_out(self) -> None:
        options = parse_user_options("max_user_connections=40")
        assert options["max_user_connections"] == 40
        assert options["pool_mode"] is None and options["query_timeout"] is None
        assert UserDef(name="bob", **options).max_user_connections == 40

    def test_pool_options(self) -> None:
        assert parse_pool_options("pool_size=7") == {"pool_size": 7}
        assert parse_pool_options("pool_size=-1") == {"pool_size": None}
        assert parse_pool_key("bob.app") == ("bob", "app")
        with pytest.raises(ValueError):
            parse_pool_options("")


class TestCrossFieldChecks:
    def test_hba_needs_its_file(self, tmp_path: Path) -> None:
        error = load_error(tmp_path, "[pgbouncer]\nauth_type = hba\n")
        assert "auth_hba_file" in str(error)

    def test_client_tls_needs_key_and_cert(self, tmp_path: Path) -> None:
        error = load_error(tmp_path, "[pgbouncer]\nclient_tls_sslmode = require\n")
        assert "client_tls_key_file and client_tls_cert_file" in str(error)

    @pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
    def test_client_verify_modes_need_a_ca_and_say_clients_need_certificates(
            self, tmp_path: Path, mode: str) -> None:
        error = load_error(tmp_path, f"[pgbouncer]\nclient_tls_sslmode = {mode}\n"
                                     "client_tls_key_file = k\nclient_tls_cert_file = c\n")
        assert "client_tls_ca_file" in str(error) and "*client* must present" in str(error)

    def test_cert_auth_needs_client_verification(self, tmp_path: Path) -> None:
        error = load_error(tmp_path, "[pgbouncer]\nauth_type = cert\n")
        assert "auth_type = cert" in str(error)

    def test_read_config_skips_the_checks_and_validate_lists_them_all(self,
                                                                      tmp_path: Path) -> None:
        path = tmp_path / "bouncer.ini"
        path.write_text("[pgbouncer]\nauth_type = hba\nclient_tls_sslmode = verify-ca\n")
        problems = validate(read_config(str(path)))
        assert len(problems) == 3
        assert problems[0].startswith("auth_type = hba")

    def test_load_config_lists_every_problem_in_file_order(self, tmp_path: Path) -> None:
        error = load_error(tmp_path, "[pgbouncer]\nauth_type = hba\nlisten_port = x\n"
                                     "[databases]\ndb = port=0\n[nonsense]\n")
        assert isinstance(error, ConfigProblems)
        assert [(problem.lineno, problem.key) for problem in error.problems] == [
            (3, "listen_port"), (5, "db"), (6, None), (None, None)]
        assert error.problems[-1].message.startswith("auth_type = hba needs auth_hba_file")
        assert (error.lineno, error.key) == (3, "listen_port")  # the first one's
        assert str(error).count("; ") == 3

    def test_the_report_keeps_what_could_be_read(self, tmp_path: Path) -> None:
        path = tmp_path / "bouncer.ini"
        path.write_text("[pgbouncer]\npool_mode = sesion\nlisten_port = 7000\n"
                        "[databases]\nbad = port=x\ngood = port=7001\n")
        config, problems = read_config_report(str(path))
        assert (config.pool_mode, config.listen_port) == ("session", 7000)  # default kept
        assert list(config.databases) == ["good"]
        assert config.explicit == frozenset({"listen_port"})
        assert [problem.key for problem in problems] == ["pool_mode", "bad"]

    def test_values_set_by_code_are_checked_too(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\n")
        broken = Config(path=config.path, settings={**config.settings, "listen_port": 0,
                                                    "pool_mode": "sometimes"})
        assert [problem.split(":")[0] for problem in validate(broken)] == \
            ["listen_port", "pool_mode"]

    def test_valid_tls_configuration_passes(self, tmp_path: Path) -> None:
        config = load(tmp_path, "[pgbouncer]\nauth_type = cert\n"
                                "client_tls_sslmode = verify-full\nclient_tls_key_file = k\n"
                                "client_tls_cert_file = c\nclient_tls_ca_file = ca\n")
        assert validate(config) == []
