"""Structured output through the official openai SDK against a real `wick serve`: strict nested
JSON schemas (validated with `jsonschema`) greedy and sampled, streamed and not; json_object;
`client.chat.completions.parse` with pydantic; legacy completions; the `grammar` extension;
and 400s for schemas llguidance rejects."""

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from conftest import MODEL_NAME

PROFILE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"type": "string", "enum": ["admin", "editor", "viewer"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "integer", "minimum": 10000, "maximum": 99999},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "address", "tags", "active"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "profile", "schema": PROFILE, "strict": True}}
MSG = [{"role": "user", "content": "Make up a user profile for Ann, an editor from Paris, as JSON."}]


def check(text):
    value = json.loads(text)
    jsonschema.validate(value, PROFILE)
    return value


def test_strict_nested_schema_greedy(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, response_format=FORMAT, temperature=0, max_tokens=200)
    c = r.choices[0]
    assert c.finish_reason == "stop", c.message.content
    check(c.message.content)


def test_strict_nested_schema_sampled_n_and_seeds(client):
    for seed in (1, 2):
        r = client.chat.completions.create(
            model=MODEL_NAME, messages=MSG, response_format=FORMAT, temperature=1.0, seed=seed, n=3, max_tokens=200
        )
        for c in r.choices:
            assert c.finish_reason == "stop", c.message.content
            check(c.message.content)


@pytest.mark.parametrize("temperature", [0, 0.8])
def test_streamed_schema_output_validates_and_equals_the_non_streamed_one(client, temperature):
    kw = dict(model=MODEL_NAME, messages=MSG, response_format=FORMAT, temperature=temperature, seed=7, max_tokens=200)
    full = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    check(text)
    assert text == full


def test_json_object_mode(client):
    r = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": 'Reply in JSON with keys "name" and "age" for Bob, who is 30.'}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=120,
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


class Address(BaseModel):
    city: str = Field(max_length=24)
    country: Literal["France", "Spain", "Italy"]


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    address: Address
    hobbies: list[Literal["chess", "music", "hiking"]] = Field(min_length=1, max_length=2)


def test_sdk_parse_with_pydantic(client):
    r = client.chat.completions.parse(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Invent a person who lives in Rome."}],
        response_format=Person,
        temperature=0,
        max_tokens=200,
    )
    person = r.choices[0].message.parsed
    assert isinstance(person, Person), r.choices[0].message.content
    assert 1 <= len(person.hobbies) <= 2


def test_legacy_completions_accept_response_format(client):
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 10}},
              "required": ["answer"], "additionalProperties": False}
    r = client.completions.create(
        model=MODEL_NAME, prompt="Two plus two, as JSON:", max_tokens=40, temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}},
    )
    jsonschema.validate(json.loads(r.choices[0].text), schema)


def test_lark_grammar_extension(client):
    grammar = 'start: ("yes" | "no") "." '
    for t in (0, 1.0):
        r = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Is the sky blue?"}], temperature=t, seed=3,
            max_tokens=10, extra_body={"grammar": grammar},
        )
        assert r.choices[0].message.content in ("yes.", "no.")
        assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    "fmt,param",
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "frobnicate"}}}}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/nope"}}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "response_format.json_schema.name"),
        ({"type": "xml"}, "response_format.type"),
    ],
)
def test_bad_schemas_are_400s_naming_response_format(client, fmt, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, response_format=fmt, max_tokens=5)
    err = e.value.body
    assert err["param"] == param, err
    assert err["message"], err


def test_bad_lark_grammar_is_a_400_naming_grammar(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=5, extra_body={"grammar": "start: ("})
    assert e.value.body["param"] == "grammar"
    # The server is fine afterwards.
    assert client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=3).choices
