"""Entry point: the only place gevent's monkey patching happens, before anything else loads."""
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402  (must come after patching)

from bouncer.cli import main as _cli_main  # noqa: E402


def main() -> int:
    return _cli_main()


if __name__ == "__main__":
    sys.exit(main())
