"""A plugin with a bug: its bouncer_auth_method returns a list where a method name belongs."""
from bouncer.plugin import hookimpl


@hookimpl
def bouncer_auth_method(client):
    if client.user == "md5user":
        return ["md5"]  # not a name: bouncer trips over it while logging the client in
    return None
