"""Trust at the edge: who is calling (CDS Hooks JWTs), how often, and what a response may do."""

from service.security.guard import current_caller, install_guard
from service.security.issuers import ConfigError
from service.security.limits import check_json_depth

__all__ = ["ConfigError", "check_json_depth", "current_caller", "install_guard"]
