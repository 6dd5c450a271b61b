"""A task's error as ``get`` raises it (``TaskError.as_instanceof_cause``): a cellray error the
task met (a lost argument) is also its ``__cause__``; a user's exception is not (issue 12,
point 2)."""

from __future__ import annotations

from runtime.exceptions import ObjectLostError, OwnerDiedError, TaskError
from runtime.protocol import codec


def _task_error(cause: BaseException) -> TaskError:
    return TaskError(f"total() raised {type(cause).__name__}", function_name="total",
                     task_id="ab" * 20, node_id="cd" * 20, pid=7, cause=cause,
                     cause_type_name=type(cause).__name__,
                     remote_traceback=f"{type(cause).__name__}: {cause}")


def _sent(err: TaskError) -> TaskError:
    """``err`` as the driver loads it from a task's return."""
    loaded = codec.deserialize(codec.serialize(err, error=True).to_bytes())
    assert isinstance(loaded, TaskError)
    return loaded


def test_a_lost_argument_is_the_cause_of_the_dependents_error() -> None:
    lost = ObjectLostError("Object 00ff is lost: node 1 died. It cannot be rebuilt: max_retries=0.",
                           object_id="00ff")
    err = _sent(_task_error(lost)).as_instanceof_cause()
    assert isinstance(err, ObjectLostError) and isinstance(err, TaskError)
    cause = err.cause
    assert type(cause) is ObjectLostError and cause.object_id == "00ff"
    assert err.__cause__ is cause and "max_retries=0" in str(err.__cause__)
    assert err.object_id == "00ff" and err.function_name == "total"


def test_an_owner_died_error_is_the_cause_too() -> None:
    died = OwnerDiedError("Object 00ff is lost: its owner exited.", object_id="00ff")
    err = _sent(_task_error(died)).as_instanceof_cause()
    assert isinstance(err, OwnerDiedError) and err.__cause__ is err.cause


def test_a_users_exception_is_not_chained_to_itself() -> None:
    err = _sent(_task_error(ValueError("bad input"))).as_instanceof_cause()
    assert isinstance(err, ValueError) and isinstance(err.cause, ValueError)
    assert err.__cause__ is None


class TwoArgError(Exception):
    def __init__(self, vault: str, code: int) -> None:
        super().__init__(f"vault {vault} is sealed")  # args: one item, __init__ takes two
        self.vault, self.code = vault, code


def test_a_cause_whose_init_takes_other_arguments_still_loads_of_its_class() -> None:
    err = _sent(_task_error(TwoArgError("north", 42)))
    assert type(err.cause) is TwoArgError and err.cause.args == ("vault north is sealed",)
    assert (err.cause.vault, err.cause.code) == ("north", 42)
    dual = err.as_instanceof_cause()
    assert isinstance(dual, TwoArgError) and dual.code == 42 and dual.__cause__ is None
    assert "could not be pickled" not in str(dual)
