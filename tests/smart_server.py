"""A SMART on FHIR authorization server for the browser test, in front of the Medplum FHIR server.

Built on authlib's OAuth 2.0 authorization server (authorization code grant, PKCE S256 required,
public clients, exact redirect URIs). It plays the EHR's part: `launch` ids the test registers
carry the patient in context, the test user is approved without a consent page, and its FHIR
base (`/fhir`) is a resource server that checks the bearer token and its scopes, and passes
allowed requests on to Medplum with Medplum's own credentials. It runs only on 127.0.0.1.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import orjson
import requests
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, OAuth2Error
from authlib.oauth2.rfc7636 import CodeChallenge
from flask import Flask, Response, request
from joserfc import jwt
from joserfc.jwk import OctKey

FHIR_JSON = "application/fhir+json"
USER = "Practitioner/smart-test-user"
V2_SCOPE = re.compile(r"^patient/([A-Za-z]+|\*)\.([cruds]+)$")


@dataclass(frozen=True)
class Client(ClientMixin):  # type: ignore[misc]
    """A registered public client: its id, its one redirect URI, the scopes it may be granted."""

    client_id: str
    redirect_uri: str
    allowed: frozenset[str]

    def get_client_id(self) -> str:
        """The client id."""
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        """The registered redirect URI."""
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        """The requested scopes this client may have (the rest are silently not granted)."""
        return " ".join(s for s in (scope or "").split() if s in self.allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        """Exactly the registered URI."""
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        """A public client has no secret."""
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """Public: no client authentication at the token endpoint."""
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        """Authorization code only."""
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        """Authorization code only (no refresh tokens)."""
        return grant_type == "authorization_code"


@dataclass
class Code:
    """An issued authorization code and what it was issued for."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    patient: str
    code_challenge: str
    code_challenge_method: str
    issued: float = field(default_factory=time.time)

    def get_redirect_uri(self) -> str:
        """The redirect URI of the authorization request."""
        return self.redirect_uri

    def get_scope(self) -> str:
        """The granted scopes."""
        return self.scope


@dataclass(frozen=True)
class Grant:
    """What an access token allows: one patient, these scopes."""

    patient: str
    scopes: frozenset[str]

    def allows(self, resource_type: str, op: str) -> bool:
        """Whether a v2 scope grants `op` (c, r, s) on `resource_type`."""
        for scope in self.scopes:
            match = V2_SCOPE.match(scope)
            if match and match.group(1) in (resource_type, "*") and op in match.group(2):
                return True
        return False


class S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE required, and only S256 (plain would let an intercepted code be redeemed)."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        """No code without an S256 challenge (authlib alone would issue one and refuse it later)."""
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE with code_challenge_method=S256 is required")
        super().validate_code_challenge(grant, redirect_uri)


class SmartServer:
    """The authorization server and resource-server proxy; `app` is its WSGI application."""

    def __init__(self, medplum_base: str, medplum_token: str) -> None:
        self.medplum_base = medplum_base.rstrip("/")
        self.medplum_token = medplum_token
        self.base = ""  # set by bind() once the port is known
        self.clients: dict[str, Client] = {}
        self.launches: dict[str, str] = {}  # launch id -> patient id
        self.codes: dict[str, Code] = {}
        self.tokens: dict[str, Grant] = {}
        self.refused: list[tuple[str, str, int]] = []  # method, path, status of refused FHIR calls
        self.fhir_calls: list[tuple[str, str, str]] = []  # method, path, User-Agent of each /fhir call
        self.id_token_key = OctKey.import_key(secrets.token_bytes(32))
        self.app = self._build()

    def bind(self, base: str) -> None:
        """The server's own URL: its FHIR base (the `iss`) is base + /fhir."""
        self.base = base.rstrip("/")

    @property
    def fhir_base(self) -> str:
        """The iss an EHR launch names."""
        return self.base + "/fhir"

    def register(self, client_id: str, redirect_uri: str, scopes: str) -> None:
        """Register (or re-register) a public client."""
        self.clients[client_id] = Client(client_id, redirect_uri, frozenset(scopes.split()))

    def launch(self, patient_id: str) -> str:
        """A new launch id that puts this patient in context."""
        launch_id = secrets.token_urlsafe(12)
        self.launches[launch_id] = patient_id
        return launch_id

    def grant(self, patient_id: str, scopes: str) -> str:
        """An access token for this patient and these scopes, as the token endpoint would issue it."""
        token = secrets.token_urlsafe(32)
        self.tokens[token] = Grant(patient_id, frozenset(scopes.split()))
        return token

    def _build(self) -> Flask:
        app = Flask("smart_test_server")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": 3600}
        server = AuthorizationServer(app, query_client=self.clients.get, save_token=self._save_token)
        outer = self

        class CodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
            TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["none"]

            def save_authorization_code(self, code: str, req: Any) -> None:
                data = req.payload.data
                outer.codes[code] = Code(
                    code,
                    req.client.client_id,
                    req.payload.redirect_uri,
                    req.scope,
                    outer.launches[data["launch"]],
                    data.get("code_challenge", ""),
                    data.get("code_challenge_method", ""),
                )

            def query_authorization_code(self, code: str, client: Client) -> Code | None:
                item = outer.codes.get(code)
                if item is None or item.client_id != client.client_id or time.time() - item.issued > 60:
                    return None
                return item

            def delete_authorization_code(self, authorization_code: Code) -> None:
                outer.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code: Code) -> str:
                return USER

        server.register_grant(CodeGrant, [S256Only(required=True)])

        @app.after_request
        def cors(response: Response) -> Response:
            # The app's page (another origin) calls discovery, the token endpoint and the FHIR base.
            response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "*")
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Accept"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST"
            return response

        @app.get("/fhir/.well-known/smart-configuration")
        def configuration() -> Response:
            return Response(
                orjson.dumps(
                    {
                        "issuer": self.base,
                        "authorization_endpoint": self.base + "/authorize",
                        "token_endpoint": self.base + "/token",
                        "token_endpoint_auth_methods_supported": ["none"],
                        "grant_types_supported": ["authorization_code"],
                        "response_types_supported": ["code"],
                        "code_challenge_methods_supported": ["S256"],
                        "scopes_supported": sorted({s for c in self.clients.values() for s in c.allowed}),
                        "capabilities": [
                            "launch-ehr",
                            "client-public",
                            "context-ehr-patient",
                            "permission-v2",
                            "sso-openid-connect",
                        ],
                    }
                ),
                mimetype="application/json",
            )

        @app.get("/authorize")
        def authorize() -> Response:
            # SMART: aud must be this server's FHIR base, launch a launch this "EHR" started.
            if request.args.get("aud") != self.fhir_base:
                return Response("aud is not this server's FHIR base", status=400)
            if request.args.get("launch") not in self.launches:
                return Response("unknown launch", status=400)
            try:
                grant = server.get_consent_grant(end_user=USER)
            except OAuth2Error as error:
                return server.handle_error_response(request, error)  # type: ignore[no-any-return]
            return server.create_authorization_response(grant_user=USER, grant=grant)  # type: ignore[no-any-return]

        @app.post("/token")
        def token() -> Response:
            return server.create_token_response()  # type: ignore[no-any-return]

        @app.route("/fhir/<path:path>", methods=["GET", "POST", "OPTIONS"])
        def fhir(path: str) -> Response:
            if request.method == "OPTIONS":
                return Response(status=204)
            return self._proxy(path)

        return app

    def _save_token(self, token: dict[str, Any], req: Any) -> None:
        code: Code = req.authorization_code
        self.tokens[token["access_token"]] = Grant(code.patient, frozenset(code.scope.split()))
        # What a SMART token response adds: the patient in context and who the user is.
        token["patient"] = code.patient
        if "openid" in code.scope.split() and "fhirUser" in code.scope.split():
            claims = {
                "iss": self.base,
                "sub": "smart-test-user",
                "aud": code.client_id,
                "fhirUser": f"{self.fhir_base}/{USER}",
                "iat": int(time.time()),
                "exp": int(time.time()) + 3600,
            }
            token["id_token"] = jwt.encode({"alg": "HS256"}, claims, self.id_token_key)

    def _refuse(self, status: int, why: str) -> Response:
        self.refused.append((request.method, request.path, status))
        body = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "forbidden", "diagnostics": why}],
        }
        return Response(orjson.dumps(body), status=status, mimetype=FHIR_JSON)

    def _proxy(self, path: str) -> Response:
        self.fhir_calls.append((request.method, request.path, request.headers.get("User-Agent", "")))
        auth = request.headers.get("Authorization", "")
        grant = self.tokens.get(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None
        if grant is None:
            return self._refuse(401, "no valid access token")
        parts = path.split("/")
        resource_type = parts[0]
        patient_ref = f"Patient/{grant.patient}"
        if request.method == "GET" and len(parts) == 2:
            # A read: only the patient in context, and only with a read scope.
            if resource_type != "Patient" or parts[1] != grant.patient or not grant.allows("Patient", "r"):
                return self._refuse(403, f"the token does not allow reading {path}")
        elif request.method == "GET" and len(parts) == 1:
            params = dict(parse_qsl(urlsplit(request.url).query))
            subject = params.get("patient") or params.get("subject")
            if subject not in (grant.patient, patient_ref) or not grant.allows(resource_type, "s"):
                return self._refuse(403, f"the token does not allow this {resource_type} search")
        elif request.method == "POST" and len(parts) == 1:
            resource = orjson.loads(request.get_data() or b"{}")
            subject = (resource.get("subject") or {}).get("reference")
            if resource.get("resourceType") != resource_type or not grant.allows(resource_type, "c"):
                return self._refuse(403, f"the token does not allow creating {resource_type}")
            if subject != patient_ref:
                return self._refuse(403, f"the token is for {patient_ref}, not {subject}")
        else:
            return self._refuse(403, "not allowed")
        query = urlsplit(request.url).query
        upstream = requests.request(
            request.method,
            f"{self.medplum_base}/{path}" + (f"?{query}" if query else ""),
            data=request.get_data() or None,
            headers={
                "Authorization": f"Bearer {self.medplum_token}",
                "Content-Type": request.headers.get("Content-Type", FHIR_JSON),
                "Accept": FHIR_JSON,
            },
            timeout=30,
        )
        # Links (next pages, locations) must point at this proxy, not past it at Medplum.
        body = upstream.content.replace(self.medplum_base.encode(), self.fhir_base.encode())
        return Response(body, status=upstream.status_code, mimetype=FHIR_JSON)
