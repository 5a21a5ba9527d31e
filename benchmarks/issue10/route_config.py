"""Print the TOML for one issue-10 route-cost case (benchmarks/issue10/README.md).

usage: route_config.py CASE [SHADOW]
  none   no [[route]] (the top level's settings; the exchange makes no call)
  miss   20 routes, none takes the benchmark's /bench?q=1: every prefix is tried
  last   20 routes, the 20th (/bench) takes it
  edits  miss, plus SHADOW as a [[shadow]] table with set_header/remove_header
         (the caller then gives no --shadow flag)
Routes carry no percent of their own: each uses the top level's (--mirror-percent).
"""

import sys

PREFIXES = [
    "/api/v1/users", "/api/v1/orders", "/api/v1/payments", "/api/v1/carts",
    "/api/v1/products", "/api/v1/search", "/api/v1/reviews", "/api/v1/inventory",
    "/api/v1/shipping", "/api/v1/invoices", "/api/v2/users", "/api/v2/orders",
    "/api/v2/search", "/auth/login", "/auth/token", "/static/", "/assets/",
    "/admin/", "/healthz", "/metrics",
]


def routes(case: str) -> list[str]:
    prefixes = PREFIXES[:19] + ["/bench"] if case == "last" else PREFIXES
    return [f'[[route]]\nname = "r{i}"\nprefix = "{p}"\n' for i, p in enumerate(prefixes)]


def main() -> None:
    case = sys.argv[1]
    out = [] if case == "none" else routes(case)
    if case == "edits":
        out.insert(0, f'[[shadow]]\nname = "v2"\ntarget = "{sys.argv[2]}"\n'
                      'set_header = { "x-env" = "shadow" }\n'
                      'remove_header = ["authorization", "cookie"]\n')
    print("\n".join(out))


if __name__ == "__main__":
    main()
