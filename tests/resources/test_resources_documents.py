"""Reading YAML and JSON files of objects, the way kubectl reads them."""

import pytest

from gossamer.errors import FieldError, InvalidResource
from gossamer.resources import parse_documents

SVC = "apiVersion: v1\nkind: Service\nmetadata: {name: %s}\n"


def test_documents_come_back_in_order_and_empty_ones_are_skipped() -> None:
    text = "---\n" + SVC % "a" + "---\n---\n# only a comment\n---\n" + SVC % "b" + "...\n"
    assert [d["metadata"]["name"] for d in parse_documents(text)] == ["a", "b"]


def test_empty_text_has_no_documents() -> None:
    assert parse_documents("") == []
    assert parse_documents("\n---\n") == []


def test_json_is_read_too() -> None:
    text = '{\n\t"apiVersion": "v1",\t"kind": "Service", "metadata": {"name": "a"}\n}'
    assert parse_documents(text) == [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}}
    ]


@pytest.mark.parametrize(
    "kind", ["List", "ServiceList", "HTTPRouteList"], ids=["List", "ServiceList", "HTTPRouteList"]
)
def test_lists_are_flattened_into_their_items(kind: str) -> None:
    text = (
        SVC % "first"
        + f"---\napiVersion: v1\nkind: {kind}\nmetadata: {{resourceVersion: '7'}}\nitems:\n"
        + "- {apiVersion: v1, kind: Service, metadata: {name: a}}\n"
        + "- {apiVersion: v1, kind: Service, metadata: {name: b}}\n"
    )
    assert [d["metadata"]["name"] for d in parse_documents(text)] == ["first", "a", "b"]


def test_timestamps_stay_strings_as_kubernetes_reads_them() -> None:
    text = SVC % "a" + "  creationTimestamp: 2024-05-01T10:00:00Z\n"
    [doc] = parse_documents(text.replace("metadata: {name: a}\n  ", "metadata:\n  name: a\n  "))
    assert doc["metadata"]["creationTimestamp"] == "2024-05-01T10:00:00Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SVC % "a" + "---\nkind: Service\nmetadata: {name: b\n",
            FieldError(
                "document 2",
                "invalid YAML at line 7, column 1: expected ',' or '}', but got '<stream end>'",
            ),
        ),
        (
            SVC % "a" + "---\n---\nkind: Service\n  bad: indent\n",
            FieldError(
                "document 3",
                "invalid YAML at line 7, column 6: mapping values are not allowed here",
            ),
        ),
        (
            "kind: Service\nkind: Workload\n",
            FieldError("document 1", "invalid YAML at line 2, column 1: duplicate key 'kind'"),
        ),
        (
            "a: !!python/object:os.system x\n",
            FieldError(
                "document 1",
                "invalid YAML at line 1, column 4: could not determine a constructor for the tag "
                "'tag:yaml.org,2002:python/object:os.system'",
            ),
        ),
    ],
    ids=["unclosed flow mapping", "bad indentation", "duplicate key", "unsafe tag"],
)  # fmt: skip
def test_syntax_errors_name_the_document_and_line(text: str, expected: FieldError) -> None:
    with pytest.raises(InvalidResource) as caught:
        parse_documents(text, source="app.yaml")
    assert caught.value.subject == "app.yaml"
    assert caught.value.errors == [expected]


def test_merge_keys_may_override_without_being_duplicates() -> None:
    text = "base: &b {kind: Service, apiVersion: v1}\nobj:\n  <<: *b\n  kind: Workload\n"
    [doc] = parse_documents(text)
    assert doc["obj"] == {"kind": "Workload", "apiVersion": "v1"}


def test_documents_that_are_not_mappings_are_all_reported() -> None:
    text = "- a\n- b\n---\n" + SVC % "ok" + "---\njust text\n---\n42\n"
    with pytest.raises(InvalidResource) as caught:
        parse_documents(text)
    assert caught.value.subject == "-"
    assert caught.value.errors == [
        FieldError("document 1", "must be a mapping with apiVersion and kind, not a list"),
        FieldError("document 3", "must be a mapping with apiVersion and kind, not a string"),
        FieldError("document 4", "must be a mapping with apiVersion and kind, not a number"),
    ]


def test_list_items_that_are_not_mappings_are_reported() -> None:
    text = "apiVersion: v1\nkind: List\nitems: [{kind: Service}, oops]\n"
    with pytest.raises(InvalidResource) as caught:
        parse_documents(text)
    assert caught.value.errors == [
        FieldError("document 1", "items[1] must be a mapping, not a string")
    ]
