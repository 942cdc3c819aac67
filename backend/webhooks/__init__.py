"""Webhooks: endpoints that admins register, the outbox of deliveries staged in the
transaction of the change they report, and the dispatcher that sends them, signed per
the Standard Webhooks specification. See docs/webhooks.md."""
