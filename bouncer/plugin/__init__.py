"""The plugin API: how to extend bouncer.

bouncer's behaviour at its boundaries (who may log in, with which credentials, which limits
apply, which admin commands exist) is decided by pluggy hooks.  The built-in behaviour is itself a
set of plugins (``bouncer.builtin.*``), so a third-party plugin is written exactly like them::

    # my_plugin.py
    from bouncer.plugin import Credentials, Refusal, hookimpl

    @hookimpl
    def bouncer_get_credentials(context, user, database):
        if user == "robot":
            return Credentials(user, "md5...", source="my_plugin")
        return None          # not mine: the next backend is asked

    @hookimpl
    def bouncer_client_admit(context, client):
        if client.addr.startswith("10.66."):
            raise Refusal("this network is closed for maintenance", hint="try after 18:00")

A plugin with settings of its own declares them (``bouncer_declare_settings``) as
:class:`Setting` rows, the type of bouncer's own settings table; they are read from its
``[plugin.NAME]`` section of the ini.

A plugin is loaded either by installing a distribution that declares an entry point in the group
``bouncer.plugins`` (the name is free, the value is the module), or by naming its module in the
``plugins =`` setting.  Every hook is declared, with its contract, in
:mod:`bouncer.plugin.hookspecs`; the guide is ``bouncer-plugins(7)``.

The stable API is what this module exports, with :class:`bouncer.plugin.context.PluginContext`
(the ``context`` argument) and :func:`bouncer.plugin.context.hba_lines`.  Hooks are also given
``app`` and ``session``, bouncer's insides, for the built-in plugins, which change with them.
"""
import pluggy

from bouncer.auth.store import Credentials
from bouncer.config.settings import Setting
from bouncer.errors import Refusal
from bouncer.plugin.client import ClientInfo

#: The pluggy project name; hook names start with ``bouncer_``.
NAME = "bouncer"

#: The entry-point group third-party plugins advertise themselves in.
ENTRY_POINT_GROUP = "bouncer.plugins"

#: Decorator marking a plugin's hook implementation.
hookimpl = pluggy.HookimplMarker(NAME)

__all__ = ["NAME", "ENTRY_POINT_GROUP", "hookimpl", "Setting", "Credentials", "Refusal",
           "ClientInfo"]
