"""Istio VirtualService -> fastmirror TOML: the translation behind `fastmirror import-istio`.

cli (reads the file) ─▶ istio.load_documents ─▶ istio.translate ─▶ TOML text + warnings.
Pure: YAML text and dicts in, TOML text and warning lines out; no file, no socket.
Each `http` route becomes [[route]] tables (one per `match` entry, in order, since both
Istio and fastmirror take the first match), its `mirror` / `mirrors` become [[shadow]]
tables, and its route destination the primary.  It does not check the TOML
(config.load_config does, when fastmirror reads it), does not follow DestinationRules
(a subset is a label selector with no address) nor delegate VirtualServices, and
translates no match but the uri prefix and the method: everything else is one warning
line each, so the user knows what the TOML does not do.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["IstioError", "Translation", "load_documents", "translate"]


class IstioError(Exception):
    """One line: the text is not YAML, or holds no VirtualService with http routes."""


@dataclass(frozen=True, slots=True)
class Translation:
    toml: str  # ends with a newline; loads with `fastmirror check-config`
    warnings: tuple[str, ...]  # one line each, without the program's prefix


@dataclass(frozen=True, slots=True)
class _Host:
    host: str  # as Istio resolves it: NAME.NAMESPACE.svc.cluster.local for a short name
    port: int
    subset: str | None
    written: str  # the host as the YAML wrote it: what shadow names are made of

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class _Match:
    prefix: str
    methods: tuple[str, ...] | None
    comment: str | None = None  # what the TOML should say about this match


@dataclass(frozen=True, slots=True)
class _Http:
    """One `http` route as far as it translates."""

    origin: str  # 'VirtualService "search", http[0]', for the TOML comment
    names: tuple[str, ...]  # one fastmirror route name per match
    matches: tuple[_Match, ...]
    destination: _Host | None  # None: redirect or directResponse, served by the primary here
    mirrors: tuple[_Host, ...]
    percent: float | None  # None: the route does not mirror


# Port Istio (and HTTP) take when a destination names none.
_DEFAULT_PORT = 80
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?")
# What config's `prefix` takes: visible ASCII, no "?" ("#" is refused apart). A request
# path on the wire is ASCII too: Envoy would match a non-ASCII prefix against nothing.
_PREFIX = re.compile(r"/[\x21-\x3e\x40-\x7e]*")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a method
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # a Kubernetes namespace (RFC 1123 label)
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PERCENT_KEYS = ("mirrorPercentage", "mirror_percent", "mirrorPercent")  # new first; the old: an int
_HANDLED = frozenset({"name", "match", "route", "mirror", "mirrors", *_PERCENT_KEYS})
_MATCH_LABELS = frozenset({"name", "statPrefix"})  # name a match; no effect on what it matches

# Route keys fastmirror has no equivalent for, and what the TOML does instead.
_UNTRANSLATED: dict[str, str] = {
    "rewrite": "fastmirror forwards the path and Host as the client sent them",
    "redirect": "fastmirror forwards these requests to the primary",
    "directResponse": "fastmirror forwards these requests to the primary",
    "timeout": "primary_timeout (default 15 s) applies to every request",
    "retries": "fastmirror does not retry",
    "fault": "no fault is injected",
    "corsPolicy": "CORS is left to the primary",
    "headers": "the primary gets the client's headers unchanged "
               "(shadow_set_header and shadow_remove_header edit the shadow's copy only)",
}  # fmt: skip


class _Context:
    """Warnings and names taken so far, across every VirtualService of the file."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.route_names: set[str] = set()

    def warn(self, who: str, text: str) -> None:
        # One line each, whatever the YAML's strings hold: control characters as escapes.
        line = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), f"{who}: {text}")
        self.warnings.append(line)


def load_documents(text: str, source: str) -> list[Any]:
    """Every YAML document of `text` (a file may hold several, `---` between them).

    Raises:
        IstioError: `source: not YAML (line N): problem`.
    """
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise IstioError(f"{source}: not YAML{where}: {problem}") from None
    except (ValueError, RecursionError) as exc:  # a bad timestamp; nesting too deep
        raise IstioError(f"{source}: not YAML: {exc}") from None


def translate(documents: Iterable[Any], source: str) -> Translation:
    """The fastmirror TOML for every VirtualService among `documents`.

    Raises:
        IstioError: no VirtualService with http routes, or none with a destination.
    """
    services = _virtual_services(documents)
    if not any(isinstance(_spec(vs).get("http"), list) and _spec(vs)["http"] for vs in services):
        found = f"{len(services)} VirtualService(s), none" if services else "no VirtualService"
        raise IstioError(f"{source}: {found} with http routes (kind: VirtualService, spec.http)")
    ctx = _Context()
    routes = [r for vs in services for r in _service_routes(vs, ctx)]
    primary = _primary(routes, source, ctx)
    shadows = _Shadows(primary, ctx)
    outs = [_Out(name, match, http, _route_shadows(http, shadows))
            for http in routes for name, match in zip(http.names, http.matches)]  # fmt: skip
    kept, dropped = _kept(outs)
    _warn_unreachable(kept, ctx)
    if not any(o.shadows for o in outs):
        ctx.warn(f"virtualservice {_vs_name(services[0])!r}",
                 "no http route has a mirror; the TOML mirrors nothing")  # fmt: skip
    text = _render(source, primary, shadows.tables, kept, dropped)
    return Translation(text, tuple(ctx.warnings))


def _virtual_services(documents: Iterable[Any]) -> list[dict[str, Any]]:
    """kind: VirtualService documents, and those inside a `kind: List` (kubectl get -o yaml)."""
    found: list[dict[str, Any]] = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            found += _virtual_services(doc["items"])
        elif doc.get("kind") == "VirtualService":
            found.append(doc)
    return found


def _spec(vs: dict[str, Any]) -> dict[str, Any]:
    spec = vs.get("spec")
    return spec if isinstance(spec, dict) else {}


def _metadata(vs: dict[str, Any], key: str) -> str | None:
    meta = vs.get("metadata")
    value = meta.get(key) if isinstance(meta, dict) else None
    return value if isinstance(value, str) and value else None


def _namespace(vs: dict[str, Any]) -> str | None:
    """metadata.namespace if it can be one (a DNS label, as Kubernetes requires), else None."""
    namespace = _metadata(vs, "namespace")
    return namespace if namespace is not None and _LABEL.fullmatch(namespace) else None


def _vs_name(vs: dict[str, Any]) -> str:
    return _metadata(vs, "name") or "(unnamed)"


def _service_routes(vs: dict[str, Any], ctx: _Context) -> list[_Http]:
    name, spec = _vs_name(vs), _spec(vs)
    if _metadata(vs, "namespace") is not None and _namespace(vs) is None:
        ctx.warn(f"virtualservice {name!r}", f"metadata.namespace {json.dumps(_metadata(vs, 'namespace'))} "
                 "is not a namespace name; short host names are kept as written")  # fmt: skip
    given = spec.get("gateways")
    gateways = [str(g) for g in (given if isinstance(given, list) else [given] if given else []) if g != "mesh"]
    if gateways:
        ctx.warn(f"virtualservice {name!r}", f"gateways ({', '.join(gateways)}) cannot be translated; "
                 "fastmirror takes the requests sent to its own listen address")  # fmt: skip
    for key in ("tcp", "tls"):
        if spec.get(key):
            ctx.warn(f"virtualservice {name!r}", f"{key} routes cannot be translated; fastmirror mirrors HTTP only")
    http = spec.get("http")
    if not isinstance(http, list):
        return []
    routes = (_http_route(route, index, vs, ctx) for index, route in enumerate(http))
    return [r for r in routes if r is not None]


def _http_route(route: object, index: int, vs: dict[str, Any], ctx: _Context) -> _Http | None:
    """One `http` entry, or None when nothing of it translates (each reason warned)."""
    origin = f"VirtualService {json.dumps(_vs_name(vs))}, http[{index}]"
    if not isinstance(route, dict):
        ctx.warn(f"virtualservice {_vs_name(vs)!r}", f"http[{index}] is not a mapping; it is left out")
        return None
    notes: list[str] = []  # warned once the route's name is known
    namespace = _namespace(vs)
    matches = _matches(route.get("match"), notes)
    destination = _destination(route, namespace, notes)
    mirrors, percent = _mirrors(route, namespace, notes)
    served = "route" in route or "redirect" in route or "directResponse" in route or "delegate" in route
    if not served:
        notes.append("has no route, redirect, directResponse or delegate (Istio refuses that); it is left out")
    for key in route:
        if key == "delegate":
            notes.append("delegate cannot be translated (the delegate's routes are not read); it is left out")
        elif key not in _HANDLED:
            notes.append(f"{key} cannot be translated; {_UNTRANSLATED.get(key, 'it is ignored')}")
    names = _route_names(route.get("name"), matches, index, ctx)
    label = names[0] if names else str(route.get("name") or f"http[{index}]")
    for note in notes:
        ctx.warn(f"route {label!r}", note)
    if not matches or not served or "delegate" in route or (destination is None and "route" in route):
        return None
    return _Http(origin, names, tuple(matches), destination, tuple(mirrors), percent)


def _route_names(given: object, matches: list[_Match], index: int, ctx: _Context) -> tuple[str, ...]:
    """The Istio route's name (then NAME-2, ...), else one derived from each match's prefix."""
    base = _name_part(given) if isinstance(given, str) else ""
    names = []
    for j, match in enumerate(matches):
        if base:
            wanted = base if j == 0 else f"{base}-{j + 1}"
        else:
            wanted = _name_part(match.prefix) or f"route-{index + 1}"
        names.append(_unique(wanted, ctx.route_names))
    return tuple(names)


def _name_part(text: str) -> str:
    """`/api/search` -> `api-search`: what config's route and shadow names may hold."""
    return _NOT_IN_NAME.sub("-", text).strip("-_.")


def _unique(wanted: str, taken: set[str]) -> str:
    name, n = wanted, 1
    while name in taken:
        n += 1
        name = f"{wanted}-{n}"
    taken.add(name)
    return name


def _matches(raw: object, notes: list[str]) -> list[_Match]:
    """Istio's `match` list (any entry matches: an OR) -> one _Match per entry that translates."""
    if raw is None or raw == []:
        return [_Match("/", None)]
    if not isinstance(raw, list):
        notes.append("match is not a list; it is read as matching every request")
        return [_Match("/", None)]
    found = [m for m in (_one_match(item, notes) for item in raw) if m is not None]
    if not found:
        notes.append("none of its matches can be translated; it is left out")
    return found


def _one_match(item: object, notes: list[str]) -> _Match | None:
    if not isinstance(item, dict):
        notes.append("a match entry is not a mapping; it is left out")
        return None
    prefix, comment = ("/", None) if item.get("uri") is None else _uri_prefix(item["uri"], notes)
    if prefix is None:
        return None
    methods = _method(item.get("method"), notes)
    scope = "that prefix" if item.get("uri") is not None else "any path"
    for key in item:
        if key == "ignoreUriCase":
            notes.append("ignoreUriCase cannot be translated; the prefix is matched case-sensitively")
        elif key not in ("uri", "method", *_MATCH_LABELS):
            notes.append(f"match on {key} cannot be translated; the route matches every request with {scope}")
    return _Match(prefix, methods, comment)


def _uri_prefix(uri: object, notes: list[str]) -> tuple[str | None, str | None]:
    """(prefix, TOML comment) for a `uri` match; (None, None) when it cannot be one."""
    if not isinstance(uri, dict) or len(uri) != 1:
        notes.append("a uri match needs one of prefix, exact or regex; this match is left out")
        return None, None
    kind, value = next(iter(uri.items()))
    if kind in ("prefix", "exact") and isinstance(value, str) and _PREFIX.fullmatch(value) \
            and "?" not in value and "#" not in value:
        if kind == "prefix":
            return value, None
        notes.append(f"uri exact {value} becomes prefix {value}; the route also matches the paths under it")
        return value, f"Istio matched exactly {value}; a fastmirror prefix also takes {value}..."
    notes.append(f"uri {kind} {json.dumps(value, default=str)} cannot be translated; this match is left out")
    return None, None


def _method(method: object, notes: list[str]) -> tuple[str, ...] | None:
    if method is None:
        return None
    if isinstance(method, dict) and isinstance(method.get("exact"), str) and len(method) == 1 \
            and _TOKEN.fullmatch(method["exact"].strip()):
        return (method["exact"].strip().upper(),)
    notes.append(f"method match {json.dumps(method, default=str)} cannot be translated "
                 "(only exact is); the route matches every method")  # fmt: skip
    return None


def _host(dest: object, what: str, namespace: str | None, notes: list[str]) -> _Host | None:
    """An Istio Destination (host, subset, port.number) -> where fastmirror connects."""
    written = dest.get("host") if isinstance(dest, dict) else None
    if not isinstance(dest, dict) or not isinstance(written, str) or not _HOSTNAME.fullmatch(written.strip()):
        shown = json.dumps(written, default=str) if written is not None else "no host"
        notes.append(f"{what} {shown} cannot be translated (not a DNS name); it is left out")
        return None
    written = written.strip()
    # Istio reads a short name in the VirtualService's namespace; with none given, as written.
    host = f"{written}.{namespace}.svc.cluster.local" if "." not in written and namespace else written
    port, given = _DEFAULT_PORT, dest.get("port")
    if given is not None:
        number = given.get("number") if isinstance(given, dict) else None
        if isinstance(number, int) and not isinstance(number, bool) and 0 < number < 65536:
            port = number
        else:
            notes.append(f"{what} {written} port {json.dumps(given, default=str)} is not a port number; "
                         f"{_DEFAULT_PORT} is used")  # fmt: skip
    subset = dest.get("subset")
    return _Host(host, port, subset if isinstance(subset, str) and subset else None, written)


def _destination(route: dict[str, Any], namespace: str | None, notes: list[str]) -> _Host | None:
    """The heaviest (first on a tie) of the route's destinations."""
    items = route.get("route")
    if not isinstance(items, list) or not items:
        if "route" in route:
            notes.append("route has no destination; it is left out")
        return None
    weighted = [(_weight(item, len(items)), i, item) for i, item in enumerate(items) if isinstance(item, dict)]
    if not weighted:
        notes.append("route has no destination; it is left out")
        return None
    _, _, chosen = max(weighted, key=lambda t: (t[0], -t[1]))
    dest = chosen.get("destination")
    if len(items) > 1:
        split = ", ".join(f"{_host_of(d.get('destination'))} {w}" for w, _, d in weighted)
        notes.append(f"weights split across destinations ({split}) cannot be translated; "
                     "every request goes to the primary")  # fmt: skip
    return _host(dest, "destination", namespace, notes)


def _host_of(dest: object) -> str:
    return str(dest.get("host")) if isinstance(dest, dict) else "?"


def _weight(item: dict[str, Any], count: int) -> int:
    weight = item.get("weight")
    if isinstance(weight, int) and not isinstance(weight, bool):
        return weight
    return 100 if count == 1 else 0  # Istio: a lone destination takes everything


def _mirrors(route: dict[str, Any], namespace: str | None, notes: list[str]) -> tuple[list[_Host], float | None]:
    """(shadows, the route's percent): `mirror` with mirrorPercentage, and `mirrors`."""
    found: list[tuple[_Host, float]] = []
    percent_key = next((k for k in _PERCENT_KEYS if k in route), None)
    if "mirror" in route:
        host = _host(route["mirror"], "mirror", namespace, notes)
        # Istio's default when no percentage is given: every request is mirrored.
        percent = 100.0 if percent_key is None else _percent(route[percent_key], percent_key, notes)
        if host is not None and percent is not None:
            found.append((host, percent))
    elif percent_key is not None:
        notes.append(f"{percent_key} without a mirror cannot be translated; the route is not mirrored")
    mirrors = route.get("mirrors")
    if mirrors is not None and "mirror" in route:
        notes.append("has both mirror and mirrors (Istio refuses that); both are translated")
    for item in mirrors if isinstance(mirrors, list) else ():
        item = item if isinstance(item, dict) else {}
        host = _host(item.get("destination"), "mirrors destination", namespace, notes)
        percent = 100.0 if item.get("percentage") is None else _percent(item["percentage"], "percentage", notes)
        if host is not None and percent is not None:
            found.append((host, percent))
    percents = sorted({p for _, p in found})
    if len(percents) > 1:
        notes.append(f"mirrors have different percentages ({', '.join(f'{p:g}' for p in percents)}); "
                     f"fastmirror's percent is per route, not per shadow: every one gets {percents[-1]:g}")  # fmt: skip
    return [h for h, _ in found], (percents[-1] if percents else None)


def _percent(value: object, key: str, notes: list[str]) -> float | None:
    """mirrorPercentage / percentage ({value: 10.5}) or the old mirror_percent (an int)."""
    number = value.get("value") if isinstance(value, dict) else value
    if isinstance(number, (int, float)) and not isinstance(number, bool) \
            and math.isfinite(number) and 0 <= number <= 100:
        return float(number)
    notes.append(f"{key} {json.dumps(value, default=str)} is not a percent from 0 to 100; "
                 "that mirror is left out")  # fmt: skip
    return None


def _primary(routes: list[_Http], source: str, ctx: _Context) -> _Host:
    """The destination of the first route that mirrors (else of the first route)."""
    mirroring = [r for r in routes if r.mirrors and r.destination is not None]
    with_destination = [r for r in routes if r.destination is not None]
    if not with_destination:
        raise IstioError(f"{source}: no http route has a destination (route: - destination: host: ...)")
    primary = (mirroring or with_destination)[0].destination
    assert primary is not None
    for r in with_destination:
        assert r.destination is not None
        if r.destination.url != primary.url:
            ctx.warn(f"route {r.names[0]!r}", f"its destination {r.destination.url} is not the primary "
                     f"{primary.url}; fastmirror sends every request to the primary")  # fmt: skip
    if any(r.destination is not None and r.destination.subset for r in with_destination):
        subsets = sorted({r.destination.subset for r in with_destination if r.destination and r.destination.subset})
        ctx.warn("primary", f"subset {', '.join(subsets)} cannot be translated (a DestinationRule's label "
                 f"selector); the primary is every pod behind {primary.host}")  # fmt: skip
    return primary


class _Shadows:
    """The [[shadow]] tables: one per mirror destination, named after its host (+ subset)."""

    def __init__(self, primary: _Host, ctx: _Context) -> None:
        self.ctx = ctx
        self.primary = primary
        self.named: dict[_Host, str | None] = {}
        self.tables: list[tuple[str, str, str | None]] = []  # (name, target, comment)
        self.names: set[str] = set()

    def name_of(self, mirror: _Host) -> str | None:
        if mirror not in self.named:
            self.named[mirror] = self._add(mirror)
        return self.named[mirror]

    def _add(self, mirror: _Host) -> str | None:
        taken = {self.primary.url} | {target for _, target, _ in self.tables}
        wanted = mirror.written + (f"-{mirror.subset}" if mirror.subset else "")
        name = _name_part(wanted) or "shadow"
        if mirror.url in taken and not mirror.subset:
            what = "the primary" if mirror.url == self.primary.url else "another shadow"
            self.ctx.warn(f"shadow {name!r}", f"{mirror.url} is {what} (it would get every request twice); "
                          "it is left out")  # fmt: skip
            return None
        name = _unique(name, self.names)
        target, comment = mirror.url, None
        if mirror.subset is None:
            pass
        elif mirror.url in taken:
            first, dot, rest = mirror.host.partition(".")
            target = f"http://{first}-{_name_part(mirror.subset).lower()}{dot}{rest}:{mirror.port}"
            comment = f"a guess: point this at a Service for the {mirror.subset} pods of {mirror.host}"
            owner = "the primary" if mirror.url == self.primary.url else "another shadow"
            self.ctx.warn(f"shadow {name!r}", f"subset {mirror.subset!r} cannot be translated (a DestinationRule's "
                          f"label selector) and {mirror.url} is {owner}; the target {target} is a guess: "
                          "point it at a Service for those pods")  # fmt: skip
        else:
            self.ctx.warn(f"shadow {name!r}", f"subset {mirror.subset!r} cannot be translated (a DestinationRule's "
                          f"label selector); the shadow is every pod behind {mirror.host}")  # fmt: skip
        self.tables.append((name, target, comment))
        return name


def _route_shadows(http: _Http, shadows: _Shadows) -> tuple[str, ...]:
    if http.percent is None:
        return ()
    names = (shadows.name_of(m) for m in http.mirrors)
    return tuple(dict.fromkeys(n for n in names if n is not None))


@dataclass(frozen=True, slots=True)
class _Out:
    """One [[route]] table to write."""

    name: str
    match: _Match
    http: _Http
    shadows: tuple[str, ...]  # (): not mirrored


def _catch_all(out: _Out) -> bool:
    return out.match.prefix == "/" and out.match.methods is None


def _kept(outs: list[_Out]) -> tuple[list[_Out], list[_Out]]:
    """(routes written, routes left out): a route that does not mirror is written only
    where it keeps another one's first-match order; from a catch-all on that mirrors
    nothing, the top-level mirror_percent = 0 does the same as the routes."""
    last = max((i for i, o in enumerate(outs) if o.shadows), default=-1)
    kept = outs[: last + 1]
    for i in range(last + 1, len(outs) if last >= 0 else 0):
        if _catch_all(outs[i]):
            return kept, outs[i:]
        kept.append(outs[i])
    return kept, outs[len(kept):]


def _warn_unreachable(kept: list[_Out], ctx: _Context) -> None:
    for i, out in enumerate(kept):
        earlier = next((o for o in kept[:i] if _catch_all(o)), None)
        if earlier is not None:
            ctx.warn(f"route {out.name!r}", f"comes after route {earlier.name!r}, which takes every request: "
                     "it never matches (in Istio neither)")  # fmt: skip


def _string(text: str) -> str:
    """A TOML basic string: JSON's escapes (\\" \\\\ \\n \\uXXXX) are TOML's too. Not ASCII-only:
    JSON writes an emoji as a surrogate pair, which TOML refuses; DEL TOML wants escaped."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _comment(text: str) -> str:
    return "# " + re.sub("[\x00-\x1f\x7f\ud800-\udfff]+", " ", text)


def _render(source: str, primary: _Host, shadows: list[tuple[str, str, str | None]],
            kept: list[_Out], dropped: list[_Out]) -> str:
    lines = [
        _comment(f"fastmirror config from the Istio VirtualService(s) in {source} (fastmirror import-istio)."),
        "# Istio mirrors every method; fastmirror mirrors only mirror_methods (default GET, HEAD,",
        "# OPTIONS: a shadow fed POSTs may write twice). To mirror every method: mirror_methods = \"ALL\"",
        f"primary = {_string(primary.url)}",
        "# A request that no [[route]] below takes is not mirrored.",
    ]
    for out in dropped:
        lines.append(_comment(f"{out.http.origin} (route {out.name!r}, prefix {out.match.prefix}, "
                              "no mirror) is no [[route]] here: such requests take no route."))  # fmt: skip
    lines.append("mirror_percent = 0")
    for name, target, comment in shadows:
        lines += ["", "[[shadow]]", f"name = {_string(name)}", f"target = {_string(target)}"]
        if comment:
            lines[-1] += "  " + _comment(comment)
    for out in kept:
        lines += ["", *_route_lines(out)]
    return "\n".join(lines) + "\n"


def _route_lines(out: _Out) -> list[str]:
    match = out.match
    lines = ["[[route]]", _comment(f"from {out.http.origin}"), f"name = {_string(out.name)}",
             f"prefix = {_string(match.prefix)}" + ("  " + _comment(match.comment) if match.comment else "")]
    if match.methods is not None:
        lines.append(f"methods = [{', '.join(map(_string, match.methods))}]")
    if not out.shadows:
        lines.append("shadow = []  # Istio does not mirror this route")
        return lines
    if match.methods is not None:
        # The route takes only these methods and Istio mirrors them all: so does this route.
        lines.append(f"mirror_methods = [{', '.join(map(_string, match.methods))}]")
    assert out.http.percent is not None
    lines.append(f"mirror_percent = {float(out.http.percent)!r}")
    lines.append(f"shadow = [{', '.join(map(_string, out.shadows))}]")
    return lines
