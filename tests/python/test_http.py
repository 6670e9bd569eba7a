"""Raw HTTP against a real `wick serve`: malformed input, routing errors, keep-alive after a
stream, CORS, API keys, request ids."""

import http.client
import json

import openai
import pytest
import requests

from conftest import MODEL_NAME


def chat_body(**extra):
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, **extra}


def envelope(resp):
    e = resp.json()["error"]
    assert isinstance(e["message"], str) and isinstance(e["type"], str)
    assert e["code"] is None or isinstance(e["code"], str)
    return e


def test_malformed_and_ill_typed_bodies(server):
    url = server.url + "/v1/chat/completions"
    r = requests.post(url, data="{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert envelope(r)["type"] == "invalid_request_error"
    r = requests.post(url, json={"model": MODEL_NAME})
    assert r.status_code == 400 and envelope(r)["param"] == "messages"
    r = requests.post(url, json=chat_body(max_tokens="many"))
    assert r.status_code == 400 and envelope(r)["param"] == "max_tokens"
    r = requests.post(url, json=chat_body(frobnicate=True))
    assert r.status_code == 400 and envelope(r)["param"] == "frobnicate"


def test_routing_errors(server):
    r = requests.get(server.url + "/v1/does-not-exist")
    assert r.status_code == 404
    envelope(r)
    r = requests.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405
    envelope(r)


def test_keep_alive_after_a_stream(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps(chat_body(stream=True))
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    text = resp.read().decode()
    assert text.rstrip().endswith("data: [DONE]")
    sock = conn.sock
    conn.request("GET", "/health")
    again = conn.getresponse()
    assert again.status == 200
    again.read()
    assert conn.sock is sock, "the connection was not reused"
    conn.close()


def test_request_id_header(server):
    r = requests.get(server.url + "/health")
    assert r.headers.get("x-request-id")
    r = requests.get(server.url + "/health", headers={"x-request-id": "req-42"})
    assert r.headers["x-request-id"] == "req-42"


def test_tokenize_round_trip(server):
    t = requests.post(server.url + "/tokenize", json={"prompt": "Hello world", "add_special_tokens": False}).json()
    assert t["count"] == len(t["tokens"]) > 0
    d = requests.post(server.url + "/detokenize", json={"tokens": t["tokens"]}).json()
    assert d["prompt"] == "Hello world"


def test_auth_cors_and_body_limit(spawn):
    s = spawn("--api-key", "sk-a", "--api-key", "sk-b", "--cors-allow-origin", "http://app.example", "--max-body-bytes", "2000")
    assert requests.get(s.url + "/health").status_code == 200
    assert requests.get(s.url + "/ready").status_code == 200
    r = requests.get(s.url + "/v1/models")
    assert r.status_code == 401 and envelope(r)["code"] == "invalid_api_key"
    ok = requests.get(s.url + "/v1/models", headers={"authorization": "Bearer sk-b"})
    assert ok.status_code == 200
    bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    good = openai.OpenAI(base_url=s.url + "/v1", api_key="sk-a", max_retries=0)
    assert good.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2).choices
    pre = requests.options(
        s.url + "/v1/chat/completions",
        headers={"origin": "http://app.example", "access-control-request-method": "POST", "access-control-request-headers": "authorization"},
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://app.example"
    r = requests.post(s.url + "/v1/chat/completions", json=chat_body(user="x" * 5000), headers={"authorization": "Bearer sk-a"})
    assert r.status_code == 413
    envelope(r)


def test_cors_off_by_default(server):
    pre = requests.options(server.url + "/v1/models", headers={"origin": "http://app.example", "access-control-request-method": "GET"})
    assert "access-control-allow-origin" not in pre.headers
