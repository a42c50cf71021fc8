"""The served OpenAPI document matches the route table and the handlers; the docs page works offline."""

import base64
import dataclasses
import hashlib
import re
from wsgiref.validate import validator

import jsonschema
import pytest
import schemathesis
from openapi_spec_validator import OpenAPIV31SpecValidator
from webtest import TestApp

from handlers import auth, openapi, service
from handlers.http import declare
from handlers.services.passwords import MAX_PASSWORD_BYTES
from oxc_wsgi import Route, routes

PLACEHOLDER = re.compile(r"\{(\w+)\}")


def served_operations(doc):
    """(METHOD, path) -> operation for every operation in ``doc``."""
    return {
        (method.upper(), path): operation
        for path, methods in doc["paths"].items()
        for method, operation in methods.items()
    }


def contract_problems(doc, table):
    """Why ``doc`` does not describe the route table ``table``; empty when it does."""
    problems = []
    served = served_operations(doc)
    for route in table:
        operation = served.get((route.method, route.template))
        if operation is None:
            problems.append(f"{route.method} {route.template} ({route.name}) is not documented")
            continue
        if operation.get("operationId") != route.name:
            problems.append(f"{route.method} {route.template} is {operation.get('operationId')!r}, not {route.name!r}")
        for field in ("summary", "description"):
            if not str(operation.get(field, "")).strip():
                problems.append(f"{route.name} has no {field}")
        if not operation.get("tags"):
            problems.append(f"{route.name} has no tag")
    routed = {(route.method, route.template) for route in table}
    problems += [
        f"{method} {path} is documented but not routed" for method, path in served if (method, path) not in routed
    ]
    return problems


def resolve(doc, node):
    """``node`` with a local $ref followed."""
    while "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def validates(doc, schema, instance):
    """Raise unless ``instance`` matches ``schema`` (whose refs point into ``doc``)."""
    jsonschema.Draft202012Validator(
        {**schema, "components": doc["components"]}, format_checker=jsonschema.FormatChecker()
    ).validate(instance)


@pytest.fixture
def doc(client):
    return client.get(f"{client.prefix}/openapi.json").json


def test_every_route_has_an_operation_and_every_operation_a_route(client, doc):
    assert contract_problems(doc, routes(client.prefix)) == []
    assert openapi.undeclared(routes(client.prefix)) == []


def test_every_route_handler_carries_its_declaration(client):
    for route in routes(client.prefix):
        declaration = declare.declaration_of(route.handler)
        assert isinstance(declaration, declare.Endpoint), route.name
        assert declaration.summary and declaration.description and declaration.tag in openapi.TAGS, route.name
        placeholders = set(PLACEHOLDER.findall(route.template))
        assert {p.name for p in declaration.parameters if p.where == "path"} == placeholders, route.name


def test_a_route_without_a_declaration_or_description_is_caught(client, doc, monkeypatch):
    def post_reaction(req):
        """Not documented on purpose."""

    table = routes(client.prefix) + [Route("POST", f"{client.prefix}/reactions", post_reaction, True)]
    assert contract_problems(doc, table) == [f"POST {client.prefix}/reactions (post_reaction) is not documented"]

    monkeypatch.setattr(
        service.get_health, "declaration", dataclasses.replace(service.get_health.declaration, description="")
    )
    undescribed = openapi.build_document(client.wsgi.core.ctx.settings, routes(client.prefix), "0")
    assert contract_problems(undescribed, routes(client.prefix)) == ["get_health has no description"]


def test_the_document_is_plain_json_not_an_envelope(client):
    response = client.get(f"{client.prefix}/openapi.json")
    assert response.content_type == "application/json"
    assert response.json["openapi"].startswith("3.1")
    assert "status" not in response.json


def test_the_document_is_valid_openapi_3_1(doc):
    OpenAPIV31SpecValidator(doc).validate()
    loaded = schemathesis.openapi.from_dict(doc)
    labels = {result.ok().label for result in loaded.get_all_operations()}
    assert labels == {f"{method} {path}" for method, path in served_operations(doc)}


def test_operations_that_need_a_user_declare_bearer_security_and_401(client, doc):
    served = served_operations(doc)
    bearer = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"], bearer["bearerFormat"]) == ("http", "bearer", "JWT")
    for route in routes(client.prefix):
        operation = served[(route.method, route.template)]
        schemes = {name for requirement in operation["security"] for name in requirement}
        if route.auth:
            assert all("bearerAuth" in requirement for requirement in operation["security"]), route.name
        if route.auth or "bearerAuth" in schemes:  # the event stream authenticates by itself
            assert "401" in operation["responses"], route.name


def test_without_an_api_key_setting_no_operation_asks_for_one(doc):
    for (method, path), operation in served_operations(doc).items():
        assert all("apiKey" not in requirement for requirement in operation["security"]), (method, path)
    assert "SECRET_KEY_ENABLED" in doc["components"]["securitySchemes"]["apiKey"]["description"]


def test_with_an_api_key_every_operation_but_health_asks_for_it_and_may_answer_401(make_client):
    client = make_client(secret_key_enabled=True, secret_key="k-0123456789abcdef")
    doc = client.get("/api/openapi.json", headers={"X-API-Key": "k-0123456789abcdef"}).json
    for (method, path), operation in served_operations(doc).items():
        schemes = {name for requirement in operation["security"] for name in requirement}
        if path == "/api/health":
            assert schemes == set()
        else:
            assert "apiKey" in schemes and "401" in operation["responses"], (method, path)
    api_key = doc["components"]["securitySchemes"]["apiKey"]
    assert (api_key["type"], api_key["in"], api_key["name"]) == ("apiKey", "header", "X-API-Key")


def test_rate_limiting_adds_429_to_every_operation(make_client):
    doc = make_client(rate_limit_enabled=True).get("/api/openapi.json").json
    for key, operation in served_operations(doc).items():
        assert "Retry-After" in operation["responses"]["429"]["headers"], key


def test_every_path_placeholder_is_a_required_path_parameter(doc):
    for (method, path), operation in served_operations(doc).items():
        parameters = [resolve(doc, parameter) for parameter in operation.get("parameters", ())]
        declared = {p["name"] for p in parameters if p["in"] == "path" and p["required"]}
        assert declared == set(PLACEHOLDER.findall(path)), (method, path)


def test_list_operations_document_limit_and_cursors(client, doc):
    for path in (f"{client.prefix}/messages", f"{client.prefix}/messages/me"):
        operation = doc["paths"][path]["get"]
        parameters = {parameter["name"]: parameter for parameter in (resolve(doc, p) for p in operation["parameters"])}
        assert set(parameters) == {"limit", "before", "after"}
        assert parameters["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
        assert all(parameter["in"] == "query" for parameter in parameters.values())


def test_request_bodies_carry_the_handlers_constraints(client, doc):
    schemas = doc["components"]["schemas"]
    new_user = schemas["NewUser"]
    assert new_user["required"] == ["username", "password"]
    assert new_user["properties"]["username"]["pattern"] == auth.USERNAME.pattern == "^[A-Za-z0-9_-]{3,32}$"
    username = new_user["properties"]["username"]
    assert (username["minLength"], username["maxLength"]) == (3, 32)
    password = new_user["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (auth.MIN_PASSWORD_LENGTH, MAX_PASSWORD_BYTES)
    assert "UTF-8" in password["description"]
    email = re.compile(new_user["properties"]["email"]["pattern"])
    assert "format" not in new_user["properties"]["email"]  # the check is the pattern, which format would tighten
    assert [bool(email.search(value)) for value in ("a@b.c", " a@b.c ", "a@b", "a\x1f@b.c")] == [
        True,
        True,
        False,
        False,
    ]
    content = schemas["NewMessage"]["properties"]["content"]
    settings = client.wsgi.core.ctx.settings
    assert (content["minLength"], content["maxLength"]) == (1, settings.max_message_length)
    assert schemas["NewMessage"]["required"] == ["content"]
    assert schemas["Credentials"]["required"] == ["username", "password"]
    assert schemas["RefreshToken"]["required"] == ["refresh_token"]
    for path, method in (("auth/register", "post"), ("auth/login", "post"), ("messages", "post")):
        operation = doc["paths"][f"{client.prefix}/{path}"][method]
        assert operation["requestBody"]["required"] is True
        assert {"400", "413", "415"} <= set(operation["responses"])


def test_the_document_follows_the_settings(make_client):
    client = make_client(api_prefix="/v2", max_message_length=280)
    doc = client.get("/v2/openapi.json").json
    assert contract_problems(doc, routes("/v2")) == []
    assert doc["components"]["schemas"]["NewMessage"]["properties"]["content"]["maxLength"] == 280
    assert "280" in client.get("/v2/docs").text


def test_errors_use_the_error_envelope_and_successes_the_success_envelope(doc):
    for (method, path), operation in served_operations(doc).items():
        for status, response in operation["responses"].items():
            if status == "304":  # Not Modified has no body
                assert "content" not in response, (path, status)
            elif not status.startswith("2"):
                schema = response["content"]["application/json"]["schema"]
                assert resolve(doc, schema)["properties"]["status"]["const"] == "error", (path, status)
            elif "application/json" in response["content"] and operation["operationId"] != "get_openapi":
                schema = resolve(doc, response["content"]["application/json"]["schema"])
                assert schema["properties"]["status"]["const"] == "success", (method, path, status)


def test_every_example_matches_its_schema(client, doc):
    components = doc["components"]
    for operation in served_operations(doc).values():
        media = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if media is not None:  # uploads are files, not JSON
            validates(doc, media["schema"], media["example"])
        for response in operation["responses"].values():
            for media_type, media in response.get("content", {}).items():
                if media_type == "application/json":
                    validates(doc, media["schema"], openapi.example_of(media["schema"], components))


def test_the_request_examples_work_against_the_app(client, doc):
    def example(path):
        body = doc["paths"][f"{client.prefix}/{path}"]["post"]["requestBody"]
        return body["content"]["application/json"]["example"]

    client.post_json(f"{client.prefix}/auth/register", example("auth/register"), status=201)
    token = client.post_json(f"{client.prefix}/auth/login", example("auth/login"), status=200).json["data"]
    client.post_json(
        f"{client.prefix}/messages",
        example("messages"),
        status=201,
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )


def test_the_docs_page_renders_every_operation_and_works_offline(client, doc):
    page = client.get(f"{client.prefix}/docs")
    assert page.status_int == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    for (_method, path), operation in served_operations(doc).items():
        assert path in page.text and operation["operationId"] in page.text
        assert operation["summary"] in page.text.replace("&#x27;", "'")
    assert not re.search(r"https?://", page.text, re.IGNORECASE)
    assert "<script" not in page.text.lower()
    assert not re.search(r"""\s(?:src|href)=["']?(?://|[a-z][a-z0-9+.-]*:)""", page.text, re.IGNORECASE)
    for tag in ("service", "auth", "messages"):
        assert f'id="tag-{tag}"' in page.text


def test_the_docs_page_has_a_strict_content_security_policy(client):
    page = client.get(f"{client.prefix}/docs")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    style = re.search(r"<style>(.*?)</style>", page.text, re.DOTALL).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_mounted_under_a_prefix_the_servers_url_includes_it(make_client):
    client = make_client()

    def mounted(environ, start_response):
        path = environ["PATH_INFO"]
        if not path.startswith("/chat/"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not here"]
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = "/chat", path[len("/chat") :]
        return client.wsgi(environ, start_response)

    outer = TestApp(validator(mounted))
    doc = outer.get("/chat/api/openapi.json").json
    assert [server["url"] for server in doc["servers"]] == ["/chat"]
    assert "/chat/api/messages/{message_id}" in outer.get("/chat/api/docs").text
    # The same app, reached without the mount, documents its own URLs.
    assert [server["url"] for server in client.get("/api/openapi.json").json["servers"]] == ["/"]


def test_the_document_is_built_once_per_app_and_mount(client, monkeypatch):
    calls = []
    build = openapi.build_document
    monkeypatch.setattr(openapi, "build_document", lambda *args: calls.append(args) or build(*args))
    first = client.get(f"{client.prefix}/openapi.json").body
    client.get(f"{client.prefix}/docs")
    assert client.get(f"{client.prefix}/openapi.json").body == first
    assert len(calls) == 1


def declared_routes(prefix):
    """(route, its declaration resolved for the default test settings) for every declared route with a JSON body."""
    for route in routes(prefix):
        declaration = declare.declaration_of(route.handler)
        if declaration is not None and declaration.body is not None:
            yield route, declaration


def limit_cases(declaration, settings):
    """(body, message): the declaration's example with one field over one of its limits, and the declared answer."""
    resolved = declaration.resolve(settings)
    example = dict(resolved.body_example or {})
    for name, field in resolved.body.items():
        for value, message in field.limits(name):
            yield dict(example, **{name: value}), message
    for rule in resolved.constraints:
        yield {key: value for key, value in example.items() if key not in rule.names}, rule.message


def test_every_declared_limit_answers_400_with_its_declared_message(client):
    settings = client.wsgi.core.ctx.settings
    me = client.user("limits")
    chat = client.post_json(f"{client.prefix}/chats/group", {"name": "Limits"}, headers=me.headers).json["data"]
    message = client.post_json(
        f"{client.prefix}/chats/{chat['id']}/messages", {"content": "mine"}, headers=me.headers
    ).json["data"]
    ids = {"chat_id": chat["id"], "message_id": message["id"]}
    checked = 0
    for route, declaration in declared_routes(client.prefix):
        path = PLACEHOLDER.sub(lambda found: ids.get(found.group(1), "x"), route.template)
        call = getattr(client, f"{route.method.lower()}_json")
        for body, message in limit_cases(declaration, settings):
            answer = call(path, body, headers=me.headers if route.auth else {}, status=400)
            assert answer.json["message"] == message, (route.name, body)
            checked += 1
    assert checked > 50


def test_a_declared_body_is_documented_from_its_declaration(client, doc):
    settings = client.wsgi.core.ctx.settings
    for route, declaration in declared_routes(client.prefix):
        resolved = declaration.resolve(settings)
        assert doc["components"]["schemas"][resolved.body_name] == resolved.body_schema(), route.name
        example = doc["paths"][route.template][route.method.lower()]["requestBody"]["content"]["application/json"]
        assert example["schema"] == {"$ref": f"#/components/schemas/{resolved.body_name}"}


def test_links_name_operations_and_parameters_that_exist(client, doc):
    served = {operation["operationId"]: path for (_method, path), operation in served_operations(doc).items()}
    linked = set()
    for operation in served_operations(doc).values():
        for response in operation["responses"].values():
            for link in response.get("links", {}).values():
                assert link["operationId"] in served
                target = served[link["operationId"]]
                for parameter, expression in link.get("parameters", {}).items():
                    assert "{" + parameter + "}" in target, (operation["operationId"], link)
                    assert expression.startswith(("$response.body#/", "$request.path.")), expression
                if "requestBody" not in link:  # no path parameter is left to chance
                    assert set(PLACEHOLDER.findall(target)) == set(link["parameters"]), (operation["operationId"], link)
                linked.add(link["operationId"])
    # Every operation that needs an id in its path can be reached by following a link.
    needs_ids = {name for name, path in served.items() if "{" in path and "/static/" not in path}
    declared = {route.name for route in routes(client.prefix) if declare.declaration_of(route.handler)}
    assert needs_ids & declared <= linked, sorted((needs_ids & declared) - linked)


def test_registration_links_to_login_with_the_same_body(client, doc):
    links = doc["paths"][f"{client.prefix}/auth/register"]["post"]["responses"]["201"]["links"]
    assert links["post_login"] == {"operationId": "post_login", "requestBody": "$request.body"}
    assert links["get_user"]["parameters"] == {"user_id": "$response.body#/data/id"}
