"""Spare greenlets: the ones that served a login or a woken client wait for the next one.

A new gevent Greenlet for every connection cost a connection storm more than its run: the
Greenlet's own bookkeeping (start, links, the Group that tracked it) and a fresh 16 KiB Python
data stack, an mmap and a munmap for each.  A spare greenlet is a plain greenlet parked in the
hub; work reaches it as ``(function, args)``, switched to from the hub.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, List, Tuple

from gevent import get_hub, getcurrent
from gevent.hub import RawGreenlet  # greenlet.greenlet

#: More than that many parked at once would hold memory (a few KiB each) for clients that
#: come no more: the others end.
SPARE_GREENLETS = 32

_spare: List[Any] = []


def spare_greenlet() -> Any:
    """A greenlet to switch to from the hub with ``(function, args)``: it runs
    ``function(*args)`` until that returns, then parks among the spares (or ends)."""
    return _spare.pop() if _spare else RawGreenlet(_serve, get_hub())


def spawn(function: Callable[..., Any], *args: Any) -> None:
    """Run ``function(*args)`` in a spare greenlet, from the hub's next round of callbacks
    (as ``gevent.spawn``, but nothing to join or kill: *function* ends on its own)."""
    get_hub().loop.run_callback(spare_greenlet().switch, function, args)


def _serve(function: Callable[..., Any], args: Tuple[Any, ...]) -> None:
    """A spare greenlet's life: run what it is given until there are spares enough."""
    hub = get_hub()
    me = getcurrent()
    while True:
        try:
            function(*args)
        except BaseException:  # reported as gevent reports a Greenlet's error; the hub goes on
            hub.handle_error(me, *sys.exc_info())
        if len(_spare) >= SPARE_GREENLETS:
            return
        del function, args  # parked, it holds nothing of the client it served
        _spare.append(me)
        function, args = hub.switch()
