"""A plugin with a bug: its admission hook returns a string where a ClientError belongs."""
from bouncer.plugin import hookimpl


@hookimpl
def bouncer_client_admit(app, client):
    if client.user == "md5user":
        return "refused"  # not an exception: raising it is a TypeError inside bouncer
    return None
