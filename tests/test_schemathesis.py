"""An outside schemathesis run: a real server, the document it serves, both of schemathesis's kinds of test.

Unlike tests/test_fuzz.py (in process, through the WSGI callable), this module
starts ``oxc serve`` on a loopback port, once per storage backend, loads
``/api/openapi.json`` from it over HTTP as any outside client would, logs a
user in, and runs

* the per-operation phase: every operation (but the endless event stream) with
  generated input, checked for no 5xx, only documented statuses and content
  types, and bodies that match their documented schemas (the coverage phase's
  boundary values are left out for time: tests/test_fuzz.py runs schemathesis's
  defaults in process);
* the stateful phase: scenarios that chain operations along the document's
  OpenAPI links, feeding ids from one answer into the next request, with the
  same checks. Once the document has links, schemathesis's own inferred links
  are switched off, so that what is reached is what the document promises.

The stateful test prints which operations it called, with what statuses, and
which it reached (see ``reached``: a 2xx or 3xx, at least once). It fails when an
operation that a link from a scenario's first step feeds was never reached
(but for BEYOND_ONE_LINK); operations deeper in are reported, not required,
since random bodies make long chains rare. Reach is random, so scenarios run
in batches until every required operation is reached or the budget is spent.
A separate test checks the document itself: a link that leaves one of its
target's path parameters to chance can never feed it. While the document has
no links, the inferred ones are all the phase has and nothing is required.

Generation is seeded (fixed seeds, no example database) and bounded so that
the module runs in about two minutes on two cores when all is well (a reach
failure spends the whole stateful budget first). A 5xx shows the server's
logged traceback alongside the failing request.
"""

import collections
import json
import re
import threading
import urllib.request

import hypothesis
import pytest
import schemathesis
from pgtest import fresh_schema
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from server import Server
from test_fuzz import STATE_DEPENDENT_400

PASSWORD = "correct horse battery"
SEED = 1515
#: Generated cases per operation in the per-operation phase.
MAX_EXAMPLES = 6
#: Stateful scenarios: at least the first number; then more, a batch at a time, until every operation one link
#: from a start (see one_link_from_a_start) has been reached or the last number is spent. Each takes at most
#: STEPS requests.
SCENARIOS = (40, 90)
BATCH = 20
STEPS = 40
#: Hypothesis runs allowed in all (one per batch, and a fresh start whenever a replayed scenario drew
#: differently because the server's state had moved on).
SUITES = 20
#: Link-fed operations whose success needs more than any one answer holds; reported, not required.
BEYOND_ONE_LINK = {
    "post_member": "a chat from one answer and a user who is not in it from another",
    "get_attachment_thumbnail": "an image; generated uploads are random bytes (404: no thumbnail)",
}
#: Operations with a path parameter that no answer produces.
NO_LINK_FEEDS = {"get_static"}  # the page's own file names
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")
#: Seconds: far more than any answer takes, even on a loaded machine; a request that hangs fails.
REQUEST_TIMEOUT = 20


def fuzz_config(token, infer_links=True):
    """The schemathesis configuration: the checks above only, bounded generation, the fuzzer's token.

    ``infer_links=False`` leaves the stateful phase with the document's own links
    only, rather than adding the ones schemathesis guesses from names and shapes.
    """
    inference = {} if infer_links else {"inference": {"algorithms": []}}
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "request-timeout": REQUEST_TIMEOUT,
            "headers": {"Authorization": f"Bearer {token}"},
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                # Unknown query parameters are ignored by design (0xC did too), not refused.
                "allow-extra-parameters": False,
            },
            "phases": {"coverage": {"enabled": False}, "stateful": {"max-steps": STEPS, **inference}},
            "operations": [
                # An endless text/event-stream; tests/test_events.py covers it.
                {"include-operation-id": "get_event_stream", "enabled": False},
                # A long poll: without this it waits up to its timeout for an event that never comes.
                {"include-operation-id": "get_events", "parameters": {"timeout": 0}},
            ],
        }
    )


def run_server(data_dir, **env):
    """Yield a running ``oxc serve`` whose ``logged`` list collects what it writes to stderr."""
    server = Server(data_dir, **env)
    # Drained as it comes: a server writing tracebacks into a full pipe would stall mid-answer.
    server.logged = []
    drain = threading.Thread(target=lambda: server.logged.extend(server.process.stderr), daemon=True)
    drain.start()
    try:
        yield server
    finally:
        server.process.terminate()
        drain.join(15)
        server.stop()


def print_tracebacks(server):
    """Print what the server logged with tracebacks: the causes of its 5xx answers (shown when a test fails)."""
    logged = "".join(server.logged)
    if "Traceback" in logged:
        print(f"the server logged:\n{logged}")


@pytest.fixture(scope="module", params=["json", "postgres"])
def served(request, tmp_path_factory):
    """``oxc serve`` on a loopback port over a fresh data directory (and, for postgres, a fresh schema)."""
    data_dir = tmp_path_factory.mktemp("schemathesis") / "data"
    if request.param == "postgres":
        with fresh_schema() as (url, _):
            yield from run_server(data_dir, STORE_URL=url)
    else:
        yield from run_server(data_dir)


@pytest.fixture(scope="module")
def token(served):
    """The fuzzer's access token, once the server holds what a fuzzer cannot make for itself.

    Every request is the fuzzer's, so nothing it does can notify it: a buddy
    shares a group with it and mentions it. And schemathesis starts scenarios
    only from operations that need no ids, which posting a message (it may name
    a recipient) is not: the fuzzer has posted a few messages beforehand. The
    lists that show these (notifications, my messages) feed the rest by links.
    """
    fuzzer = served.client()
    fuzzer.register("fuzzer", PASSWORD)
    fuzzer.login("fuzzer", PASSWORD)
    for number in range(3):
        fuzzer.send_message(f"Hello, world #{number}")
    buddy = served.client()
    buddy.register("buddy", PASSWORD)
    buddy.login("buddy", PASSWORD)
    chat = buddy.create_group("Fuzz", members=["fuzzer"])
    buddy.send(chat["id"], "Hello @fuzzer")
    return fuzzer.tokens["access_token"]


@pytest.fixture(scope="module")
def document(served):
    with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/api/openapi.json", timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def api_schema(served, token):
    return schemathesis.openapi.from_url(
        f"http://127.0.0.1:{served.port}/api/openapi.json", config=fuzz_config(token), timeout=10
    )


@pytest.fixture(scope="module")
def linked_schema(served, token, document):
    """The document for the stateful phase: its own links only, once it has any.

    Inferred links are schemathesis's guesses (they change between its
    versions, and a hundred of them dilute the scenarios); the document's links
    are the promise this module holds the server to. Without any, the inferred
    ones are all the stateful phase has.
    """
    config = fuzz_config(token, infer_links=not link_targets(document))
    return schemathesis.openapi.from_url(f"http://127.0.0.1:{served.port}/api/openapi.json", config=config, timeout=10)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
def test_every_operation_answers_as_documented_over_the_network(case, served, token):
    try:
        case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, timeout=REQUEST_TIMEOUT)
    finally:
        print_tracebacks(served)


def document_links(document):
    """Every link of the document as (source operationId, target operationId, the path parameters it sets)."""
    return [
        (operation["operationId"], link["operationId"], set(link.get("parameters", {})))
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict)
        for response in operation.get("responses", {}).values()
        for link in response.get("links", {}).values()
    ]


def link_targets(document):
    """The operationIds that the document's own links feed."""
    return {target for _, target, _ in document_links(document)}


def one_link_from_a_start(document):
    """Link targets that a scenario's first step can feed.

    A scenario starts with an operation that takes no id in its path (any
    other would get a random one and answer 404); what one of their links
    feeds is one step from there. Operations deeper in (fed only by what a
    linked step answered) are reached less often, since random bodies make
    each step likely to be refused: they are reported rather than required.
    """
    starts = {name for label, name in operation_ids(document).items() if "{" not in label}
    return {target for source, target, _ in document_links(document) if source in starts}


def links_leaving_a_path_parameter_to_chance(document):
    """``source -> target (parameter)`` for each link that does not set every path parameter of its target."""
    path_parameters = {name: set(re.findall(r"\{(\w+)\}", label)) for label, name in operation_ids(document).items()}
    return sorted(
        f"{source} -> {target} ({', '.join(sorted(path_parameters[target] - given))})"
        for source, target, given in document_links(document)
        if path_parameters[target] - given
    )


def operation_ids(document):
    """``{"METHOD /path": operationId}`` for every operation of the document."""
    return {
        f"{method.upper()} {path}": operation["operationId"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }


def reached(name, statuses):
    """Whether an operation's answers show it ran on real data.

    A 2xx, or a 3xx (304 to If-None-Match). For the operations whose 400 is
    about the state the request names (a cursor outside the chat, a reply to
    a message elsewhere; see tests/test_fuzz.py), a 400 to linked ids counts too:
    random query values make most of their requests that, whatever the link fed.
    """
    return any(status < 400 or (status == 400 and name in STATE_DEPENDENT_400) for status in statuses)


def run_stateful_phase(api_schema, document, token, wanted):
    """Run the scenarios; returns ({operationId: Counter of statuses}, {(operationId, failure): details}).

    Runs SCENARIOS[0] scenarios, then batches of BATCH more while some of the
    ``wanted`` operations is not reached yet, up to SCENARIOS[1]. Check
    failures are collected rather than raised, so that every scenario runs
    and Hypothesis never replays one against a server whose state has moved
    on. When Hypothesis does find that a scenario drew differently the second
    time (FlakyStrategyDefinition: a bundle the server filled differently),
    the next run starts with the next seed.
    """
    answers = collections.defaultdict(collections.Counter)
    failures = {}
    names = operation_ids(document)
    headers = {"Authorization": f"Bearer {token}"}
    scenarios = [0]

    class Workflow(api_schema.as_state_machine()):
        def setup(self):
            scenarios[0] += 1

        def get_call_kwargs(self, case):
            return {"headers": headers, "timeout": REQUEST_TIMEOUT}

        def after_call(self, response, case):
            super().after_call(response, case)
            answers[names.get(case.operation.label, case.operation.label)][response.status_code] += 1

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            try:
                super().validate_response(response, case, additional_checks=additional_checks, **kwargs)
            except (AssertionError, FailureGroup) as failure:
                name = names.get(case.operation.label, case.operation.label)
                failures.setdefault((name, str(failure).splitlines()[0]), str(failure))

    def more_needed():
        if scenarios[0] < SCENARIOS[0]:
            return SCENARIOS[0] - scenarios[0]
        if scenarios[0] >= SCENARIOS[1] or all(reached(name, answers.get(name, ())) for name in wanted):
            return 0
        return min(BATCH, SCENARIOS[1] - scenarios[0])

    suites = 0
    while more_needed() and suites < SUITES:
        settings = hypothesis.settings(
            max_examples=more_needed(),
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            phases=[hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        suites += 1
        try:
            hypothesis.seed(SEED + suites)(Workflow).run(settings=settings)
        except hypothesis.errors.FlakyStrategyDefinition:
            pass
    print(f"{scenarios[0]} scenarios in {suites} Hypothesis runs")
    return answers, failures


def reach_report(answers, document):
    """What the stateful phase called and reached, one line per operation, and what it never called."""
    fed = link_targets(document)
    near = one_link_from_a_start(document)
    lines = [
        "operations the stateful phase called (status: answers);"
        " * reached, L fed by a link from a start, l fed only by a link deeper in:"
    ]
    for name in sorted(answers):
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(answers[name].items()))
        mark = "L" if name in near else "l" if name in fed else " "
        lines.append(f"  {'*' if reached(name, answers[name]) else ' '}{mark} {name} ({statuses})")
    never = sorted(set(operation_ids(document).values()) - set(answers))
    lines.append(f"never called: {', '.join(never) or 'none'}")
    unfed = sorted(
        name for label, name in operation_ids(document).items() if "{" in label and name not in fed | NO_LINK_FEEDS
    )
    lines.append(f"taking an id in the path, but fed by no link: {', '.join(unfed) or 'none'}")
    if not fed:
        lines.append("the document has no links: reach is reported, not asserted")
    return "\n".join(lines)


def test_every_link_sets_every_path_parameter_of_its_target(document):
    # A parameter a link leaves out is generated at random: the target answers 404, whatever the link found.
    assert not links_leaving_a_path_parameter_to_chance(document)


def test_the_stateful_phase_follows_the_links_to_every_operation_they_feed(linked_schema, document, served, token):
    wanted = one_link_from_a_start(document) - set(BEYOND_ONE_LINK)
    answers, failures = run_stateful_phase(linked_schema, document, token, wanted)
    report = reach_report(answers, document)
    print(report)
    print_tracebacks(served)
    assert not failures, "\n\n".join(failures.values())
    unreached = sorted(name for name in wanted if not reached(name, answers.get(name, ())))
    assert not unreached, f"one link from a start, but never reached: {', '.join(unreached)}\n{report}"
