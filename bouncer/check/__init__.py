"""``bouncer --check``: everything wrong with a configuration in one run, what a good one would
do in words, and (``--connect``) whether every ``[databases]`` target takes the pooler's login.

:mod:`~bouncer.check.problems` collects the problems, :mod:`~bouncer.check.summary` words a
good configuration, :mod:`~bouncer.check.verdict` words a login attempt and
:mod:`~bouncer.check.connect` makes the attempts, with the pooler's own server login code.
Only ``connect`` does network I/O.
"""
