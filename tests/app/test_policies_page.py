"""The Policies page: the policies with the servers that use each, New / Edit checked here before the engine, the
engine's refusal kept in the dialog, and Delete refused while a policy is in use — driven by a fake bridge with the
bridge's signals and commands."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QApplication

from app.bridge import EngineError, Health, Policy, ServerState, ServerStatus
from app.views import policies_page
from app.views.policies_page import USED_BY, PoliciesPage, PolicyDialog, check_policy_input
from tests.appliance import until

NOW = 1_700_000_000.0
POLICIES = [Policy("default", 900, 86400, 300, 4 * 3600), Policy("gold", 300, 7 * 86400, 60, 3600),
            Policy("archive", 4 * 3600, 15 * 86400, 3600, None)]


def server(name: str, policy: str | None, *, replicating: bool = True) -> ServerStatus:
    return ServerStatus(server_id=f"id-{name}", name=name, hostname=name, os="Ubuntu 22.04", agent_version="0.1.0",
                        state=ServerState.PROTECTED if replicating else ServerState.REGISTERED, health=Health.HEALTHY,
                        health_cause=None, health_detail=None, registered_at=NOW, last_heartbeat=NOW, address=None,
                        replicating=replicating, policy=policy)


SERVERS = [server("web-01", "gold"), server("web-02", "gold"), server("db-01", "default"),
           server("old-01", "archive", replicating=False)]


class FakeBridge(QObject):
    """The bridge's server signals and its policy commands; records calls, answers from ``answers`` (an exception
    is raised); while ``gate`` is unset a command waits for it."""

    connection_changed = Signal(str, str)
    servers_reset = Signal(list)
    server_updated = Signal(object)
    server_removed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.state = "attached"
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {"policies": list(POLICIES)}
        self.gate: asyncio.Event | None = None

    async def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        await asyncio.sleep(0.01)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.get(name)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def policies(self) -> list[Policy]:
        return await self._answer("policies")  # type: ignore[no-any-return]

    async def create_policy(self, name: str, **settings: str) -> Policy:
        return await self._answer("create_policy", name, settings)  # type: ignore[no-any-return]

    async def edit_policy(self, name: str, **changes: str) -> Policy:
        return await self._answer("edit_policy", name, changes)  # type: ignore[no-any-return]

    async def delete_policy(self, name: str) -> None:
        await self._answer("delete_policy", name)

    def commands(self) -> list[tuple[str, Any]]:
        return [c for c in self.calls if c[0] != "policies"]


async def _page(bridge: FakeBridge) -> PoliciesPage:
    page = PoliciesPage(bridge)  # type: ignore[arg-type]
    bridge.servers_reset.emit(SERVERS)
    page.resize(1100, 600)
    page.show()
    await until(lambda: len(page.policies) == len(POLICIES) and not page.tasks, what="the policies")
    page._show_users()
    return page


def _row(page: PoliciesPage, name: str) -> int:
    return next(row for row, p in enumerate(page.policies) if p.name == name)


def _cells(page: PoliciesPage, row: int) -> list[str]:
    return [page.table.item(row, c).text() for c in range(page.table.columnCount())]


def _fill(dialog: PolicyDialog, **texts: str) -> None:
    for field, text in texts.items():
        (dialog.name if field == "name" else dialog.fields[field]).setText(text)


GOOD = dict(rpo_threshold="10m", retention="3d", crash_consistent_every="2m", app_consistent_every="off")


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_lists_policies_with_the_servers_using_each(qapp: QApplication) -> None:
    """Each policy shows its durations as an admin types them and the servers that replicate with it (not those
    that only registered); default comes first; the list is asked for each time the page is shown."""
    bridge = FakeBridge()
    page = await _page(bridge)
    assert [p.name for p in page.policies] == ["default", "archive", "gold"]
    assert _cells(page, _row(page, "gold")) == ["gold", "5m", "7d", "1m", "1h", "web-01, web-02"]
    assert _cells(page, _row(page, "default")) == ["default", "15m", "1d", "5m", "4h", "db-01"]
    assert _cells(page, _row(page, "archive")) == ["archive", "4h", "15d", "1h", "off", "no server"]
    bridge.server_updated.emit(server("web-02", "archive"))
    await until(lambda: page.table.item(_row(page, "archive"), USED_BY).text() == "web-02", what="the move")
    assert page.table.item(_row(page, "gold"), USED_BY).text() == "web-01"
    asked = len(bridge.calls)
    page.hide()
    page.show()
    await until(lambda: len(bridge.calls) == asked + 1 and not page.tasks, what="the refresh on show")
    page.close()


def test_nonsense_is_refused_before_the_engine() -> None:
    """Names and durations that the engine would refuse are refused here with one sentence naming the field; a
    pasted page is cut in the message."""
    def refusal(name: str | None = "silver", **typed: str) -> str:
        with pytest.raises(ValueError) as caught:
            check_policy_input(name, {**GOOD, **typed}, taken={"gold"})
        return str(caught.value)

    assert refusal("") == "Give the policy a name: letters, digits, '-', '_' or '.', at most 63."
    assert refusal("bad name!").startswith("The name 'bad name!' does not fit")
    assert refusal("-x").startswith("The name '-x' does not fit")
    assert refusal("a" * 64).startswith("The name 'aaaa")
    assert refusal("gold") == "A policy named 'gold' exists already: choose another name, or edit that one."
    assert refusal(rpo_threshold="soon") == "RPO threshold 'soon' is not a duration such as 30s, 15m, 4h or 2d."
    assert refusal(rpo_threshold="") == "RPO threshold is empty: type a duration such as 15m."
    assert refusal(rpo_threshold="0s") == "The RPO threshold must be at least 1 s."
    assert refusal(retention="16d") == "The retention must be more than 0 and at most 15 days (15d)."
    assert refusal(retention="-1d").startswith("Retention '-1d' is not a duration")
    assert refusal(crash_consistent_every="0") == "Crash-consistent points must be at least 1 s apart."
    assert refusal(app_consistent_every="30m") == "App-consistent points must be between 1h and 12h apart, or off."
    assert refusal(app_consistent_every="never") == ("App-consistent point every 'never' is not a duration such "
                                                     "as 30s, 15m, 4h or 2d, or off.")
    huge = refusal(retention="9" * 100_000)
    assert len(huge) < 200
    assert check_policy_input("silver", GOOD) == {"rpo_threshold": 600, "retention": 3 * 86400,
                                                  "crash_consistent_every": 120, "app_consistent_every": None}
    assert check_policy_input(None, {**GOOD, "app_consistent_every": " 12h "})["app_consistent_every"] == 12 * 3600


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_new_policy_refused_locally_then_by_the_engine_then_created(qapp: QApplication) -> None:
    """Nonsense in the New dialog is refused in it without asking the engine; the engine's refusal shows in the
    dialog, which stays open with what was typed; an accepted policy closes it and the list refreshes."""
    bridge = FakeBridge()
    page = await _page(bridge)
    page.new_button.click()
    dialog = page.editor
    assert dialog is not None and dialog.isVisible() and dialog.windowTitle() == "New replication policy"
    _fill(dialog, name="silver", rpo_threshold="a while", retention="3d", crash_consistent_every="2m",
          app_consistent_every="off")
    dialog.save_button.click()
    assert dialog.error.text() == "RPO threshold 'a while' is not a duration such as 30s, 15m, 4h or 2d."
    assert bridge.commands() == []

    _fill(dialog, rpo_threshold="10m")
    bridge.answers["create_policy"] = EngineError("The appliance holds at most 50 policies; delete one first.")
    dialog.save_button.click()
    dialog.save_button.click()  # a double-click: one command
    await until(lambda: dialog.task is None and dialog.error.isVisible(), what="the refusal")
    assert dialog.error.text() == "The appliance holds at most 50 policies; delete one first."
    assert dialog.isVisible() and dialog.name.text() == "silver" and dialog.fields["rpo_threshold"].text() == "10m"
    assert bridge.commands() == [("create_policy", ("silver", GOOD))]

    silver = Policy("silver", 600, 3 * 86400, 120, None)
    bridge.answers["create_policy"] = silver
    bridge.answers["policies"] = [*POLICIES, silver]
    dialog.save_button.click()
    await until(lambda: not dialog.isVisible() and len(page.policies) == 4 and not page.tasks, what="the creation")
    assert page.message.text() == "Policy silver created."
    assert _cells(page, _row(page, "silver")) == ["silver", "10m", "3d", "2m", "off", "no server"]
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_edit_sends_only_what_changed(qapp: QApplication) -> None:
    """Edit (the button or a double-click) shows the policy's settings; Save sends only the settings whose value
    changed ("60m" for a 1h setting is no change); nothing changed asks nothing."""
    bridge = FakeBridge()
    page = await _page(bridge)
    page.table.selectRow(_row(page, "gold"))
    page.table.doubleClicked.emit(page.table.model().index(_row(page, "gold"), 0))
    dialog = page.editor
    assert dialog is not None and dialog.windowTitle() == "Edit policy gold"
    assert dialog.typed() == {"rpo_threshold": "5m", "retention": "7d", "crash_consistent_every": "1m",
                              "app_consistent_every": "1h"}
    dialog.save_button.click()
    await until(lambda: not dialog.isVisible(), what="the dialog to close")
    assert bridge.commands() == []

    dialog = page.open_editor(page.policies[_row(page, "gold")])
    _fill(dialog, retention="10d", app_consistent_every="60m", rpo_threshold=" 5m ")
    bridge.answers["edit_policy"] = Policy("gold", 300, 10 * 86400, 60, 3600)
    dialog.save_button.click()
    await until(lambda: not dialog.isVisible() and not page.tasks, what="the edit")
    assert bridge.commands() == [("edit_policy", ("gold", {"retention": "10d"}))]
    assert page.message.text() == "Policy gold changed; its servers follow from their next cycle."
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_delete_in_use_is_refused_naming_the_servers(qapp: QApplication,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete waits on a policy in use (its tooltip names the servers) and on default; if the engine refuses anyway
    (a server moved to it meanwhile), its sentence is one red line and the policy stays."""
    asked: list[str] = []

    async def confirm(_parent: Any, title: str, _text: str, _action: str) -> bool:
        asked.append(title)
        return True

    monkeypatch.setattr(policies_page, "confirm", confirm)
    bridge = FakeBridge()
    page = await _page(bridge)
    page.table.selectRow(_row(page, "gold"))
    assert not page.delete_button.isEnabled()
    assert page.delete_button.toolTip() == ("gold is used by web-01, web-02: move them to another policy first (in "
                                            "their details).")
    page.table.selectRow(_row(page, "default"))
    assert not page.delete_button.isEnabled() and "cannot be deleted" in page.delete_button.toolTip()
    page.delete_action.trigger()  # the Delete key: nothing
    assert asked == [] and bridge.commands() == []

    page.table.selectRow(_row(page, "archive"))  # old-01 registered with it but does not replicate
    assert page.delete_button.isEnabled()
    refusal = "Policy 'archive' is used by web-09: move them to another policy first (godwit vm set NAME --policy P)."
    bridge.answers["delete_policy"] = EngineError(refusal)
    page.delete_button.click()
    await until(lambda: page.message.isVisible() and not page.tasks, what="the refusal")
    assert page.message.text() == refusal and page.message.property("level") == "error"
    assert [p.name for p in page.policies] == ["default", "archive", "gold"]
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_delete_confirmed_once_even_on_a_double_click(qapp: QApplication,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Delete asks first (no means nothing is sent); yes calls delete_policy once however often it was clicked, and
    the list refreshes without the policy."""
    answers = [False]
    asked: list[str] = []

    async def confirm(_parent: Any, title: str, _text: str, _action: str) -> bool:
        asked.append(title)
        await asyncio.sleep(0.01)
        return answers[0]

    monkeypatch.setattr(policies_page, "confirm", confirm)
    bridge = FakeBridge()
    page = await _page(bridge)
    page.table.selectRow(_row(page, "archive"))
    page.delete_button.click()
    await until(lambda: not page.tasks, what="the question")
    assert asked == ["Delete policy archive?"] and bridge.commands() == []

    answers[0] = True
    bridge.answers["policies"] = POLICIES[:2]
    page.delete_button.click()
    page.delete_button.click()
    page.delete_action.trigger()
    await until(lambda: not page.tasks and len(page.policies) == 2, what="the deletion")
    assert bridge.commands() == [("delete_policy", ("archive",))]
    assert page.message.text() == "Policy archive deleted."
    assert page.table.rowCount() == 2 and page.delete_button.isEnabled() is False  # default or gold: in use
    assert page.table.item(0, 0).data(Qt.ItemDataRole.UserRole) == "default"
    page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_closing_the_dialog_while_the_engine_answers(qapp: QApplication) -> None:
    """Cancel while the engine is asked stops waiting: the dialog closes, says nothing saved, and the page stays
    usable (New opens a fresh dialog); the context menu offers the page's three actions."""
    bridge = FakeBridge()
    page = await _page(bridge)
    dialog = page.open_editor(None)
    _fill(dialog, name="silver", **GOOD)
    bridge.gate = asyncio.Event()
    dialog.save_button.click()
    await until(lambda: bridge.commands() != [], what="the create to be asked")
    assert not dialog.save_button.isEnabled() and dialog.save_button.text() == "Creating…"
    assert dialog.name.isReadOnly()
    dialog.buttons.button(dialog.buttons.StandardButton.Cancel).click()
    await until(lambda: dialog.task is None, what="the create to stop")
    assert not dialog.isVisible() and not page.message.isVisible()
    bridge.gate = None
    page.new_button.click()
    assert page.editor is not dialog and page.editor is not None and page.editor.name.text() == ""
    page.editor.close()
    assert [a.text() for a in page.row_menu().actions()] == ["New…", "Edit…", "Delete…"]
    page.close()
