"""With --auth, every way into the app is refused without a login and acts as the logged-in user with one.

The endpoints are read from what the server itself publishes (the page config's events and API endpoints, each
component's server functions), not listed here, so an endpoint added later is checked too. Plain HTTP, as a script
or the page would send it: POST /gradio_api/queue/join (+ the SSE stream) and /gradio_api/component_server."""
from __future__ import annotations

import json
import uuid

import httpx
import pytest

from annotation import Store
from app_fixtures import auth_server

API = "/gradio_api"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    srv = auth_server(tmp_path_factory.mktemp("auth"))
    yield srv
    assert srv.stop() == 0


def login(srv, name: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=srv.url, timeout=60)
    assert client.post("/login", data={"username": name, "password": password}).status_code == 200
    return client


@pytest.fixture(scope="module")
def alice(served):
    client = login(served, "alice", "s3cret")
    yield client
    client.close()


@pytest.fixture(scope="module")
def config(alice) -> dict:
    config = alice.get("/config").json()
    assert config["username"] == "alice"
    return config


def server_functions(config: dict) -> list[tuple[int, str]]:
    return [(c["id"], name) for c in config["components"]
            for name in c.get("server_fns") or c.get("props", {}).get("server_fns") or []]


def join_body(dependency: dict, data: list, session: str) -> dict:
    return {"fn_index": dependency["id"], "data": data, "session_hash": session, "event_data": None,
            "trigger_id": (dependency["targets"] or [[None]])[0][0]}


def call_event(client: httpx.Client, dependency: dict, data: list) -> list:
    """Run one event through the queue as the page does; its outputs (fails on an error)."""
    session = uuid.uuid4().hex
    joined = client.post(f"{API}/queue/join", json=join_body(dependency, data, session))
    assert joined.status_code == 200, (dependency["api_name"], joined.text)
    event_id = joined.json()["event_id"]
    with client.stream("GET", f"{API}/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            message = json.loads(line[5:]) if line.startswith("data:") else {}
            if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                assert message["success"], (dependency["api_name"], message.get("output"))
                return message["output"]["data"]
    raise AssertionError(f"no answer for {dependency['api_name']}")


def call_server_function(client: httpx.Client, component: int, name: str, data: dict) -> httpx.Response:
    return client.post(f"{API}/component_server", json={"data": data, "component_id": component,
                                                         "session_hash": "s-" + uuid.uuid4().hex, "fn_name": name})


def footprint(srv) -> dict:
    """Everything a request could have changed in the workspace."""
    with Store(srv.workspace, create=False) as store:
        return {table: store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("masks", "tags", "leases", "skips", "events", "settings")}


def test_every_endpoint_is_refused_without_a_login(served, alice, config):
    dependencies, functions = config["dependencies"], server_functions(config)
    assert len(dependencies) >= 10 and len(functions) >= 7  # the enumeration found the app's endpoints
    before = footprint(served)
    forged = {name: "forged-token" for name in alice.cookies}  # access-token names, and the browser id cookie
    assert any(name.startswith("access-token") for name in forged)
    for cookies in ({}, forged):
        with httpx.Client(base_url=served.url, cookies=cookies, timeout=60) as anonymous:
            for path in ("/config", f"{API}/info", f"{API}/openapi.json"):
                assert anonymous.get(path).status_code == 401, path
            for dependency in dependencies:
                data = [None] * len(dependency["inputs"])
                answer = anonymous.post(f"{API}/queue/join", json=join_body(dependency, data, "anonymous"))
                assert answer.status_code == 401, dependency["api_name"]
                if dependency["api_visibility"] != "private":
                    for path in (f"{API}/call/{dependency['api_name']}", f"{API}/run/{dependency['api_name']}"):
                        assert anonymous.post(path, json={"data": data}).status_code == 401, path
            for component, name in functions:
                assert call_server_function(anonymous, component, name, {}).status_code == 401, name
    assert footprint(served) == before


def check_answer(where: str, answer) -> None:
    """An answer, not a refusal, given to alice."""
    if isinstance(answer, dict):
        assert "error" not in answer, (where, answer)
        if "annotator" in answer:
            assert answer["annotator"] == "alice", where


def test_every_endpoint_answers_as_the_logged_in_user(served, alice, config):
    canvas = {name: component for component, name in server_functions(config)}
    view = call_server_function(alice, canvas["task"], "task", {}).json()["view"]
    for name, component in canvas.items():  # the canvas's way in
        answer = call_server_function(alice, component, name, {"view": view})
        assert answer.status_code == 200, name
        check_answer(name, answer.json())
        view = answer.json().get("view", view)

    named = alice.get(f"{API}/info").json()["named_endpoints"]
    values = {c["id"]: c.get("props", {}).get("value") for c in config["components"]}
    for dependency in config["dependencies"]:  # page events and API endpoints
        parameters = named.get(f"/{dependency['api_name']}", {}).get("parameters")
        if parameters is None:  # a page event: the inputs' values on the page
            data = [values[i] for i in dependency["inputs"]]
        else:
            for p in parameters:
                assert p["parameter_name"] == "view" or p["parameter_has_default"], f"what to send as {p}?"
            data = [view if p["parameter_name"] == "view" else p["parameter_default"] for p in parameters]
        outputs = call_event(alice, dependency, data)
        for output in outputs:
            check_answer(dependency["api_name"], output)
            assert not (isinstance(output, str) and "failed" in output), (dependency["api_name"], output)
            view = output.get("view", view) if isinstance(output, dict) else view

    with Store(served.workspace, create=False) as store:  # whatever was recorded, was recorded as alice
        for table, column in (("masks", "annotator"), ("tags", "annotator"), ("skips", "annotator"),
                              ("leases", "annotator"), ("events", "who")):
            names = {row[0] for row in store.conn.execute(f"SELECT DISTINCT {column} FROM {table}")}
            assert names - {"import", "export", "system"} == {"alice"}, (table, names)


def test_a_second_login_is_someone_else(served, alice, config):
    canvas = {name: component for component, name in server_functions(config)}
    mine = call_server_function(alice, canvas["task"], "task", {}).json()
    bob = login(served, "bob", "hunter22")
    theirs = call_server_function(bob, canvas["task"], "task", {}).json()
    assert theirs["annotator"] == "bob" and theirs["image_id"] != mine["image_id"]
    refused = call_server_function(bob, canvas["accept"], "accept", {"view": mine["view"]}).json()
    assert "no longer on record" in refused["error"]  # alice's showing answers alice only
    bob.close()
