"""Static typing of actor handles: mypy --strict checks this module (``make typecheck``).

``assert_type`` lines fail mypy if an inferred type is wrong; the ``type: ignore[...]`` lines
inside ``if TYPE_CHECKING`` fail it if mypy stops rejecting a wrong call (strict mode reports
unused ignores). The tests also run, so the correct uses are checked at run time too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from typing_extensions import assert_type

import hybridexec as hx


class Account:
    def __init__(self, balance: int) -> None:
        self.balance = balance

    def deposit(self, amount: int, *, note: str = "") -> int:
        self.balance += amount
        return self.balance

    def owner(self) -> str:
        return "ada"

    def close(self) -> None:
        self.balance = 0


def statement(account: Account, prefix: str) -> list[str]:
    return [f"{prefix}{account.balance}"]


def test_ask_result_type_follows_the_method() -> None:
    ref = hx.spawn(Account, 10)
    try:
        assert_type(ref, hx.ActorRef[Account])
        deposit = ref.ask(Account.deposit, 5, note="salary")
        assert_type(deposit, hx.Future[int])
        owner = ref.ask(Account.owner)
        assert_type(owner, hx.Future[str])
        lines = ref.ask(statement, "balance: ")
        assert_type(lines, hx.Future[list[str]])
        assert_type(ref.tell(Account.deposit, 1), None)
        assert deposit.result(timeout=20) == 15
        assert owner.result(timeout=20) == "ada"
        assert lines.result(timeout=20) == ["balance: 15"]
    finally:
        ref.stop()


def test_executor_spawn_is_typed_the_same() -> None:
    with hx.Executor(max_processes=1) as ex:
        ref = ex.spawn(Account, 1, kind="thread", mailbox_size=4)
        assert_type(ref, hx.ActorRef[Account])
        assert ref.ask(Account.deposit, 1).result(timeout=20) == 2


if TYPE_CHECKING:  # wrong uses: mypy must reject each one

    def _wrong_uses(ref: hx.ActorRef[Account]) -> None:
        ref.ask(Account.deposit, "ten")  # type: ignore[call-overload]
        ref.ask(Account.deposit, 1, 2)  # type: ignore[call-overload]
        ref.ask(Account.deposit, 1, colour="red")  # type: ignore[arg-type, call-arg]
        ref.ask(Account.owner, 1)  # type: ignore[call-overload]
        ref.tell(statement)  # type: ignore[call-arg]
        ref.ask(str.upper)  # type: ignore[call-overload]
        total: hx.Future[str] = ref.ask(Account.deposit, 1)  # type: ignore[call-overload]
        hx.spawn(Account, 1, kind="fiber")  # type: ignore[arg-type]
        del total
