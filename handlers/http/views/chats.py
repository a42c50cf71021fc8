"""Views of chats: the chat itself, its members, its messages, receipts, and what a member sees of it."""

from __future__ import annotations

from ...services.roles import ROLES
from .declared import View, array, field, one_of, ref
from .people import ALICE, BOB, CHAT, MESSAGE, TIME_NOTE, WHEN

member_name = field("username", "string", "Their name (null if their account is gone).", "bob", nullable=True)

CHAT_FIELDS = [
    field("id", "string", "The chat's id (a UUID).", CHAT),
    field("type", one_of(("group", "direct")), "A group, or a direct chat between two users.", "group"),
    field("name", "string", "The group's name; null for a direct chat.", "Book club", nullable=True),
    field("description", "string", "What the group is about.", "Monthly reads", nullable=True),
    field("created_by", "string", "The id of the user who made the chat.", ALICE, nullable=True),
    field("created_at", "string", f"When the chat was made: {TIME_NOTE}", WHEN),
    field("member_count", "integer", "How many members it has.", 2, minimum=0),
]


def _chat(record: dict, member_count: int) -> dict:
    return {
        "id": record["id"],
        "type": record["type"],
        "name": record.get("name"),
        "description": record.get("description"),
        "created_by": record.get("created_by"),
        "created_at": record["created_at"],
        "member_count": member_count,
    }


#: A chat's own fields (what chat.created and chat.updated events carry).
chat = View("ChatInfo", "A chat's own fields, the same for every member.", CHAT_FIELDS, _chat)


def _member(record: dict, user: dict | None) -> dict:
    return {
        "user_id": record["user_id"],
        "username": user["username"] if user else None,
        "role": record["role"],
        "joined_at": record["joined_at"],
    }


#: A chat member: who, which role, since when.
member = View(
    "Member",
    None,
    [
        field("user_id", "string", "The member's id.", BOB),
        member_name,
        field("role", one_of(ROLES), "owner > admin > member.", ROLES[0]),
        field("joined_at", "string", f"When they joined: {TIME_NOTE}", WHEN),
    ],
    _member,
)

mention = View(
    None, None, [field("user_id", "string", "The member's id.", BOB), field("username", "string", "Their name.", "bob")]
)


def _chat_message(message: dict) -> dict:
    deleted = bool(message.get("deleted"))
    return {
        "id": message["id"],
        "chat_id": message["chat_id"],
        "user_id": message["user_id"],
        "username": message["username"],
        "content": None if deleted else message["content"],
        "reply_to_id": message.get("reply_to_id"),
        "mentions": [] if deleted else message.get("mentions", []),
        "created_at": message["created_at"],
        "edited_at": message.get("edited_at"),
        "deleted": deleted,
        "attachment": None if deleted else message.get("attachment"),
        "encrypted": bool(message.get("encrypted")),
        "envelope": None if deleted else message.get("envelope"),
    }


#: A message in a chat; a deleted one is a tombstone without content.
chat_message = View(
    "ChatMessage",
    "A message in a chat; a deleted one keeps its place without content.",
    [
        field("id", "string", "The message's id (a UUID).", MESSAGE),
        field("chat_id", "string", "The chat's id.", CHAT),
        field("user_id", "string", "The sender's id.", ALICE),
        field("username", "string", "The sender's name.", "user1"),
        field("content", "string", "The text; null once deleted.", "Hello, @bob!", nullable=True),
        field("reply_to_id", "string", "The message this one replies to.", nullable=True),
        field("mentions", array(mention), "Members named as @username in the text."),
        field("created_at", "string", f"When it was sent: {TIME_NOTE}", WHEN),
        field("edited_at", "string", "When it was last edited.", nullable=True),
        field("deleted", "boolean", "True for a tombstone left by a deletion.", False),
        field("attachment", ref("Attachment"), "The file sent with it; null when none.", nullable=True),
        field(
            "encrypted",
            "boolean",
            "True for an end-to-end encrypted message: content is null, envelope holds what only the "
            "members' devices can read.",
            False,
        ),
        field(
            "envelope",
            ref("Envelope"),
            "The encrypted message, for encrypted messages; null otherwise.",
            nullable=True,
        ),
    ],
    _chat_message,
)

peer = View(
    None,
    "The other user; only in direct chats.",
    [field("id", "string", "The other user's id.", BOB), member_name],
)


def _summary(record: dict, member_count: int, me: dict, last: dict | None, unread: int, other: dict | None) -> dict:
    shown = chat(record, member_count)
    if other is not None:
        shown["peer"] = peer.check(other)
    shown.update(
        last_message=chat_message(last) if last else None,
        unread_count=unread,
        role=me["role"],
        muted=me.get("muted", False),
    )
    return shown


#: A chat as its member sees it in a list: ``summary(chat, member_count, me, last, unread, peer)``.
summary = View(
    "Chat",
    "A chat as its member sees it in the list.",
    [
        *CHAT_FIELDS,
        field("last_message", chat_message, "The newest message; null when there is none.", nullable=True),
        field("unread_count", "integer", "Messages after my read pointer.", 0, minimum=0),
        field("role", one_of(ROLES), "My role in the chat.", ROLES[0]),
        field("muted", "boolean", "Whether I muted it.", False),
        field("peer", peer, "The other user; only in direct chats.", required=False),
    ],
    _summary,
)


def _details(shown: dict, members: list[dict], message: dict | None = None) -> dict:
    return dict(shown, members=members, **({"message": chat_message(message)} if message is not None else {}))


#: A chat with its members (and, after POST /chats/direct with content, the message sent):
#: ``details(summary(...), [member(...), ...], message)``.
details = View(
    "ChatDetails",
    "A chat with its members; after POST /chats/direct with content, also the message sent.",
    [
        field("members", array(member), "Its members."),
        field("message", chat_message, "The message sent with the chat, if any.", required=False),
    ],
    _details,
    extends=summary,
)

mute = View(
    "Mute",
    None,
    [field("chat_id", "string", "The chat's id.", CHAT), field("muted", "boolean", "Whether it is muted.", False)],
)
unread = View(
    "Unread",
    None,
    [
        field("chat_id", "string", "The chat's id.", CHAT),
        field("unread_count", "integer", "Messages after my read pointer.", 0, minimum=0),
    ],
)

receipt = View(
    None,
    None,
    [
        field("user_id", "string", "The member's id.", BOB),
        member_name,
        field("delivered", "boolean", "Whether the message reached their device.", True),
        field("read", "boolean", "Whether they read it.", False),
    ],
)


def _receipts(message: dict, others: list[tuple[dict, dict | None]]) -> dict:
    seq = message["seq"]
    return {
        "message_id": message["id"],
        "receipts": [
            receipt.build(
                user_id=record["user_id"],
                username=user["username"] if user else None,
                delivered=record.get("delivered_seq", 0) >= seq,
                read=record.get("read_seq", 0) >= seq,
            )
            for record, user in others
        ],
    }


#: Who has received and read a message: ``receipts(message, [(membership, user or None), ...])``.
receipts = View(
    "Receipts",
    None,
    [
        field("message_id", "string", "The message's id.", MESSAGE),
        field("receipts", array(receipt), "One entry per member other than the sender."),
    ],
    _receipts,
)

typing = View(
    "Typing",
    None,
    [
        field("chat_id", "string", "The chat's id.", CHAT),
        field("typing", "boolean", "Whether the caller is typing now.", True),
    ],
)

VIEWS = [chat, member, chat_message, summary, details, mute, unread, receipts, typing]
