from __future__ import annotations

import pytest

from deepcourse.errors import UserError
from deepcourse.registry import MODELS, OPTIMIZERS, Registry, RegistryError, UnknownNameError


def test_register_decorator_get_build_and_contains() -> None:
    reg = Registry("widgets")

    @reg.register("square", aliases=("sq",), family="shapes")
    def square(side: int = 2) -> int:
        """Area of a square."""
        return side * side

    assert reg.get("square") is square
    assert reg.get("sq") is square
    assert reg.build("square", side=3) == 9
    assert "square" in reg and "sq" in reg and "circle" not in reg
    entry = reg.entry("square")
    assert entry.meta == {"family": "shapes"}
    assert entry.summary == "Area of a square."


def test_register_direct_call_returns_object() -> None:
    reg = Registry("widgets")
    obj = object.__new__(type("Thing", (), {}))
    assert reg.register("thing", obj) is obj
    assert reg.get("thing") is obj


def test_conflict_names_both_origins_and_override_replaces() -> None:
    reg = Registry("widgets")
    reg.register("a", lambda: 1)
    with pytest.raises(RegistryError) as info:
        reg.register("a", lambda: 2)
    message = str(info.value)
    assert "widget 'a'" in message and "already registered by" in message
    assert message.count("module test_registry") == 2  # both registering modules are named
    reg.register("a", lambda: 3, override=True)
    assert reg.build("a") == 3


def test_alias_conflicts_with_existing_name() -> None:
    reg = Registry("widgets")
    reg.register("first", lambda: 1)
    with pytest.raises(RegistryError):
        reg.register("second", lambda: 2, aliases=("first",))
    assert "second" not in reg


def test_unknown_name_suggests_close_matches() -> None:
    reg = Registry("models")
    for name in ("resnet18", "resnet34", "lenet5"):
        reg.register(name, lambda: None)
    with pytest.raises(UnknownNameError) as info:
        reg.get("resnet19")
    assert isinstance(info.value, UserError)
    assert "unknown model 'resnet19'" in str(info.value)
    assert "resnet18" in str(info.value)
    with pytest.raises(UnknownNameError) as info:
        reg.get("zzz")
    assert "Known: lenet5, resnet18, resnet34" in str(info.value)


def test_names_fnmatch_sorted() -> None:
    reg = Registry("models")
    for name in ("resnet50", "resnet18", "lenet5", "res_mnist"):
        reg.register(name, lambda: None)
    assert reg.names("res*") == ["res_mnist", "resnet18", "resnet50"]
    assert reg.names("resnet?8") == ["resnet18"]
    assert reg.names() == ["lenet5", "res_mnist", "resnet18", "resnet50"]


def test_core_components_are_registered_with_core_origin() -> None:
    assert {"sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"} <= set(OPTIMIZERS.names())
    assert OPTIMIZERS.entry("sgd").origin == "deepcourse"


def test_plugin_components_carry_plugin_origin(plugin_site) -> None:
    assert MODELS.entry("toy_mlp").origin == "toy"


def test_builder_with_a_signature_recipes_cannot_fill_is_refused() -> None:
    reg = Registry("models")
    with pytest.raises(RegistryError, match="positional-only"):
        reg.register("pos", lambda x, /: x)
    with pytest.raises(RegistryError, match=r"\*layers cannot be filled"):
        def stack(*layers: int) -> None: ...
        reg.register("stack", stack)
    assert reg.names() == []
