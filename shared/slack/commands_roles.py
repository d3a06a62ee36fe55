"""``/fleet roles``: who may do what in a tenant; its admins change it (never leaving it without one)."""

from __future__ import annotations

from shared.domain import roles, slash
from shared.domain.api_keys import Role
from shared.domain.audit import AuditEntry
from shared.domain.roles import Action
from shared.slack.command_context import Asker, Refusal, Reply, pick_tenant, require
from shared.store import roles as role_store


def _roles(asker: Asker, parsed: slash.Parsed) -> Reply:
    args = list(parsed.args)
    if args and args[0].lower() in ("set", "remove"):
        raise slash.Usage("name the tenant first: `/fleet roles <tenant> set <@user> <role>`", parsed.spec)
    tenant = pick_tenant(asker, args[0] if args else None)
    if len(args) <= 1:
        current = role_store.of_tenant(tenant)
        lines = [f"<@{user}>: {role}" for user, role in sorted(current.items(), key=lambda kv: (kv[1], kv[0]))]
        return Reply(f"Roles in {tenant}", tuple(lines) or ("nobody yet",), tenant=tenant)
    verb = args[1].lower()
    if verb not in ("set", "remove") or (verb == "set" and len(args) != 4) or (verb == "remove" and len(args) != 3):
        raise slash.Usage("write `/fleet roles <tenant> set <@user> <role>` or `remove <@user>`", parsed.spec)
    require(asker, tenant, Action.ROLES)
    user = roles.parse_user(args[2])
    if user is None:
        raise slash.Usage(f"`{args[2][:40]}` is not a Slack user: mention them (@name)")
    wanted: str | None = None
    if verb == "set":
        try:
            wanted = Role(args[3].lower()).value
            if wanted == Role.SCRAPE:  # an API key's role (GET /metrics only), never a person's
                raise ValueError(wanted)
        except ValueError:
            raise slash.Usage("a role is viewer, operator, approver or admin") from None

    def apply(current: dict[str, str]) -> dict[str, str]:
        updated = {k: v for k, v in current.items() if k != user}
        if wanted is not None:
            updated[user] = wanted
        if not any(role == Role.ADMIN.value for role in updated.values()):
            raise Refusal(f"{tenant} would have no admin left: make someone else admin first", tenant=tenant)
        return updated

    def entry(previous: dict[str, str], updated: dict[str, str]) -> AuditEntry:
        return AuditEntry(
            id=f"slack.{asker.request_id}.tenant.roles.set",
            at=asker.now,
            actor=asker.actor,
            action="tenant.roles.set",
            target=f"tenant.{tenant}",
            outcome="applied",
            tenant=tenant,
            details={"user": user, "role": updated.get(user), "previous": previous.get(user)},
        )

    role_store.change(tenant, apply, entry)
    said = f"is now {wanted}" if wanted else "no longer has a role"
    return Reply(
        f"👥 <@{user}> {said} in {tenant} (by <@{asker.user_id}>).",
        public=True,
        outcome="applied",
        target=f"tenant.{tenant}",
        tenant=tenant,
    )


#: The subcommands of this family, by name (shared/slack/commands.py dispatches on them).
COMMANDS = {
    "roles": _roles,
}
