"""Error types and their wire translation (fluidcache.errors)."""
from __future__ import annotations

import pickle

import pytest

from fluidcache import errors
from fluidcache.errors import (
    AccessDenied, FluidError, InternalError, NotFound, ProtocolError, from_wire, to_wire,
)


def _all_classes(cls=FluidError) -> list[type[FluidError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        if sub.__module__ == errors.__name__:
            out += _all_classes(sub)
    return out


ALL = _all_classes()


def test_every_class_has_a_unique_code():
    codes = [c.code for c in ALL]
    assert len(codes) == len(set(codes))
    assert len(ALL) >= 12


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_wire_round_trip(cls):
    exc = cls("something went wrong: /a/b")
    back = from_wire(to_wire(exc))
    assert type(back) is cls
    assert back.message == exc.message == str(back)
    assert back.errno == cls.default_errno


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_pickle_keeps_type_and_message(cls):
    back = pickle.loads(pickle.dumps(cls("msg with ünïcode")))
    assert type(back) is cls
    assert str(back) == back.message == "msg with ünïcode"
    assert back.errno == cls.default_errno


def test_families_are_the_builtin_types_users_catch():
    assert isinstance(NotFound("x"), FileNotFoundError)
    assert isinstance(AccessDenied("x"), PermissionError)
    assert isinstance(errors.InvalidRequest("x"), ValueError)
    assert isinstance(errors.AlreadyExists("x"), FileExistsError)
    assert isinstance(errors.IsADirectory("x"), IsADirectoryError)
    assert isinstance(errors.Unavailable("x"), ConnectionError)
    assert isinstance(errors.ClusterNotRunning("x"), errors.Unavailable)
    assert all(issubclass(c, OSError) for c in ALL)


def test_builtin_exceptions_translate():
    assert type(from_wire(to_wire(FileNotFoundError("f")))) is NotFound
    assert type(from_wire(to_wire(PermissionError("p")))) is AccessDenied
    body = to_wire(ZeroDivisionError("boom"))
    assert body == {"code": InternalError.code, "message": "ZeroDivisionError: boom"}
    assert type(from_wire(body)) is InternalError


@pytest.mark.parametrize("body", [
    {"code": "no-such-code", "message": "m"},
    {"code": None, "message": "m"},
    {"code": ["not", "hashable"], "message": "m"},
    {"code": {"x": 1}, "message": "m"},
    {"message": "m"},
])
def test_unknown_or_malformed_code_is_generic(body):
    exc = from_wire(body)
    assert type(exc) is FluidError
    assert str(exc) == "m"


@pytest.mark.parametrize("body", [None, "oops", ["not_found", "m"], 3])
def test_non_dict_body_is_a_protocol_error(body):
    assert type(from_wire(body)) is ProtocolError


def test_missing_message_is_empty():
    assert str(from_wire({"code": "not_found"})) == ""
