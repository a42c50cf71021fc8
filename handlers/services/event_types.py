"""The kinds of real-time event oxc publishes, declared once.

The hub refuses to publish any other type, the OpenAPI document's ``Event.type``
is exactly these, and the README's event list is checked against them.
"""

EVENT_TYPES = {
    "message.created": "A public or private 0xC message was sent.",
    "message.deleted": "A 0xC message was deleted.",
    "chat.created": "A chat the user belongs to was created.",
    "chat.updated": "A chat's name, description or avatar changed.",
    "chat.deleted": "A chat the user belonged to was deleted.",
    "member.added": "Someone joined or was added to a chat.",
    "member.removed": "Someone left or was removed from a chat.",
    "member.role_changed": "A member's role changed.",
    "chat.message.created": "A message was sent in a chat.",
    "chat.message.edited": "A chat message was edited.",
    "chat.message.deleted": "A chat message was deleted (or redacted by a moderator).",
    "message.read": "A member's read pointer advanced.",
    "message.delivered": "A member's delivered pointer advanced.",
    "typing.started": "A member started typing.",
    "typing.stopped": "A member stopped typing.",
    "presence.online": "A contact came online.",
    "presence.offline": "A contact went offline.",
    "notification.created": "A notification arrived in the user's feed.",
}
