"""SASLprep as PostgreSQL applies it to SCRAM passwords."""
from bouncer.auth.saslprep import saslprep
from bouncer.auth.scram import ScramServer, make_scram_secret, parse_scram_secret


def test_ascii_passwords_are_unchanged() -> None:
    assert saslprep("pass word!") == "pass word!"


def test_non_ascii_spaces_map_to_space_and_soft_hyphen_to_nothing() -> None:
    assert saslprep("pass\u00a0word") == "pass word"
    assert saslprep("pass\u00adword") == "password"


def test_compatibility_characters_are_normalized() -> None:
    assert saslprep("\u2168") == "IX"  # ROMAN NUMERAL NINE under NFKC


def test_refused_passwords_are_used_as_they_are() -> None:
    assert saslprep("a\u0007b\u00e9") == "a\u0007b\u00e9"  # a control character is prohibited
    assert saslprep("\u0627a") == "\u0627a"  # right-to-left mixed with left-to-right


def test_non_utf8_passwords_skip_saslprep() -> None:
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert saslprep(raw) == raw


def test_a_secret_made_from_the_prepared_form_accepts_the_unprepared_password() -> None:
    secret = parse_scram_secret(make_scram_secret("pass word"))
    assert ScramServer.verify_password(secret, "pass\u00a0word")
