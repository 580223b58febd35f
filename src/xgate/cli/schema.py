"""The JSON schema of config files, for editors: the config models, with every plugin's settings typed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from xgate.config.schema import Document, Listener, Route, Upstream
from xgate.plugins import PLUGINS

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:xgate:config:v1"


class _InputSchema(GenerateJsonSchema):
    """pydantic's generator, for what a user writes rather than what a model holds."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        # A before-validator that does not say what it accepts may rewrite its input (e.g. lower-case a header
        # name before the pattern checks it): the inner pattern would refuse what validation accepts.
        if schema.get("json_schema_input_schema"):
            return super().function_before_schema(schema)
        inner = dict(super().function_before_schema(schema))
        inner.pop("pattern", None)
        return inner

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        # pydantic states a key pattern as patternProperties, which lets keys that do not match through.
        result = super().dict_schema(schema)
        if "patternProperties" in result and "additionalProperties" not in result:
            result["additionalProperties"] = False
        return result


def config_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a config file: what `xgate validate` accepts, as to shapes and types
    (references, clashes and the plugins' own checks are validate's)."""
    plugins = _plugins_model()
    own_plugins: dict[str, Any] = {"plugins": (plugins, Field(default_factory=dict))}
    listener = create_model("Listener", __base__=Listener, __doc__=Listener.__doc__, **own_plugins)
    route = create_model("Route", __base__=Route, __doc__=Route.__doc__, **own_plugins)
    # Each section may be left out or left empty (`routes:` alone reads as null).
    sections: dict[str, Any] = {
        "plugins": (plugins | None, Field(default_factory=dict)),
        "listeners": (tuple[listener, ...] | None, ()),  # type: ignore[valid-type]
        "upstreams": (tuple[Upstream, ...] | None, ()),
        "routes": (tuple[route, ...] | None, ()),  # type: ignore[valid-type]
    }
    document = create_model("Document", __base__=Document, __doc__="An xgate config file (schema v1).", **sections)
    schema = document.model_json_schema(schema_generator=_InputSchema)
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, **schema}


def _plugins_model() -> type[BaseModel]:
    """Plugin name -> its settings, or true (on, with default settings), or false/null (off here)."""
    fields: dict[str, Any] = {
        name: (plugin.settings | bool | None, Field(default=None, description=(plugin.settings.__doc__ or "").strip()))
        for name, plugin in PLUGINS.items()
    }
    model: type[BaseModel] = create_model(
        "Plugins",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Plugin settings by plugin name; true switches a plugin on with its defaults, false or null off.",
        **fields,
    )
    return model
