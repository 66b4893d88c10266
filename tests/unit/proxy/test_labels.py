from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnipy.proxy.errors import SelectorError
from cnipy.proxy.labels import Selector, from_label_selector, validate_key, validate_value


@pytest.mark.parametrize("key", ["app", "app.kubernetes.io/name", "a", "A-b_c.d", "x" * 63, "example.com/" + "y" * 63])
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["", "-app", "app-", "x" * 64, "Example.com/app", "/app", "a/b/c", "app name",
                                 ("a" * 64 + ".com") + "/x", "a" * 254 + "/x"])
def test_invalid_keys(key: str) -> None:
    with pytest.raises(SelectorError):
        validate_key(key)


def test_values() -> None:
    assert validate_value("") == ""
    assert validate_value("v1.2_x-y") == "v1.2_x-y"
    for bad in ("-v", "v-", "x" * 64, "a b", "é"):
        with pytest.raises(SelectorError):
            validate_value(bad)


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "web"}, True),
    ("app!=web", {"app": "db"}, True),
    ("app!=web", {}, True),
    ("app!=web", {"app": "web"}, False),
    ("tier in (fe, be)", {"tier": "be"}, True),
    ("tier in (fe,be)", {"tier": "db"}, False),
    ("tier notin (fe)", {}, True),
    ("tier notin (fe)", {"tier": "fe"}, False),
    ("tier", {"tier": ""}, True),
    ("tier", {}, False),
    ("!tier", {}, True),
    ("app=web,tier in (fe),!canary", {"app": "web", "tier": "fe"}, True),
    ("app=web,tier in (fe),!canary", {"app": "web", "tier": "fe", "canary": "1"}, False),
    ("", {"anything": "x"}, True),
])
def test_selector_parse_and_match(text: str, labels: dict[str, str], expected: bool) -> None:
    assert Selector.parse(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["app=-bad", "tier in ()", "tier in (a", "bad key=x", "a=b=c"])
def test_selector_parse_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        Selector.parse(text)


def test_label_selector_object() -> None:
    sel = from_label_selector({"matchLabels": {"app": "web"},
                               "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]},
                                                    {"key": "canary", "operator": "DoesNotExist"}]})
    assert sel.matches({"app": "web", "tier": "fe"})
    assert not sel.matches({"app": "web", "tier": "fe", "canary": "y"})
    with pytest.raises(SelectorError):
        from_label_selector({"matchExpressions": [{"key": "x", "operator": "Near"}]})


# Property: a selector written as text means exactly what its requirements say.

_names = st.from_regex(r"\A[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?\Z")
_labels = st.dictionaries(st.sampled_from(["app", "tier", "env", "x.io/team"]), _names, max_size=4)


@st.composite
def _requirement(draw: st.DrawFn) -> tuple[str, object]:
    key = draw(st.sampled_from(["app", "tier", "env", "x.io/team"]))
    op = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!"]))
    values = draw(st.lists(_names, min_size=1, max_size=3))

    def holds(labels: dict[str, str]) -> bool:
        match op:
            case "=":
                return labels.get(key) == values[0]
            case "!=":
                return labels.get(key) != values[0]
            case "in":
                return labels.get(key) in values
            case "notin":
                return labels.get(key) not in values
            case "exists":
                return key in labels
            case _:
                return key not in labels

    text = {"=": f"{key}={values[0]}", "!=": f"{key}!={values[0]}", "in": f"{key} in ({','.join(values)})",
            "notin": f"{key} notin ({','.join(values)})", "exists": key, "!": f"!{key}"}[op]
    return text, holds


@given(st.lists(_requirement(), max_size=4), _labels)
def test_selector_text_means_its_requirements(reqs: list[tuple[str, object]], labels: dict[str, str]) -> None:
    text = ",".join(t for t, _ in reqs)
    expected = all(h(labels) for _, h in reqs)  # type: ignore[operator]
    assert Selector.parse(text).matches(labels) is expected
