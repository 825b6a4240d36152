"""A plugin written against an older contract: bouncer_client_admit returns its refusal for
md5user instead of raising it."""
from bouncer.errors import ClientError
from bouncer.plugin import hookimpl


@hookimpl
def bouncer_client_admit(client):
    if client.user == "md5user":
        return ClientError("returns-refusal: not admitted", "28000")
    return None
