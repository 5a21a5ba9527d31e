"""istio.py: VirtualService YAML -> fastmirror TOML, and a warning for each part that does not translate.

Every TOML produced here is also loaded with config.load_config, so "the output is a
valid fastmirror config" is checked for each case, not only for the seed.
"""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmirror.config import load_config, route_warnings
from fastmirror.istio import IstioError, load_documents, translate

from istio_examples import SEED


def run(yaml_text: str, tmp_path: Path) -> tuple[dict[str, Any], tuple[str, ...], str]:
    """(the TOML parsed, the warnings, the TOML text); the TOML must load as a Config."""
    result = translate(load_documents(textwrap.dedent(yaml_text), "vs.yaml"), "vs.yaml")
    path = tmp_path / "out.toml"
    path.write_text(result.toml)
    load_config(str(path), {})  # raises ConfigError if fastmirror would refuse it
    return tomllib.loads(result.toml), result.warnings, result.toml


def vs(http: str, namespace: str | None = None, extra_spec: str = "") -> str:
    """A VirtualService around `http` (YAML of the http list, indented by 2)."""
    meta = f"  name: svc\n" + (f"  namespace: {namespace}\n" if namespace else "")
    return (f"kind: VirtualService\nmetadata:\n{meta}spec:\n  hosts: [svc]\n{extra_spec}  http:\n"
            + textwrap.indent(textwrap.dedent(http), "  "))


def test_seed_translation(tmp_path):
    data, warnings, text = run(SEED, tmp_path)
    assert warnings == ()
    assert data == {
        "primary": "http://search-v1:80",
        "mirror_percent": 0,
        "shadow": [{"name": "search-v2", "target": "http://search-v2:80"}],
        "route": [{"name": "api-search", "prefix": "/api/search", "mirror_percent": 10.0,
                   "shadow": ["search-v2"]}],
    }  # fmt: skip
    # The catch-all without a mirror is no route; the TOML says so rather than prefix = "/".
    assert 'http[1] (route \'route-2\', prefix /, no mirror) is no [[route]] here' in text
    assert 'prefix = "/"' not in text


def test_multi_route_keeps_first_match_order_and_expands_hosts(tmp_path):
    data, warnings, _ = run(vs("""\
        - name: search
          match:
          - uri: {prefix: /api/search}
            method: {exact: GET}
          route:
          - destination: {host: search-v1, port: {number: 8080}}
          mirror: {host: search-v2, port: {number: 8081}}
          mirrorPercentage: {value: 12.5}
        - name: payments
          match:
          - uri: {prefix: /api/payments}
          route:
          - destination: {host: search-v1, port: {number: 8080}}
        - match:
          - uri: {prefix: /api}
          route:
          - destination: {host: search-v1, port: {number: 8080}}
          mirror: {host: archive.other.svc.cluster.local}
        - route:
          - destination: {host: search-v1, port: {number: 8080}}
        """, namespace="prod"), tmp_path)
    assert warnings == ()
    assert data["primary"] == "http://search-v1.prod.svc.cluster.local:8080"
    assert data["shadow"] == [
        {"name": "search-v2", "target": "http://search-v2.prod.svc.cluster.local:8081"},
        {"name": "archive.other.svc.cluster.local", "target": "http://archive.other.svc.cluster.local:80"},
    ]
    assert data["route"] == [
        {"name": "search", "prefix": "/api/search", "methods": ["GET"], "mirror_methods": ["GET"],
         "mirror_percent": 12.5, "shadow": ["search-v2"]},
        # Between two mirroring routes: kept, so /api/payments does not fall into /api.
        {"name": "payments", "prefix": "/api/payments", "shadow": []},
        # No mirrorPercentage: Istio mirrors every request.
        {"name": "api", "prefix": "/api", "mirror_percent": 100.0,
         "shadow": ["archive.other.svc.cluster.local"]},
    ]  # fmt: skip


def test_non_mirroring_route_after_the_last_mirror_is_kept_until_a_catch_all(tmp_path):
    data, _, _ = run(vs("""\
        - match: [{uri: {prefix: /a}}]
          route: [{destination: {host: p}}]
          mirror: {host: s}
        - match: [{uri: {prefix: /b}}]
          route: [{destination: {host: p}}]
        - route: [{destination: {host: p}}]
        - match: [{uri: {prefix: /c}}]
          route: [{destination: {host: p}}]
        """), tmp_path)
    assert [(r["name"], r["shadow"]) for r in data["route"]] == [("a", ["s"]), ("b", [])]


def test_routes_after_a_mirroring_catch_all_are_kept_in_order_and_warned(tmp_path):
    data, warnings, _ = run(vs("""\
        - route: [{destination: {host: p}}]
          mirror: {host: s}
          mirrorPercentage: {value: 5}
        - match: [{uri: {prefix: /late}}]
          route: [{destination: {host: p}}]
          mirror: {host: s}
        """), tmp_path)
    assert [(r["name"], r["prefix"]) for r in data["route"]] == [("route-1", "/"), ("late", "/late")]
    assert warnings == ("route 'late': comes after route 'route-1', which takes every request: "
                        "it never matches (in Istio neither)",)  # fmt: skip
    config_path = tmp_path / "out.toml"
    assert route_warnings(load_config(str(config_path), {}))  # fastmirror says so too


def test_several_matches_become_several_routes_with_unique_names(tmp_path):
    data, _, _ = run(vs("""\
        - name: api
          match:
          - uri: {prefix: /v1}
          - uri: {prefix: /v2}
          route: [{destination: {host: p}}]
          mirror: {host: s}
        - name: api
          match: [{uri: {prefix: /v3}}]
          route: [{destination: {host: p}}]
          mirror: {host: s}
        """), tmp_path)
    assert [(r["name"], r["prefix"]) for r in data["route"]] == [("api", "/v1"), ("api-2", "/v2"),
                                                                ("api-3", "/v3")]  # fmt: skip


def test_mirrors_list_with_different_percentages_takes_the_largest(tmp_path):
    data, warnings, _ = run(vs("""\
        - name: search
          route: [{destination: {host: search-v1}}]
          mirrors:
          - destination: {host: search-v2}
            percentage: {value: 10}
          - destination: {host: search-v3, port: {number: 9000}}
            percentage: {value: 25.5}
        """), tmp_path)
    assert data["shadow"] == [{"name": "search-v2", "target": "http://search-v2:80"},
                              {"name": "search-v3", "target": "http://search-v3:9000"}]  # fmt: skip
    assert data["route"][0]["mirror_percent"] == 25.5
    assert data["route"][0]["shadow"] == ["search-v2", "search-v3"]
    assert warnings == ("route 'search': mirrors have different percentages (10, 25.5); fastmirror's "
                        "percent is per route, not per shadow: every one gets 25.5",)  # fmt: skip


def test_same_percentages_in_mirrors_give_no_warning(tmp_path):
    data, warnings, _ = run(vs("""\
        - route: [{destination: {host: p}}]
          mirrors:
          - destination: {host: a}
          - destination: {host: b}
        """), tmp_path)
    assert warnings == () and data["route"][0]["mirror_percent"] == 100.0


def test_subset_of_another_host_names_the_shadow_and_warns(tmp_path):
    data, warnings, _ = run(vs("""\
        - route: [{destination: {host: reviews}}]
          mirror: {host: ratings, subset: canary}
        """, namespace="shop"), tmp_path)
    assert data["shadow"] == [{"name": "ratings-canary", "target": "http://ratings.shop.svc.cluster.local:80"}]
    assert warnings == ("shadow 'ratings-canary': subset 'canary' cannot be translated (a DestinationRule's "
                        "label selector); the shadow is every pod behind ratings.shop.svc.cluster.local",)  # fmt: skip


def test_subset_of_the_primarys_host_gets_a_guessed_target_and_warns(tmp_path):
    data, warnings, text = run(vs("""\
        - route: [{destination: {host: reviews, subset: v1}}]
          mirror: {host: reviews, subset: v2}
        """, namespace="shop"), tmp_path)
    assert data["primary"] == "http://reviews.shop.svc.cluster.local:80"
    assert data["shadow"] == [{"name": "reviews-v2", "target": "http://reviews-v2.shop.svc.cluster.local:80"}]
    assert "a guess: point this at a Service for the v2 pods" in text
    assert warnings == (
        "primary: subset v1 cannot be translated (a DestinationRule's label selector); the primary is "
        "every pod behind reviews.shop.svc.cluster.local",
        "shadow 'reviews-v2': subset 'v2' cannot be translated (a DestinationRule's label selector) and "
        "http://reviews.shop.svc.cluster.local:80 is the primary; the target "
        "http://reviews-v2.shop.svc.cluster.local:80 is a guess: point it at a Service for those pods",
    )


def test_mirror_that_is_the_primary_is_left_out(tmp_path):
    data, warnings, _ = run(vs("""\
        - match: [{uri: {prefix: /x}}]
          route: [{destination: {host: p}}]
          mirror: {host: p}
        """), tmp_path)
    assert "shadow" not in data and "route" not in data
    assert warnings == ("shadow 'p': http://p:80 is the primary (it would get every request twice); it is left out",
                        "virtualservice 'svc': no http route has a mirror; the TOML mirrors nothing")  # fmt: skip


def test_short_names_without_namespace_stay_as_written(tmp_path):
    data, _, _ = run(vs("""\
        - route: [{destination: {host: search-v1.prod}}]
          mirror: {host: search-v2}
        """), tmp_path)
    assert data["primary"] == "http://search-v1.prod:80"
    assert data["shadow"][0]["target"] == "http://search-v2:80"


def test_old_mirror_percent_field(tmp_path):
    data, warnings, _ = run(vs("""\
        - match: [{uri: {prefix: /old}}]
          route: [{destination: {host: p}}]
          mirror: {host: s}
          mirror_percent: 30
        """), tmp_path)
    assert warnings == () and data["route"][0]["mirror_percent"] == 30.0


@pytest.mark.parametrize(("http", "expected"), [
    ("- match: [{uri: {prefix: /api/search}, headers: {x-user: {exact: a}}}]\n"
     "  route: [{destination: {host: p}}]\n  mirror: {host: s}\n",
     "route 'api-search': match on headers cannot be translated; the route matches every request "
     "with that prefix"),
    ("- match: [{uri: {prefix: /q}, queryParams: {a: {exact: b}}}]\n"
     "  route: [{destination: {host: p}}]\n  mirror: {host: s}\n",
     "route 'q': match on queryParams cannot be translated; the route matches every request with that prefix"),
    ("- match: [{uri: {prefix: /i}, ignoreUriCase: true}]\n  route: [{destination: {host: p}}]\n"
     "  mirror: {host: s}\n",
     "route 'i': ignoreUriCase cannot be translated; the prefix is matched case-sensitively"),
    ("- match: [{uri: {prefix: /m}, method: {regex: 'GET|HEAD'}}]\n  route: [{destination: {host: p}}]\n"
     "  mirror: {host: s}\n",
     'route \'m\': method match {"regex": "GET|HEAD"} cannot be translated (only exact is); '
     "the route matches every method"),
    ("- match: [{uri: {exact: /one}}]\n  route: [{destination: {host: p}}]\n  mirror: {host: s}\n",
     "route 'one': uri exact /one becomes prefix /one; the route also matches the paths under it"),
    ("- name: r\n  route: [{destination: {host: p}}]\n  mirror: {host: s}\n  rewrite: {uri: /v2}\n",
     "route 'r': rewrite cannot be translated; fastmirror forwards the path and Host as the client sent them"),
    ("- name: r\n  route: [{destination: {host: p}}]\n  mirror: {host: s}\n  retries: {attempts: 3}\n",
     "route 'r': retries cannot be translated; fastmirror does not retry"),
    ("- name: r\n  route: [{destination: {host: p}}]\n  mirror: {host: s}\n  timeout: 3s\n",
     "route 'r': timeout cannot be translated; primary_timeout (default 15 s) applies to every request"),
    ("- name: r\n  route: [{destination: {host: p}}]\n  mirror: {host: s}\n"
     "  fault: {abort: {httpStatus: 500, percentage: {value: 1}}}\n",
     "route 'r': fault cannot be translated; no fault is injected"),
    ("- name: r\n  route: [{destination: {host: p}}]\n  mirror: {host: s}\n"
     "  corsPolicy: {allowOrigins: [{exact: x}]}\n",
     "route 'r': corsPolicy cannot be translated; CORS is left to the primary"),
    ("- name: r\n  route:\n  - {destination: {host: p}, weight: 80}\n  - {destination: {host: q}, weight: 20}\n"
     "  mirror: {host: s}\n",
     "route 'r': weights split across destinations (p 80, q 20) cannot be translated; every request goes "
     "to the primary"),
    ("- name: r\n  route: [{destination: {host: p}}]\n  mirror: {host: s}\n- name: plain\n"
     "  match: [{uri: {prefix: /p}}]\n  route: [{destination: {host: p}}]\n  mirror_percent: 5\n",
     "route 'plain': mirror_percent without a mirror cannot be translated; the route is not mirrored"),
    ("- name: r\n  route: [{destination: {host: p}}]\n  mirror: {host: s}\n  mirrorPercentage: {value: 150}\n",
     'route \'r\': mirrorPercentage {"value": 150} is not a percent from 0 to 100; that mirror is left out'),
])  # fmt: skip
def test_each_untranslatable_part_is_one_warning_line(tmp_path, http, expected):
    _, warnings, _ = run(vs(http), tmp_path)
    assert expected in warnings, warnings
    assert sum(1 for w in warnings if w.split(":")[0] == expected.split(":")[0]) >= 1
    assert all("\n" not in w for w in warnings)


def test_redirect_is_kept_in_order_and_a_route_with_nothing_to_serve_is_left_out(tmp_path):
    data, warnings, _ = run(vs("""\
        - name: old
          match: [{uri: {prefix: /api/old}}]
          redirect: {uri: /api/new}
        - name: nothing
          match: [{uri: {prefix: /api/x}}]
          mirror: {host: s}
        - name: api
          match: [{uri: {prefix: /api}}]
          route: [{destination: {host: p}}]
          mirror: {host: s}
        """), tmp_path)
    assert [(r["name"], r["shadow"]) for r in data["route"]] == [("old", []), ("api", ["s"])]
    assert warnings == (
        "route 'old': redirect cannot be translated; fastmirror forwards these requests to the primary",
        "route 'nothing': has no route, redirect, directResponse or delegate (Istio refuses that); "
        "it is left out",
    )


def test_regex_uri_is_left_out_and_warned(tmp_path):
    data, warnings, _ = run(vs("""\
        - name: rx
          match: [{uri: {regex: '/api/v[0-9]+'}}]
          route: [{destination: {host: p}}]
          mirror: {host: s}
        - name: ok
          match: [{uri: {prefix: /ok}}]
          route: [{destination: {host: p}}]
          mirror: {host: s}
        """), tmp_path)
    assert [r["name"] for r in data["route"]] == ["ok"]
    assert warnings == ('route \'rx\': uri regex "/api/v[0-9]+" cannot be translated; this match is left out',
                        "route 'rx': none of its matches can be translated; it is left out")  # fmt: skip


def test_exact_uri_gets_a_comment_in_the_toml(tmp_path):
    _, _, text = run(vs("- match: [{uri: {exact: /one}}]\n  route: [{destination: {host: p}}]\n"
                        "  mirror: {host: s}\n"), tmp_path)  # fmt: skip
    assert 'prefix = "/one"  # Istio matched exactly /one' in text


def test_gateways_tcp_and_tls_are_warned_per_virtual_service(tmp_path):
    extra = "  gateways: [mesh, public-gw]\n  tcp: [{route: [{destination: {host: db}}]}]\n" \
            "  tls: [{route: [{destination: {host: t}}]}]\n"
    _, warnings, _ = run(vs("- route: [{destination: {host: p}}]\n  mirror: {host: s}\n", extra_spec=extra),
                         tmp_path)  # fmt: skip
    assert warnings == (
        "virtualservice 'svc': gateways (public-gw) cannot be translated; fastmirror takes the requests "
        "sent to its own listen address",
        "virtualservice 'svc': tcp routes cannot be translated; fastmirror mirrors HTTP only",
        "virtualservice 'svc': tls routes cannot be translated; fastmirror mirrors HTTP only",
    )


def test_destination_other_than_the_primary_is_warned(tmp_path):
    data, warnings, _ = run(vs("""\
        - match: [{uri: {prefix: /a}}]
          route: [{destination: {host: one}}]
          mirror: {host: s}
        - match: [{uri: {prefix: /b}}]
          route: [{destination: {host: two}}]
        """), tmp_path)
    assert data["primary"] == "http://one:80"
    assert warnings == ("route 'b': its destination http://two:80 is not the primary http://one:80; "
                        "fastmirror sends every request to the primary",)  # fmt: skip


def test_every_virtual_service_of_every_document_and_lists(tmp_path):
    listed = """\
        kind: List
        items:
        - kind: VirtualService
          metadata: {name: other}
          spec:
            http:
            - name: search
              match: [{uri: {prefix: /other}}]
              route: [{destination: {host: search-v1}}]
              mirror: {host: search-v3}
        """
    text = SEED + "---\nkind: Service\nmetadata: {name: search}\n---\n" + textwrap.dedent(listed)
    data, warnings, _ = run(text, tmp_path)
    # The seed's catch-all comes first and takes /other, as in Istio (one mesh, one route table).
    assert [(r["name"], r["shadow"]) for r in data["route"]] == [
        ("api-search", ["search-v2"]), ("route-2", []), ("search", ["search-v3"])]
    assert warnings == ("route 'search': comes after route 'route-2', which takes every request: "
                        "it never matches (in Istio neither)",)  # fmt: skip
    assert [s["name"] for s in data["shadow"]] == ["search-v2", "search-v3"]


def test_strings_are_escaped_and_comments_stay_comments(tmp_path):
    data, _, text = run("""\
        kind: VirtualService
        metadata: {name: "evil\\n[[route]]\\nname = 'x'"}
        spec:
          http:
          - name: 'odd name "q"'
            match: [{uri: {prefix: '/a"b\\\\c'}}]
            route: [{destination: {host: p}}]
            mirror: {host: s}
        """, tmp_path)
    assert [r["prefix"] for r in data["route"]] == ['/a"b\\\\c']
    assert [r["name"] for r in data["route"]] == ["odd-name-q"]
    assert text.count("[[route]]\n") == 1


@pytest.mark.parametrize(("text", "message"), [
    ("kind: [unclosed\n", "vs.yaml: not YAML (line 2): "),
    ("", "vs.yaml: no VirtualService with http routes"),
    ("kind: Service\nmetadata: {name: x}\n", "vs.yaml: no VirtualService with http routes"),
    ("kind: VirtualService\nspec: {tcp: [{route: []}]}\n",
     "vs.yaml: 1 VirtualService(s), none with http routes"),
    ("kind: VirtualService\nspec:\n  http: [{redirect: {uri: /x}}]\n",
     "vs.yaml: no http route has a destination"),
])  # fmt: skip
def test_bad_files_raise_one_line(text, message):
    with pytest.raises(IstioError) as info:
        translate(load_documents(text, "vs.yaml"), "vs.yaml")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# -- never a traceback: any shape of VirtualService gives a loadable TOML or one IstioError --------

_KEYS = ["kind", "metadata", "name", "namespace", "spec", "http", "match", "uri", "prefix", "exact",
         "regex", "method", "headers", "route", "destination", "host", "port", "number", "subset",
         "weight", "mirror", "mirrors", "percentage", "mirrorPercentage", "mirror_percent", "value",
         "gateways", "tcp", "rewrite", "delegate", "items"]  # fmt: skip
_LEAVES = st.one_of(
    st.none(), st.booleans(), st.just([]), st.just({}), st.integers(-5, 70000), st.floats(allow_nan=True),
    st.sampled_from(["VirtualService", "List", "/", "/api", "/a b", "p", "s", "search-v2", "v2", "prod",
                     "*.x", "a.b", "", "GET", "mesh", "evil\n\"x\"", "/\U0001f600", "/\x7f", "/\ud800", "\ud800"]),
)  # fmt: skip
_TREES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(st.lists(inner, min_size=1, max_size=3),
                            st.dictionaries(st.sampled_from(_KEYS), inner, min_size=1, max_size=4)),
    max_leaves=25,
)  # fmt: skip
_GOOD = {"route": [{"destination": {"host": "p"}}], "mirror": {"host": "s"}}
_ROUTES = st.lists(st.one_of(
    st.dictionaries(st.sampled_from(_KEYS), _TREES, max_size=5),
    st.builds(lambda extra: {**_GOOD, **extra}, st.dictionaries(st.sampled_from(_KEYS), _TREES, max_size=3)),
), max_size=4)  # fmt: skip
_VS = st.fixed_dictionaries({"kind": st.just("VirtualService"), "metadata": _TREES, "spec": st.fixed_dictionaries(
    {"http": st.builds(lambda rs: [_GOOD, *rs], _ROUTES)}, optional={"gateways": _TREES, "tcp": _TREES})})  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(st.one_of(_VS, _TREES), min_size=1, max_size=3))
def test_any_shape_translates_or_is_one_istio_error(tmp_path_factory, docs):
    try:
        result = translate(docs, "vs.yaml")
    except IstioError as exc:
        assert "\n" not in str(exc)
        return
    path = tmp_path_factory.mktemp("fuzz") / "out.toml"
    path.write_text(result.toml, encoding="utf-8")  # raises on a lone surrogate
    load_config(str(path), {})
    assert all("\n" not in w for w in result.warnings)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200) | st.sampled_from(["a: !!python/object:os.system x", "a: !!binary '%'",
                                                     "a: !!float x", "- [" * 60, "a: 2020-13-45"]))
def test_any_text_loads_or_is_one_istio_error(text):
    try:
        load_documents(text, "vs.yaml")
    except IstioError as exc:
        assert str(exc).startswith("vs.yaml: not YAML") and "\n" not in str(exc)


def test_a_prefix_fastmirror_cannot_match_is_left_out(tmp_path):
    data, warnings, _ = run(vs('- match: [{uri: {prefix: "/caf\\u00e9"}}, {uri: {prefix: /ok}}]\n'
                               "  route: [{destination: {host: p}}]\n  mirror: {host: s}\n"), tmp_path)  # fmt: skip
    assert [r["prefix"] for r in data["route"]] == ["/ok"]
    assert warnings == ('route \'ok\': uri prefix "/caf\\u00e9" cannot be translated; this match is left out',)
