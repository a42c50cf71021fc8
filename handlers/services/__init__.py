"""What several endpoints share and none of them owns: the event hub, push and mail
delivery, password hashing, tokens and chat roles. Nothing here reads a request's
fields or builds an answer; endpoint modules in ``handlers/`` do that and call these."""
