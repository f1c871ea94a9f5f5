// The SMART EHR launch: the service has checked iss against SMART_ALLOWED_ISSUERS; fhirclient
// discovers the EHR's .well-known/smart-configuration and sends the browser to its authorize
// endpoint with PKCE (S256, required: a server that does not offer it is refused).
const section = document.getElementById("smart-launch");
const status = document.getElementById("status");
const { clientId, scope, redirectUri, iss, launch } = section.dataset;

try {
  await window.FHIR.oauth2.authorize({
    clientId,
    scope,
    redirectUri,
    iss,
    launch,
    pkceMode: "required",
    completeInTarget: true,
  });
} catch (error) {
  status.textContent = `The EHR's authorization could not start: ${error.message}`;
  status.className = "status error";
}
