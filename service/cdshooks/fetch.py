"""Fallback fetch: read what prefetch lacks from the EHR's FHIR server, allow-listed, token-safe, bounded."""

from __future__ import annotations

import http.cookiejar
import ipaddress
import logging
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit

import orjson
import requests
import urllib3

from service.cdshooks.envelope import HookRequest
from service.cdshooks.prefetch import (
    KEY_TYPES,
    REQUIRED_KEYS,
    PrefetchContent,
    drop_key,
    missing_keys,
    read_prefetch,
)
from service.errors import Issue, MissingData
from service.metrics import FETCH_RETRIES, observe_fetch

log = logging.getLogger("twitch_cds.fetch")
# urllib3 logs every request URL at DEBUG, and a search URL names the patient: never below INFO.
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

PATIENT_PLACEHOLDER = "{{context.patientId}}"
FHIR_JSON = "application/fhir+json"
ORIGIN = "fetched"  # the path prefix of fetched data in issues and card evidence
CHUNK_BYTES = 64 * 1024
MAX_REDIRECTS = 3
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchConfigError(ValueError):
    """A fetch setting that would leave the service unsafe or unusable: the service refuses to start."""


@dataclass(frozen=True)
class Failure:
    """Why one piece of data could not be fetched, in words safe to return (no token, no patient data)."""

    why: str
    code: str  # FHIR IssueType


class _Failed(Exception):
    """Internal: ends one fetch with its Failure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.why)
        self.failure = failure


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Base:
    """A FHIR base URL split into what the safety rules compare: scheme, host, port and path."""

    scheme: str
    host: str
    port: int
    path: str  # no trailing slash
    text: str  # the URL to build requests on (no trailing slash)

    @classmethod
    def parse(cls, url: str) -> Base:
        """Parse an absolute http(s) base; ValueError says what makes it unusable."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an absolute http or https URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("it carries user info (user@host)")
        if parts.query or parts.fragment:
            raise ValueError("it has a query or a fragment")
        # Dot segments would let a base inside an allowed prefix resolve outside it.
        if {".", ".."} & set(unquote(parts.path).split("/")):
            raise ValueError("its path has . or .. segments")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path.rstrip("/")
        return cls(parts.scheme, parts.hostname, port, path, f"{parts.scheme}://{parts.netloc}{path}")

    @property
    def origin(self) -> str:
        """scheme://host:port, for comparisons and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """Whether the host is 127.0.0.0/8, ::1 or localhost."""
        return _is_loopback(self.host)

    def contains(self, other: Base) -> bool:
        """Same origin, and a path equal to this one or below it (segment-wise, not by string prefix)."""
        return (other.scheme, other.host, other.port) == (self.scheme, self.host, self.port) and (
            other.path == self.path or other.path.startswith(self.path + "/")
        )

    def holds_url(self, url: str) -> bool:
        """Whether a full URL (a next link, a redirect) stays on this base."""
        parts = urlsplit(url)
        try:
            target = Base.parse(f"{parts.scheme}://{parts.netloc}{parts.path}")
        except ValueError:
            return False
        return self.contains(target)


def parse_allowlist(raw: Any, key: str = "FHIR_SERVER_ALLOWLIST") -> tuple[Base, ...]:
    """A JSON list of FHIR base URLs (the setting named `key`); FetchConfigError names a bad entry."""
    if isinstance(raw, str | bytes):
        try:
            raw = orjson.loads(raw or b"[]")
        except orjson.JSONDecodeError as exc:
            raise FetchConfigError(f"{key} is not valid JSON: {exc}") from exc
    if not isinstance(raw, list | tuple) or not all(isinstance(e, str) for e in raw):
        raise FetchConfigError(f"{key} must be a JSON list of base URLs")
    bases = []
    for i, entry in enumerate(raw):
        try:
            bases.append(Base.parse(entry))
        except ValueError as exc:
            raise FetchConfigError(f"{key}[{i}] {entry!r}: {exc}") from exc
    return tuple(bases)


def require_https(allowlist: tuple[Base, ...], development: bool, key: str = "FHIR_SERVER_ALLOWLIST") -> None:
    """Plain http only for loopback bases in development: a token must never cross the network in clear."""
    for base in allowlist:
        if base.scheme != "https" and not (base.loopback and development):
            raise FetchConfigError(
                f"{key}: {base.text} must use https (plain http is allowed only for"
                " loopback bases with ENV=development)"
            )


def _positive(config: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(config[key])
    except (TypeError, ValueError) as exc:
        raise FetchConfigError(f"{key} must be a number, got {config[key]!r}") from exc
    if value <= 0:
        raise FetchConfigError(f"{key} must be above 0, got {value}")
    return value


@dataclass(frozen=True)
class FetchSettings:
    """The fetch settings, checked once when the app starts."""

    allowlist: tuple[Base, ...]
    development: bool
    budget: float
    max_pages: int
    page_size: int
    max_bytes: int
    ca_bundle: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FetchSettings:
        """Read and check the FHIR_* settings; FetchConfigError names the first bad one."""
        development = str(config.get("ENV", "production")) == "development"
        allowlist = parse_allowlist(config["FHIR_SERVER_ALLOWLIST"])
        require_https(allowlist, development)
        ca_bundle = str(config.get("FHIR_CA_BUNDLE") or "")
        if ca_bundle and not os.path.isfile(ca_bundle):
            raise FetchConfigError(f"FHIR_CA_BUNDLE {ca_bundle!r} is not a file")
        return cls(
            allowlist=allowlist,
            development=development,
            budget=_positive(config, "FHIR_FETCH_BUDGET_SECONDS", float),
            max_pages=_positive(config, "FHIR_FETCH_MAX_PAGES", int),
            page_size=_positive(config, "FHIR_FETCH_PAGE_SIZE", int),
            max_bytes=_positive(config, "FHIR_FETCH_MAX_BYTES", int),
            ca_bundle=ca_bundle,
        )


@dataclass(frozen=True)
class Query:
    """One discovery template as the read or search the fallback runs for its key."""

    key: str
    resource_type: str
    read: bool  # "Patient/{{context.patientId}}" rather than "Type?params"
    patient_param: str | None  # the search parameter that holds the patient
    filters: tuple[tuple[str, str], ...]  # every other parameter, as the template gives it

    @classmethod
    def from_template(cls, key: str, template: str) -> Query:
        """Parse a template; only {{context.patientId}} can be filled in (ValueError otherwise)."""
        path, _, query = template.partition("?")
        if not query:
            resource_type, _, rid = path.partition("/")
            if rid != PATIENT_PLACEHOLDER:
                raise ValueError(f"template {key!r}: only Type/{PATIENT_PLACEHOLDER} reads are supported")
            return cls(key, resource_type, True, None, ())
        pairs = parse_qsl(query, keep_blank_values=True)
        patient = [name for name, value in pairs if value == PATIENT_PLACEHOLDER]
        filters = tuple((n, v) for n, v in pairs if v != PATIENT_PLACEHOLDER)
        if len(patient) != 1 or any("{{" in v for _, v in filters):
            raise ValueError(
                f"template {key!r}: one {PATIENT_PLACEHOLDER} parameter and no other token expected"
            )
        return cls(key, path, False, patient[0], filters)

    def search_urls(self, base: Base, patient_id: str, page_size: int) -> list[str]:
        """The search, then the fallbacks tried in turn when a server rejects one with 400."""
        # The [type]/[id] form is unambiguous on every server (Medplum's in-memory search matches
        # only it); a server that rejects it gets the bare id the templates use; a server that
        # rejects a filter gets the patient alone (the service selects what it reads itself).
        variants = [
            (f"Patient/{patient_id}", self.filters),
            (patient_id, self.filters),
            (f"Patient/{patient_id}", ()),
        ]
        urls = []
        for patient, filters in variants:
            params = [(str(self.patient_param), patient), *filters, ("_count", str(page_size))]
            url = f"{base.text}/{self.resource_type}?{urlencode(params, safe=',:/', quote_via=quote)}"
            if url not in urls:
                urls.append(url)
        return urls


@dataclass
class Fetched:
    """What the fallback brought back: a value per key, or why not, and notes on partial answers."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    notes: list[Issue] = field(default_factory=list)
    request_count: int = 0


def _new_session(settings: FetchSettings) -> requests.Session:
    session = requests.Session()
    # No proxies, .netrc or CA bundle from the environment: .netrc credentials would replace the
    # bearer token, and a proxy would receive it.
    session.trust_env = False
    # Cookies from one EHR's server must never ride along to the next call or another server.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    session.verify = settings.ca_bundle or True
    session.headers = requests.structures.CaseInsensitiveDict(
        {"User-Agent": "twitch-cds", "Accept": FHIR_JSON, "Accept-Encoding": "gzip, deflate"}
    )
    adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=16, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _outcome_codes(body: dict[str, Any]) -> str:
    # Only the coded part of a server's OperationOutcome: its text may quote patient data.
    codes = [str(i.get("code")) for i in body.get("issue") or () if isinstance(i, dict) and i.get("code")]
    return ", ".join(dict.fromkeys(codes)) or "no code"


def _status_failure(status: int, what: str) -> Failure:
    if status == 401:
        return Failure(f"the FHIR server refused the access token for the {what} (HTTP 401)", "login")
    if status == 403:
        return Failure(f"the access token does not allow the {what} (HTTP 403)", "forbidden")
    if status in (404, 410):
        return Failure(f"the FHIR server has no answer for the {what} (HTTP {status})", "not-found")
    if status == 400:
        return Failure(f"the FHIR server rejected the {what} (HTTP 400)", "not-supported")
    if status == 429:
        return Failure(f"the FHIR server is rate limiting (HTTP 429 on the {what})", "throttled")
    if status >= 500:
        return Failure(f"the FHIR server failed on the {what} (HTTP {status})", "transient")
    return Failure(f"the FHIR server answered the {what} with HTTP {status}", "exception")


@dataclass
class _Run:
    """One key's fetch: what it asks, of which server, until when, and what it has used so far."""

    query: Query
    base: Base
    token: str | None
    patient_id: str
    deadline: float
    bytes_left: int  # FHIR_FETCH_MAX_BYTES covers every page of one search together
    request_count: int = 0
    notes: list[Issue] = field(default_factory=list)

    @property
    def what(self) -> str:
        """How messages name this fetch: "Observation search", "Patient read"."""
        return f"{self.query.resource_type} {'read' if self.query.read else 'search'}"


class FhirFetcher:
    """Runs the discovery templates against an allow-listed fhirServer: one pooled Session per worker."""

    def __init__(self, settings: FetchSettings, templates: Mapping[str, str]) -> None:
        self.settings = settings
        self.queries = {key: Query.from_template(key, t) for key, t in templates.items()}
        self._session: requests.Session | None = None
        self._session_pid = 0
        self._lock = threading.Lock()

    def session(self) -> requests.Session:
        """This process's Session (a pool forked from a parent would share its sockets)."""
        with self._lock:
            if self._session is None or self._session_pid != os.getpid():
                self._session = _new_session(self.settings)
                self._session_pid = os.getpid()
            return self._session

    def refusal(self, fhir_server: str | None) -> Failure | None:
        """Why this service will not fetch from `fhir_server`, or None when it may."""
        if not self.settings.allowlist:
            return Failure(
                "fetching from fhirServer is disabled on this service (FHIR_SERVER_ALLOWLIST is empty)",
                "forbidden",
            )
        if not fhir_server:
            return Failure("the request names no fhirServer to fetch it from", "not-found")
        try:
            base = Base.parse(fhir_server)
        except ValueError as exc:
            return Failure(f"fhirServer is not a usable FHIR base: {exc}", "forbidden")
        if not any(entry.contains(base) for entry in self.settings.allowlist):
            return Failure(
                f"fhirServer {base.origin} is not on this service's FHIR_SERVER_ALLOWLIST", "forbidden"
            )
        if base.scheme != "https" and not (base.loopback and self.settings.development):
            return Failure("fhirServer must use https", "forbidden")
        return None

    def fetch(
        self, fhir_server: str, token: str | None, patient_id: str, keys: list[str], deadline: float
    ) -> Fetched:
        """Fetch every key at once; whatever is unanswered at the deadline fails as a timeout."""
        started = time.perf_counter()
        base = Base.parse(fhir_server)  # refusal() has accepted it
        runs = {
            key: _Run(self.queries[key], base, token, patient_id, deadline, self.settings.max_bytes)
            for key in keys
        }
        pool = ThreadPoolExecutor(max_workers=len(keys), thread_name_prefix="fhir-fetch")
        jobs = {key: pool.submit(self._run, run) for key, run in runs.items()}
        wait(jobs.values(), timeout=max(0.0, deadline - time.perf_counter()))
        # A straggler is abandoned, not waited for: its socket timeouts end it within the budget.
        pool.shutdown(wait=False, cancel_futures=True)
        fetched = Fetched()
        for key, job in jobs.items():
            if not job.done():
                fetched.failures[key] = self._timeout()
                continue
            outcome = job.result()  # a bug in _run surfaces here, as a 500
            run = runs[key]
            fetched.request_count += run.request_count
            fetched.notes.extend(run.notes)
            if isinstance(outcome, Failure):
                fetched.failures[key] = outcome
            else:
                fetched.values[key] = outcome
        observe_fetch(time.perf_counter() - started, [f.code for f in fetched.failures.values()])
        return fetched

    def _timeout(self) -> Failure:
        return Failure(
            f"the FHIR server did not answer within the {self.settings.budget:g} s budget"
            " (FHIR_FETCH_BUDGET_SECONDS)",
            "timeout",
        )

    def _run(self, run: _Run) -> dict[str, Any] | Failure:
        try:
            return self._read(run) if run.query.read else self._search(run)
        except _Failed as failed:
            return failed.failure

    def _read(self, run: _Run) -> dict[str, Any]:
        url = f"{run.base.text}/{run.query.resource_type}/{quote(run.patient_id, safe='')}"
        status, body = self._get(run, url)
        if body is None:
            raise _Failed(_status_failure(status, run.what))
        if body.get("resourceType") != run.query.resource_type or body.get("id") != run.patient_id:
            raise _Failed(
                Failure(f"the FHIR server answered the {run.what} with another resource", "invalid")
            )
        return body

    def _search(self, run: _Run) -> dict[str, Any]:
        candidates = run.query.search_urls(run.base, run.patient_id, self.settings.page_size)
        for i, url in enumerate(candidates):
            status, page = self._get(run, url)
            if status != 400 or i + 1 == len(candidates):
                break  # 400: the server rejected this form of the search, so try the next
        entries: list[Any] = []
        seen = {url}
        while True:
            if page is None:
                raise _Failed(_status_failure(status, run.what))
            entries.extend(self._page_entries(run, page))
            next_url = next(
                (
                    urljoin(url, str(link["url"]))
                    for link in page.get("link") or ()
                    if isinstance(link, dict) and link.get("relation") == "next" and link.get("url")
                ),
                None,
            )
            if next_url is None:
                break
            stop = self._stop_paging(run, next_url, seen, len(entries))
            if stop is not None:
                run.notes.append(Issue(stop, f"{ORIGIN}.{run.query.key}", "warning", "incomplete"))
                break
            url = next_url
            seen.add(url)
            status, page = self._get(run, url)
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "self", "url": f"{run.base.text}/{run.query.resource_type}"}],
        }
        if entries:
            bundle["entry"] = entries
        return bundle

    def _stop_paging(self, run: _Run, next_url: str, seen: set[str], count: int) -> str | None:
        read = f"read {len(seen)} page(s), {count} entries"
        if not run.base.holds_url(next_url):
            return (
                f"{run.what}: the next page is outside fhirServer, not followed ({read}); data may be missing"
            )
        if next_url in seen:
            return f"{run.what}: the next link repeats an earlier page; paging stopped ({read})"
        if len(seen) >= self.settings.max_pages:
            return (
                f"{run.what}: stopped at FHIR_FETCH_MAX_PAGES ({self.settings.max_pages}) with more pages"
                f" on the server ({read}); data may be missing"
            )
        return None

    @staticmethod
    def _page_entries(run: _Run, page: dict[str, Any]) -> list[Any]:
        kind = page.get("resourceType")
        if kind == "OperationOutcome":
            codes = _outcome_codes(page)
            raise _Failed(
                Failure(
                    f"the FHIR server answered the {run.what} with an OperationOutcome ({codes})",
                    "processing",
                )
            )
        if kind != "Bundle" or page.get("type", "searchset") != "searchset":
            other = f"the FHIR server answered the {run.what} with something other than a searchset"
            raise _Failed(Failure(other, "structure"))
        entries = page.get("entry") or []
        if not isinstance(entries, list):
            raise _Failed(
                Failure(f"the FHIR server's {run.what} Bundle has a malformed entry list", "structure")
            )
        return entries

    def _get(self, run: _Run, url: str) -> tuple[int, dict[str, Any] | None]:
        """GET within the deadline: (status, body) with the body parsed only for 200."""
        session = self.session()
        for _ in range(MAX_REDIRECTS + 1):
            if not run.base.holds_url(url):  # the first URL always is: this stops redirects
                away = f"the FHIR server redirected the {run.what} away from fhirServer; not followed"
                raise _Failed(Failure(away, "security"))
            response = self._send(session, run, url)
            with response:
                location = response.headers.get("Location")
                if response.status_code in REDIRECTS and location:
                    url = urljoin(url, location)
                    continue
                if response.status_code != 200:
                    return response.status_code, None  # closed unread: error bodies are not used
                return 200, self._json(run, response)
        raise _Failed(
            Failure(f"the FHIR server redirected the {run.what} more than {MAX_REDIRECTS} times", "security")
        )

    def _send(self, session: requests.Session, run: _Run, url: str) -> requests.Response:
        """One GET within the deadline; on a connection error (a reset, a dropped keep-alive
        connection, a refused connect) it is made once more, as a GET may be, if time is left."""
        headers = {"Authorization": f"Bearer {run.token}"} if run.token else {}
        for attempt in (1, 2):
            remaining = run.deadline - time.perf_counter()
            if remaining <= 0:
                raise _Failed(self._timeout())
            run.request_count += 1
            try:
                return session.get(
                    url, headers=headers, timeout=(remaining, remaining), stream=True, allow_redirects=False
                )
            except requests.Timeout as exc:  # a connect timeout too: the budget is spent, no retry
                raise _Failed(self._timeout()) from exc
            except requests.ConnectionError as exc:
                if attempt == 1:
                    FETCH_RETRIES.inc()
                    continue
                raise _Failed(
                    Failure(f"could not connect to the FHIR server for the {run.what}", "transient")
                ) from exc
            except requests.RequestException as exc:
                raise _Failed(
                    Failure(f"the {run.what} request to the FHIR server failed", "exception")
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _json(self, run: _Run, response: requests.Response) -> dict[str, Any]:
        media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if not media.endswith("json"):
            shown = "".join(c for c in media[:40] if c.isprintable()) or "no content type"
            raise _Failed(
                Failure(f"the FHIR server answered the {run.what} with {shown}, not FHIR JSON", "structure")
            )
        try:
            body = orjson.loads(self._body(run, response))
        except orjson.JSONDecodeError as exc:
            raise _Failed(
                Failure(f"the FHIR server's answer to the {run.what} is malformed JSON", "structure")
            ) from exc
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise _Failed(
                Failure(f"the FHIR server's answer to the {run.what} is not a FHIR resource", "structure")
            )
        return body

    def _body(self, run: _Run, response: requests.Response) -> bytes:
        too_big = Failure(
            f"the FHIR server's answer to the {run.what} is larger than FHIR_FETCH_MAX_BYTES"
            f" ({self.settings.max_bytes} bytes)",
            "too-costly",
        )
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > run.bytes_left:
            raise _Failed(too_big)
        raw = response.raw
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        chunks: list[bytes] = []
        while True:
            remaining = run.deadline - time.perf_counter()
            if remaining <= 0:
                raise _Failed(self._timeout())
            if sock is not None:
                sock.settimeout(remaining)  # a server dripping bytes cannot stretch the budget
            try:
                # Decoded, at most CHUNK_BYTES at a time: a compressed bomb stops at the cap too.
                chunk = raw.read1(CHUNK_BYTES, decode_content=True)
            except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
                raise _Failed(self._timeout()) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise _Failed(
                    Failure(f"the connection broke while reading the {run.what}", "transient")
                ) from exc
            if not chunk:
                return b"".join(chunks)
            run.bytes_left -= len(chunk)
            if run.bytes_left < 0:
                raise _Failed(too_big)
            chunks.append(chunk)


def complete_prefetch(
    content: PrefetchContent, hook_request: HookRequest, fetcher: FhirFetcher, deadline: float
) -> None:
    """Fetch what prefetch lacks into `content`; 412 when required data stays out of reach."""
    gaps = missing_keys(content, hook_request.prefetch)
    paged = {k: v for k, v in content.paged.items() if k in KEY_TYPES and k not in gaps}
    followable = fetcher.refusal(hook_request.fhir_server) is None
    for key in content.paged:
        if key in paged and followable:
            # A searchset with a next link is one page of a longer result (Medplum's client sends
            # only the first page): the whole search is read again from fhirServer, safely paged.
            gaps[key] = "one page of a longer search (its Bundle has a next link)"
        elif key not in gaps:
            # A key this service did not ask for has no known query; otherwise fhirServer is out of reach.
            why = (
                "this service did not ask for that key"
                if key not in KEY_TYPES
                else "fhirServer cannot be read"
            )
            content.notes.append(
                Issue(
                    f"prefetch.{key} is the first page of a longer search (its Bundle has a next link);"
                    f" {why} to follow it, so later pages, which may hold the newest results, were not read",
                    f"prefetch.{key}",
                    "warning",
                    "incomplete",
                )
            )
    # An optional key this fetcher has no query for (the SMART app's token is not asked to read
    # it) stays unknown to the rules, as when an EHR sends only some keys: not fetched, not noted.
    for key in [k for k in gaps if k not in fetcher.queries and k not in REQUIRED_KEYS]:
        del gaps[key]
    if not gaps:
        return
    refusal = fetcher.refusal(hook_request.fhir_server)
    if refusal is not None:
        # CDS Hooks 2.0: a key sent as null means the EHR has no data for it. When the data
        # cannot be re-read (Medplum also sends null for a template it could not fill), null is
        # taken at its word; only the Patient itself cannot be absent.
        for key in [k for k in gaps if k != "patient" and k in hook_request.prefetch]:
            if hook_request.prefetch[key] is None:
                del gaps[key]
        if not gaps:
            return
        failures = dict.fromkeys(gaps, refusal)
    else:
        started = time.perf_counter()
        fetched = fetcher.fetch(
            str(hook_request.fhir_server),
            hook_request.access_token,
            hook_request.patient_id,
            list(gaps),
            deadline,
        )
        read_prefetch(fetched.values, ORIGIN, content)
        for key in fetched.values:
            content.missing.pop(key, None)
            if key in paged:
                drop_key(content, key)  # the whole search replaces its first page
        for key in [k for k in paged if k in fetched.failures]:
            failure = fetched.failures.pop(key)
            content.notes.append(
                Issue(
                    f"prefetch.{key} is the first page of a longer search (its Bundle has a next link);"
                    f" the rest could not be read from fhirServer: {failure.why}; later pages, which may"
                    " hold the newest results, were not read",
                    f"prefetch.{key}",
                    "warning",
                    "incomplete",
                )
            )
        content.notes.extend(fetched.notes)
        failures = fetched.failures
        # Optional data that could not be fetched is said on the data card (it also withholds
        # reassurance); a refusal is not, since integrators may send only the required keys.
        for key, failure in failures.items():
            if key not in REQUIRED_KEYS:
                content.notes.append(
                    Issue(
                        f"{KEY_TYPES[key]} could not be fetched from fhirServer: {failure.why};"
                        " the cards do not take it into account",
                        f"prefetch.{key}",
                        "warning",
                        failure.code,
                    )
                )
        # Logged without patient data or URLs: which keys, how many requests, how long, what failed.
        log.info(
            "fetch server=%s keys=%s requests=%d ms=%.1f failed=%s",
            Base.parse(str(hook_request.fhir_server)).origin,
            ",".join(gaps),
            fetched.request_count,
            (time.perf_counter() - started) * 1000,
            ",".join(f"{k}:{f.code}" for k, f in failures.items()) or "-",
        )
    issues = [
        Issue(
            f"prefetch.{key} ({KEY_TYPES[key]}) is {gaps[key]}, and it could not be fetched:"
            f" {failures[key].why}; the rules cannot be evaluated without it",
            f"prefetch.{key}",
            code=failures[key].code,
        )
        for key in REQUIRED_KEYS
        if key in gaps and key in failures
    ]
    if issues:
        raise MissingData(issues)
