"""``python -m workers --model NAME``: the same as ``modelgate worker``."""

from workers.main import main

raise SystemExit(main())
