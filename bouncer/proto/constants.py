"""PostgreSQL wire-protocol numbers: versions, request codes, auth codes, message type bytes.

Names follow the "Message Formats" page of the PostgreSQL protocol documentation.  Message
type bytes are plain ``int`` attributes (not enum members) because the relay compares them
with ``chunk[i]``, which is an ``int``, in its hot loop.
"""
from __future__ import annotations

from enum import IntEnum

#: Protocol version 3.0 as sent in a StartupMessage (major << 16 | minor).
PROTOCOL_3_0 = 196608
#: The "protocol version" fields that are really special request codes (1234.xxxx).
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class AuthCode(IntEnum):
    """The int32 that opens every Authentication ('R') message."""

    OK = 0
    """AuthenticationOk: the login succeeded, ParameterStatus messages follow."""
    KERBEROS_V5 = 2
    """AuthenticationKerberosV5: obsolete, never accepted."""
    CLEARTEXT_PASSWORD = 3
    """AuthenticationCleartextPassword: send the password in a PasswordMessage."""
    MD5_PASSWORD = 5
    """AuthenticationMD5Password: 4-byte salt follows; send md5(md5(password+user)+salt)."""
    GSS = 7
    """AuthenticationGSS: not supported by bouncer (named for error messages)."""
    GSS_CONTINUE = 8
    """AuthenticationGSSContinue: not supported by bouncer."""
    SSPI = 9
    """AuthenticationSSPI: not supported by bouncer."""
    SASL = 10
    """AuthenticationSASL: list of NUL-terminated mechanism names follows."""
    SASL_CONTINUE = 11
    """AuthenticationSASLContinue: server-first-message follows."""
    SASL_FINAL = 12
    """AuthenticationSASLFinal: server-final-message follows."""


class Frontend:
    """Type bytes of messages a client sends (after the untyped startup packet)."""

    QUERY = ord("Q")
    PARSE = ord("P")
    BIND = ord("B")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    SYNC = ord("S")
    FLUSH = ord("H")
    CLOSE = ord("C")
    TERMINATE = ord("X")
    #: PasswordMessage, SASLInitialResponse, SASLResponse and GSSResponse all share 'p'.
    PASSWORD = ord("p")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    FUNCTION_CALL = ord("F")


class Backend:
    """Type bytes of messages a server sends."""

    AUTHENTICATION = ord("R")
    PARAMETER_STATUS = ord("S")
    BACKEND_KEY_DATA = ord("K")
    READY_FOR_QUERY = ord("Z")
    ERROR_RESPONSE = ord("E")
    NOTICE_RESPONSE = ord("N")
    NOTIFICATION_RESPONSE = ord("A")
    ROW_DESCRIPTION = ord("T")
    DATA_ROW = ord("D")
    COMMAND_COMPLETE = ord("C")
    EMPTY_QUERY_RESPONSE = ord("I")
    NEGOTIATE_PROTOCOL_VERSION = ord("v")
    PARSE_COMPLETE = ord("1")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    NO_DATA = ord("n")
    PARAMETER_DESCRIPTION = ord("t")
    PORTAL_SUSPENDED = ord("s")
    COPY_IN_RESPONSE = ord("G")
    COPY_OUT_RESPONSE = ord("H")
    COPY_BOTH_RESPONSE = ord("W")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    FUNCTION_CALL_RESPONSE = ord("V")


#: Transaction status byte of ReadyForQuery: not in a transaction block.
TXN_IDLE = ord("I")
#: In a transaction block.
TXN_IN_BLOCK = ord("T")
#: In a failed transaction block (queries rejected until the block ends).
TXN_FAILED = ord("E")
