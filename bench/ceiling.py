"""The ceiling: a bare WSGI app answering a fixed small JSON body.

Served by waitress with the same settings as oxc, it shows what the server
and the load generator cost on their own; oxc's figures are read as ratios
of this one, measured in the same run.
"""

BODY = b'{"status":"success","data":{"id":"550e8400-e29b-41d4-a716-446655440001","content":"hi"}}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", HEADERS)
    return [BODY]
