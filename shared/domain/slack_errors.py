"""Which errors Slack answers that say the bot token itself is bad (missing, revoked, expired, its
workspace or app gone): one set, read by the Slack adapter (shared/slack/web_api.py logs such a refusal
as ``slack_failure="auth"``, which Cloud Monitoring alerts on) and by the fleet's own health
(shared/domain/fleet_health.py makes ``slack_failing`` critical on one). Kept here, in the domain, so the
two cannot disagree: the adapter may import the domain, never the reverse."""

from __future__ import annotations

AUTH_ERRORS = frozenset(
    {"not_configured", "not_authed", "invalid_auth", "token_revoked", "token_expired", "account_inactive"}
)
