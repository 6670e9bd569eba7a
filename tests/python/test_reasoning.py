"""Reasoning through a real `wick serve`: a thinking chat template (ChatML whose generation
prompt opens `<think>` unless `chat_template_kwargs.enable_thinking` is false, and which reads
`reasoning_effort`) puts the whole answer into `reasoning_content` / `reasoning`, streamed and
not, never into `content`; turning thinking off through `chat_template_kwargs` gives content.
SmolLM2's own template has no reasoning effort: `reasoning_effort` is a 400 there."""

import openai
import pytest

from conftest import MODEL_NAME

THINKING_TEMPLATE = (
    "{% if reasoning_effort is defined %}<|im_start|>system\nReasoning: {{ reasoning_effort }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is not defined or enable_thinking %}<think>\n{% endif %}{% endif %}"
)
MSG = [{"role": "user", "content": "What is two plus two?"}]


@pytest.fixture(scope="module")
def thinking(tmp_path_factory):
    from conftest import Server
    from openai import OpenAI

    path = tmp_path_factory.mktemp("tpl") / "thinking.jinja"
    path.write_text(THINKING_TEMPLATE)
    s = Server("--chat-template", str(path))
    yield OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    s.stop()


def test_thinking_goes_to_reasoning_fields(thinking):
    r = thinking.chat.completions.create(model=MODEL_NAME, messages=MSG, temperature=0, max_tokens=20, reasoning_effort="low")
    m = r.choices[0].message
    extra = m.model_extra or {}
    assert extra.get("reasoning_content"), m
    assert extra.get("reasoning") == extra["reasoning_content"]
    assert not m.content
    chunks = list(thinking.chat.completions.create(model=MODEL_NAME, messages=MSG, temperature=0, max_tokens=20,
                                                   reasoning_effort="low", stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    streamed = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert streamed == extra["reasoning_content"]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas) == streamed
    assert "".join(d.content or "" for d in deltas) == ""


def test_chat_template_kwargs_turn_thinking_off(thinking):
    r = thinking.chat.completions.create(model=MODEL_NAME, messages=MSG, temperature=0, max_tokens=20,
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    m = r.choices[0].message
    assert m.content
    assert not (m.model_extra or {}).get("reasoning_content")


def test_reasoning_controls_are_checked(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=3, reasoning_effort="low")
    assert e.value.body["param"] == "reasoning_effort"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=3, extra_body={"chat_template_kwargs": [1]})
    assert e.value.body["param"] == "chat_template_kwargs"
    r = client.chat.completions.create(model=MODEL_NAME, messages=MSG, max_tokens=3,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content is not None
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})
