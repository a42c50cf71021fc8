"""What several endpoints share and none of them owns: the event hub, push and mail
delivery, password hashing, tokens, chat roles, messaging (sending, editing and
deleting chat messages), the notifier, file types and thumbnails. Nothing here
reads a request's fields or builds an answer; endpoint modules in ``handlers/`` do
that and call these."""
