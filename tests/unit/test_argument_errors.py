"""Validation errors name the argument a model must fix, also when the wrong part is an object's key."""

import msgspec
import pytest

from application.inventory import registry
from application.runner import _format_validation


def error_of(tool: str, arguments: dict) -> tuple[str, str | None]:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert(arguments, registry.get(tool).input)
    e = _format_validation(info.value)
    return e.message, e.field


def test_a_malformed_custom_field_key_names_custom_fields_and_the_allowed_form():
    message, field = error_of("crm_clients_create_lead", {"business_name": "ACME", "custom_fields": {"Not A Key": 1}})
    assert field == "custom_fields"
    assert message.startswith("Invalid `custom_fields`: a key is not allowed") and "[a-z]" in message


def test_a_wrong_value_names_its_path_and_an_unknown_argument_its_name():
    assert error_of("crm_clients_create_lead", {"business_name": 5})[1] == "business_name"
    message, field = error_of("crm_clients_create_lead", {"business_name": "ACME", "colour": "red"})
    assert field == "colour" and "unknown argument" in message
