"""The ``--backend`` / ``--address`` flags that ``reproduce`` and ``zoo`` share, checked before any work."""

from __future__ import annotations

from singledir.errors import SingledirError


def add_backend_arguments(p) -> None:
    p.add_argument("--backend", default="local", choices=("local", "ray"),
                   help="where jobs run: local (this machine's processes) or ray (a Ray cluster; "
                        "pip install 'singledir[ray]'; see README 'Running on a cluster')")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join with --backend ray: 'auto' (the cluster this host belongs to) or "
                        "HOST:PORT (default: start a local Ray instance with --jobs CPUs)")


def check_backend(args) -> None:
    """One-line errors for ``--address`` without Ray, and for a missing Ray, before anything is written."""
    if args.address is not None and args.backend != "ray":
        raise SingledirError(f"--address {args.address!r} is for the Ray backend; add --backend ray")
    if args.backend == "ray":
        from singledir.experiments.backends import import_ray

        import_ray()  # says how to install it
