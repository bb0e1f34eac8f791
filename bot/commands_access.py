"""The operator's access commands: /allow CODE|USER_ID, /deny USER_ID, /users (core/access.py decides)."""

from __future__ import annotations

from bot.command_context import CommandContext, Reply


def decided_by(name: str, user_id: int) -> str:
    """How a decision names who made it: the operator's name and id."""
    return f"{name} ({user_id})" if name else str(user_id)


async def allow(ctx: CommandContext) -> Reply:
    if not ctx.args.strip():
        return Reply("Usage: /allow CODE|USER_ID (a pairing code like ABCD-EFGH, or a Telegram user or group id).")
    return Reply(await ctx.services.access.allow(ctx.args, by=decided_by(ctx.user_name, ctx.user_id)))


async def deny(ctx: CommandContext) -> Reply:
    if not ctx.args.strip():
        return Reply("Usage: /deny USER_ID (revokes at once; /users lists who is in).")
    return Reply(await ctx.services.access.deny(ctx.args, by=decided_by(ctx.user_name, ctx.user_id)))


async def users(ctx: CommandContext) -> Reply:
    services = ctx.services
    access, settings = services.access, services.settings
    records = access.records
    lines = [f"Access policy: {settings.access_mode}."]
    if settings.allowed_ids:
        lines.append("ALLOWED_USER_IDS: " + ", ".join(str(i) for i in sorted(settings.allowed_ids)))
    approved = await records.decisions("approved")
    lines.append(f"Approved ({len(approved)}):" if approved else "Approved: nobody yet.")
    lines += [f"  {d.subject_id} {_label(d.name, d.username)} {d.kind}, by {d.decided_by} at {d.decided_at[:16]}"
              for d in approved]
    denied = await records.decisions("denied")
    if denied:
        lines.append(f"Denied ({len(denied)}):")
        lines += [f"  {d.subject_id} {_label(d.name, d.username)} by {d.decided_by} at {d.decided_at[:16]}"
                  for d in denied]
    pending = await records.pending_codes(now=services.clock.iso())
    lines.append(f"Pending codes ({len(pending)}):" if pending else "Pending codes: none.")
    lines += [f"  {p.code} {p.subject_id} {_label(p.name, p.username)} {p.kind}, until {p.expires_at[11:16]} UTC"
              for p in pending]
    lines.append("\n/allow CODE|USER_ID, /deny USER_ID")
    return Reply("\n".join(lines)[:4000])


def _label(name: str, username: str | None) -> str:
    handle = f" @{username}" if username else ""
    return f"{name}{handle}".strip() or "-"
