"""``RateLimitMiddleware``: per-client rate limiting for any ASGI app, metered.

Pure ASGI (no framework import): non-HTTP scopes pass straight through, a
rejection is an awaited 429 response, and the IETF ``RateLimit-Policy`` /
``RateLimit`` header fields are added to every response by wrapping ``send``.

Example::

    from otel_backpressure.ratelimit import Policy, RateLimiter, RateLimitMiddleware

    limiter = RateLimiter([Policy("per-second", rate=10, period=1, burst=20)])
    app = RateLimitMiddleware(
        app,
        limiter=limiter,
        trusted_proxies=["10.0.0.0/8"],          # the load balancers
        exempt_paths=["/healthz"],
        route_policies={"/login": [Policy("login", rate=5, period=60)]},
    )

The client key is the direct peer's address. ``X-Forwarded-For`` (or, with
``forwarded_header="forwarded"``, RFC 7239 ``Forwarded``) is read only when the
direct peer is a trusted proxy, right to left, skipping trusted hops: whatever
a client writes into the header itself stays to the left of what the proxies
append, so it is never reached.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace

from otel_backpressure import errors
from otel_backpressure._shared import ASGIApp, Message, Receive, Scope, Send
from otel_backpressure.ratelimit._fields import RateLimitFields

if TYPE_CHECKING:
    from otel_backpressure.ratelimit.limiter import RateLimiter
    from otel_backpressure.ratelimit.policy import Decision, Policy

__all__ = ["ClientAddress", "RateLimitMiddleware"]

_logger = logging.getLogger(__name__)

# Takes the ASGI scope; typed Any so dict, Starlette's and asgiref's scope types all fit.
KeyFunc = Callable[[Any], str | Awaitable[str | None] | None]
PathRule = str | re.Pattern[str]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

POLICY_ATTRIBUTE: Final = "backpressure.rate_limit.policy"
RESULT_ATTRIBUTE: Final = "backpressure.rate_limit.result"

# Key used when the server gives no peer address (a Unix socket, some test clients).
UNKNOWN_CLIENT: Final = "unknown"

_FORWARDED_HEADERS: Final = {"x-forwarded-for": b"x-forwarded-for", "forwarded": b"forwarded"}
_CACHE_SIZE: Final = 4096  # bounded memo of peer trust and route lookups
_LOG_EVERY: Final = 60.0  # seconds between repeated limiter-failure log lines


class ClientAddress:
    """Find the client address of an ASGI scope, trusting forwarded headers only from proxies.

    ``ClientAddress(["10.0.0.0/8"])(scope)`` -> ``"203.0.113.7"``.
    """

    __slots__ = ("_header", "_networks", "_trusted")

    def __init__(
        self,
        trusted_proxies: Iterable[str | Network | Address] = (),
        *,
        forwarded_header: str = "x-forwarded-for",
    ) -> None:
        if isinstance(trusted_proxies, (str, bytes)):
            raise TypeError("trusted_proxies must be a list of networks, not a single string")
        networks: list[Network] = []
        for proxy in trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(proxy, strict=False))
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an IP address or CIDR network"
                ) from exc
        header = _FORWARDED_HEADERS.get(str(forwarded_header).lower())
        if header is None:
            raise ValueError(
                "forwarded_header must be 'x-forwarded-for' or 'forwarded', "
                f"got {forwarded_header!r}"
            )
        self._networks: tuple[Network, ...] = tuple(networks)
        self._header = header
        self._trusted: dict[str, bool] = {}  # peer text -> in a trusted network

    @property
    def trusts_proxies(self) -> bool:
        return bool(self._networks)

    def __call__(self, scope: Scope) -> str:
        client = scope.get("client")
        peer: str = client[0] if client else UNKNOWN_CLIENT
        if not self._networks or not self._is_trusted_text(peer):
            return peer
        return self._from_header(scope, peer)

    def _is_trusted_text(self, text: str) -> bool:
        trusted = self._trusted.get(text)
        if trusted is None:
            address = _parse_address(text)
            trusted = address is not None and self._is_trusted(address)
            if len(self._trusted) >= _CACHE_SIZE:
                self._trusted.clear()  # many distinct direct peers: keep memory bounded
            self._trusted[text] = trusted
        return trusted

    def _is_trusted(self, address: Address) -> bool:
        return any(address in network for network in self._networks)

    def _from_header(self, scope: Scope, peer: str) -> str:
        name = self._header
        # Proxies may append to one header line or add another: read them all, in order.
        values = [value for key, value in scope.get("headers", ()) if key == name]
        if not values:
            return peer
        entries = b",".join(values).decode("latin-1").split(",")
        forwarded = name == b"forwarded"
        nearest_trusted: Address | None = None
        for entry in reversed(entries):
            address = _parse_address(_forwarded_for(entry) if forwarded else entry)
            if address is None:
                # A trusted proxy wrote "unknown" or garbage: limit it as the proxy.
                return peer
            if not self._is_trusted(address):
                return str(address)
            nearest_trusted = address
        # Every hop is a trusted proxy: the farthest one is the client.
        return str(nearest_trusted) if nearest_trusted is not None else peer

    def __repr__(self) -> str:
        networks = ", ".join(str(network) for network in self._networks)
        return f"ClientAddress(trusted_proxies=[{networks}], header={self._header.decode()!r})"


def _forwarded_for(element: str) -> str:
    """The ``for=`` node of one RFC 7239 forwarded-element, or '' when absent."""
    for pair in element.split(";"):
        name, _, value = pair.partition("=")
        if name.strip().lower() == "for":
            return value.strip().strip('"')
    return ""


def _parse_address(node: str) -> Address | None:
    """An address from ``1.2.3.4``, ``1.2.3.4:80``, ``[2001:db8::1]:443`` or ``2001:db8::1``."""
    text = node.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class _Route:
    """The policies of one route and their header fields, built once."""

    __slots__ = ("fields", "policies")

    def __init__(self, policies: tuple[Policy, ...] | None, all_policies: Sequence[Policy]):
        self.policies = policies  # None: the limiter's own
        self.fields = RateLimitFields(all_policies)


class _PathRules:
    """First-match lookup of path rules (prefix strings or patterns), memoised per path.

    A rule's value is the route to apply, or None for an exempt path.
    """

    __slots__ = ("_cache", "default", "rules")

    def __init__(self, rules: Sequence[tuple[PathRule, _Route | None]], default: _Route) -> None:
        self.rules = tuple(rules)
        self.default = default
        self._cache: dict[str, _Route | None] = {}

    def __call__(self, path: str) -> _Route | None:
        try:
            return self._cache[path]
        except KeyError:
            pass
        found: _Route | None = self.default
        for rule, value in self.rules:
            if _matches(rule, path):
                found = value
                break
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()  # unbounded path space (ids in paths): stay bounded
        self._cache[path] = found
        return found


def _matches(rule: PathRule, path: str) -> bool:
    if isinstance(rule, str):
        # A prefix matches whole segments: "/api" matches "/api" and "/api/x", not "/apix".
        return path == rule or (
            path.startswith(rule) and (rule.endswith("/") or path[len(rule)] == "/")
        )
    return rule.fullmatch(path) is not None


def _check_rule(rule: object, argument: str) -> PathRule:
    if isinstance(rule, re.Pattern) or (isinstance(rule, str) and rule.startswith("/")):
        return rule
    raise ValueError(f"{argument}: {rule!r} must be a path starting with '/' or a re.Pattern")


def _check_route_policies(
    rule: object, policies: Sequence[Policy], base: tuple[Policy, ...], by_name: dict[str, Policy]
) -> tuple[Policy, ...]:
    """Validate one route's policies; one name means one policy across the middleware."""
    from otel_backpressure.ratelimit.policy import Policy

    if isinstance(policies, (str, Policy)) or not isinstance(policies, Sequence):
        raise TypeError(f"route_policies: {rule!r} must map to a list of Policy")
    extra = tuple(policies)
    if not extra:
        raise ValueError(f"route_policies: {rule!r} has no policies")
    for policy in extra:
        if not isinstance(policy, Policy):
            raise TypeError(f"route_policies: {rule!r} holds {policy!r}, not a Policy")
        if policy in base:
            raise ValueError(
                f"route_policies: {rule!r} repeats the limiter's policy {policy.name!r}"
            )
        known = by_name.setdefault(policy.name, policy)
        if known != policy:
            # metrics and headers name policies: one name must mean one policy
            raise ValueError(f"route_policies: two different policies are named {policy.name!r}")
    if len({policy.name for policy in extra}) != len(extra):
        raise ValueError(f"route_policies: {rule!r} repeats a policy")
    return extra


def _routes(
    base: tuple[Policy, ...],
    exempt_paths: Iterable[PathRule],
    route_policies: Mapping[PathRule, Sequence[Policy]],
) -> _PathRules:
    """The middleware's path rules: exempt paths first, then per-route policies."""
    if isinstance(exempt_paths, (str, bytes)):
        raise TypeError("exempt_paths must be a list of paths, not a single string")
    rules: list[tuple[PathRule, _Route | None]] = [
        (_check_rule(rule, "exempt_paths"), None) for rule in exempt_paths
    ]
    by_name = {policy.name: policy for policy in base}
    for rule, policies in route_policies.items():
        checked = _check_rule(rule, "route_policies")
        extra = _check_route_policies(rule, policies, base, by_name)
        rules.append((checked, _Route(base + extra, base + extra)))
    return _PathRules(rules, _Route(None, base))


class RateLimitMiddleware:
    """Rate-limit HTTP requests per client; answer 429 with ``Retry-After`` when over.

    A rejection is answered with the errors part's RFC 9457 problem details
    (``errors.problem_response``), the same response ``ErrorMappingMiddleware``
    gives a ``RateLimitExceededError``. A limiter failure is logged and the
    request goes through.

    Arguments (after the wrapped ``app``, all keyword-only):

    - ``limiter``: the ``RateLimiter`` that decides.
    - ``trusted_proxies``: IP addresses or CIDR networks whose forwarded
      header is believed (see ``ClientAddress``); default none.
    - ``forwarded_header``: ``"x-forwarded-for"`` or ``"forwarded"`` (RFC 7239).
    - ``key_func(scope)``: sync or async, replaces the client address as the
      key; returning None exempts the request.
    - ``exempt_paths``: path prefixes (whole segments) or compiled patterns
      (full match) never limited.
    - ``route_policies``: path prefix or pattern -> policies applied on top
      of the limiter's; the first matching entry wins.
    - ``dry_run``: decide and meter, never reject.
    - ``headers``: add the ``RateLimit-Policy``/``RateLimit`` fields to every
      response; ``legacy_headers``: the ``X-RateLimit-*`` ones too.

    Raises ``TypeError`` for an ``app``, ``limiter`` or ``key_func`` that is
    not callable as such or a single string where a list of paths or networks
    belongs, and ``ValueError`` naming the argument for a network, header
    name, path rule or route policy set that is not valid.
    """

    __slots__ = (
        "_app",
        "_client_address",
        "_dry_run",
        "_failures",
        "_headers",
        "_key_func",
        "_last_failure_log",
        "_legacy_headers",
        "_limiter",
        "_rejections",
        "_routes",
        "_single_route",
    )

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        trusted_proxies: Iterable[str | Network | Address] = (),
        forwarded_header: str = "x-forwarded-for",
        key_func: KeyFunc | None = None,
        exempt_paths: Iterable[PathRule] = (),
        route_policies: Mapping[PathRule, Sequence[Policy]] | None = None,
        dry_run: bool = False,
        headers: bool = True,
        legacy_headers: bool = False,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI application, got {app!r}")
        if not callable(getattr(limiter, "hit", None)):
            raise TypeError(f"limiter must be a RateLimiter, got {limiter!r}")
        if key_func is not None and not callable(key_func):
            raise TypeError(f"key_func must be callable, got {key_func!r}")
        self._app = app
        self._limiter = limiter
        self._client_address = ClientAddress(trusted_proxies, forwarded_header=forwarded_header)
        self._key_func = key_func
        self._dry_run = bool(dry_run)
        self._headers = bool(headers)
        self._legacy_headers = bool(legacy_headers)
        self._rejections = 0
        self._failures = 0
        self._last_failure_log = -math.inf
        self._routes = _routes(tuple(limiter.policies), exempt_paths, route_policies or {})
        # no path rules: every request takes the limiter's own policies
        self._single_route = None if self._routes.rules else self._routes.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        route = self._single_route or self._routes(scope["path"])
        if route is None:
            await self._app(scope, receive, send)
            return
        decision: Decision | None
        try:
            if self._key_func is None:  # the common case, without a coroutine in between
                key = self._client_address(scope)
                decision = await self._limiter.hit(
                    key, policies=route.policies, dry_run=self._dry_run
                )
            else:
                decision = await self._decide_by_key_func(self._key_func, scope, route)
        except Exception:
            self._log_failure()
            decision = None
        if decision is None:  # exempted by key_func, or the limiter failed: fail open
            await self._app(scope, receive, send)
            return
        if not decision.allowed:
            self._rejections += 1
            _mark_span(decision, self._dry_run)
            if not self._dry_run:
                await self._reject(scope, send, decision, route)
                return
        if not self._headers:
            await self._app(scope, receive, send)
            return
        extra = route.fields.headers(decision, legacy=self._legacy_headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self._app(scope, receive, send_with_headers)

    async def _decide_by_key_func(
        self, key_func: KeyFunc, scope: Scope, route: _Route
    ) -> Decision | None:
        result = key_func(scope)
        key = await result if inspect.isawaitable(result) else result
        if key is None:
            return None
        return await self._limiter.hit(key, policies=route.policies, dry_run=self._dry_run)

    async def _reject(self, scope: Scope, send: Send, decision: Decision, route: _Route) -> None:
        """Answer 429 with the problem details ``ErrorMappingMiddleware`` would send."""
        headers = (
            route.fields.headers(decision, legacy=self._legacy_headers) if self._headers else []
        )
        exc = errors.RateLimitExceededError(
            policy=decision.policy.name,
            retry_after=decision.retry_after,
            headers=[(name.decode("ascii"), value.decode("ascii")) for name, value in headers],
        )
        # the outcome as ErrorMappingMiddleware finds it (an application may re-map it)
        outcome = errors.registry.lookup(exc) or exc.outcome
        status, response_headers, body = errors.problem_response(
            exc, outcome, str(scope.get("path", ""))
        )
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    def _log_failure(self) -> None:
        self._failures += 1
        now = time.monotonic()
        if now - self._last_failure_log >= _LOG_EVERY:
            self._last_failure_log = now
            _logger.warning(
                "Rate limiter failed; letting requests through (%d failures so far)",
                self._failures,
                exc_info=True,
            )

    def __repr__(self) -> str:
        return (
            f"RateLimitMiddleware(limiter={self._limiter!r}, {self._client_address!r}, "
            f"dry_run={self._dry_run}, rejections={self._rejections}, "
            f"failures={self._failures})"
        )


def _mark_span(decision: Decision, dry_run: bool) -> None:
    """Tag the current server span; its status stays unset (a 429 is the client's error)."""
    try:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(POLICY_ATTRIBUTE, decision.policy.name)
            span.set_attribute(RESULT_ATTRIBUTE, "dry_run_rejected" if dry_run else "rejected")
    except Exception:
        _logger.debug("Could not annotate the current span", exc_info=True)
