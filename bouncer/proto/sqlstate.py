"""The SQLSTATE codes bouncer puts in the ErrorResponses it sends itself.

Names and codes are PostgreSQL's (Appendix A, "PostgreSQL Error Codes"); only the ones
bouncer emits are listed, so a grep shows every place a code is used.
"""
from __future__ import annotations

# Class 00: successful completion (the code of bouncer's own NOTICEs)
SUCCESSFUL_COMPLETION = "00000"

# Class 08: connection exception
CONNECTION_EXCEPTION = "08000"
CONNECTION_FAILURE = "08006"
PROTOCOL_VIOLATION = "08P01"

# Class 0A: feature not supported
FEATURE_NOT_SUPPORTED = "0A000"

# Class 25: invalid transaction state

# Class 28: invalid authorization specification
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"

# Class 3D: invalid catalog name (unknown database)
INVALID_CATALOG_NAME = "3D000"

# Class 42: syntax error or access rule violation (admin console; a failing auth_query)
INSUFFICIENT_PRIVILEGE = "42501"
UNDEFINED_FUNCTION = "42883"
UNDEFINED_TABLE = "42P01"

# Class 53: insufficient resources
TOO_MANY_CONNECTIONS = "53300"

# Class 55: object not in prerequisite state (e.g. PAUSE while already paused)

# Class 57: operator intervention
QUERY_CANCELED = "57014"
ADMIN_SHUTDOWN = "57P01"
CANNOT_CONNECT_NOW = "57P03"

# Class F0: configuration file error (RELOAD failures)
CONFIG_FILE_ERROR = "F0000"

# Class XX: internal error (a bug in bouncer; the client is told, the daemon lives on)
INTERNAL_ERROR = "XX000"
