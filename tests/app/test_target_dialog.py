"""The target storage in the console: the Setup page says where new copies go and which servers keep another
target; the dialog checks what was typed as the CLI does, lets the engine check the container, keeps a refusal
beside what was typed, and never shows the credential — driven by a fake bridge with the bridge's signals and the
target commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QApplication, QLabel, QWidget

from app.bridge import EngineError, EngineStatus, Event, LicenceStatus, SetupInfo, TargetStatus
from app.views.setup_page import SetupPage
from app.views.target_dialog import TargetDialog, read_credential_file
from engine.errors import BadInput, TargetUnwritable  # test data only: what the engine raises for a bad target
from tests.appliance import until

ACCOUNT = "https://godwitrepl.blob.core.windows.net"
LOCAL = TargetStatus(kind="local", location="this appliance's own disk (local)")
AZURE = TargetStatus(kind="azure", location=f"container replicas of {ACCOUNT}", account_url=ACCOUNT,
                     container="replicas", servers_elsewhere=("db-01", "web-01"))
#: What an admin pastes: a connection string whose key must never be shown.
SECRET_KEY = "Zm9vYmFyYmF6cXV4U2VjcmV0S2V5VGhhdE11c3ROZXZlclNob3c="
CONNECTION = f"DefaultEndpointsProtocol=https;AccountName=godwitrepl;AccountKey={SECRET_KEY};" \
             "EndpointSuffix=core.windows.net"
SAS = "sv=2022-11-02&ss=b&srt=co&sp=rwdlac&se=2026-01-01T00:00:00Z&sig=c2lnbmF0dXJlVGhhdE11c3ROZXZlclNob3c%3D"
SETUP = SetupInfo(appliance_id="a7f3c2e1", passphrase="river-kettle-amber-quartz-90", ca_fingerprint="SHA256:5b:1e",
                  management_port=443, data_port=9443, secret_store="keyring (SecretService)",
                  host="appliance.acme.lan", mobility_command="sudo godwit mobility run --appliance "
                                                              "appliance.acme.lan:443", setup_completed_at=1.0)
ENGINE = EngineStatus(pid=4242, version="1.6.0", started_at=1.0, data_dir="/var/lib/godwit")
REFUSAL = "The container replicas of https://godwitrepl.blob.core.windows.net refused the credential " \
          "(AuthenticationFailed): give a connection string or SAS token of that account."


class FakeBridge(QObject):
    """The bridge's signals the Setup page follows and the target commands; records calls and answers from
    ``answers`` (an exception there is raised). A command whose name is in ``gates`` waits for that event first;
    ``cancelled`` names the commands cancelled while they waited."""

    setup_changed = Signal(object)
    licence_changed = Signal(object)
    event_added = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.engine: EngineStatus | None = ENGINE
        self.licence: LicenceStatus | None = None
        self.calls: list[tuple[str, Any]] = []
        self.cancelled: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.answers: dict[str, Any] = {"target": LOCAL, "set_target": AZURE}

    async def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        try:
            await asyncio.sleep(0.01)
            if name in self.gates:
                await self.gates[name].wait()
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        answer = self.answers[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def called(self, name: str) -> list[Any]:
        return [args for call, args in self.calls if call == name]

    async def target(self) -> TargetStatus | None:
        return await self._answer("target")  # type: ignore[no-any-return]

    async def set_target(self, kind: str, **fields: str | None) -> TargetStatus:
        return await self._answer("set_target", kind, fields)  # type: ignore[no-any-return]


@pytest.fixture
def console_app(qapp: QApplication) -> Any:
    """As the console runs (app/__main__.py): closing the dialog, the last window here, does not end the loop."""
    qapp.setQuitOnLastWindowClosed(False)
    yield qapp
    qapp.setQuitOnLastWindowClosed(True)


async def _page(bridge: FakeBridge, target: TargetStatus | None = LOCAL) -> SetupPage:
    """The Setup page shown, with the set-up of an attach and the engine's answer ``target`` on it."""
    bridge.answers["target"] = target
    page = SetupPage(bridge)  # type: ignore[arg-type]
    page.resize(1000, 700)
    page.show()
    bridge.setup_changed.emit(SETUP)
    await until(lambda: page.target_location.text() != "…" and not page.tasks, what="the target to show")
    return page


async def _dialog(bridge: FakeBridge, target: TargetStatus | None = AZURE) -> tuple[SetupPage, TargetDialog]:
    """The Setup page over ``target`` and its target dialog, opened by Change…."""
    page = await _page(bridge, target)
    page.change_target_button.click()
    dialog = page.target_dialog
    assert dialog is not None and dialog.isVisible()
    return page, dialog


def _fill(dialog: TargetDialog, url: str = ACCOUNT, container: str = "replicas", credential: str = CONNECTION,
          *, sas: bool = False) -> None:
    dialog.azure_radio.setChecked(True)
    dialog.account_url.setText(url)
    dialog.container.setText(container)
    (dialog.sas_radio if sas else dialog.connection_radio).setChecked(True)
    dialog.credential.setText(credential)


def _texts_shown(*roots: QWidget) -> list[str]:
    """Every text a person can read off these windows without typing: labels, tooltips, titles, button texts."""
    texts: list[str] = []
    for root in roots:
        for widget in [root, *root.findChildren(QWidget)]:
            texts += [widget.toolTip(), widget.windowTitle(), widget.accessibleName(), widget.whatsThis()]
            if isinstance(widget, QLabel):
                texts.append(widget.text())
            if hasattr(widget, "text") and not hasattr(widget, "echoMode"):
                texts.append(str(widget.text()))
    return texts


# --- the Setup page --------------------------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_page_shows_the_target_and_the_servers_elsewhere(console_app: QApplication) -> None:
    """On attach the page asks for the target and says it in words; an Azure target names its container and
    account, and the servers that keep another target are named in one line (one server, two, and past five with
    the rest counted and all of them in the tooltip); a target-changed event asks again."""
    bridge = FakeBridge()
    page = await _page(bridge, LOCAL)
    try:
        assert bridge.called("target") == [()]
        assert page.target_location.text() == "This appliance's own disk (local)"
        assert not page.target_elsewhere.isVisibleTo(page) and page.change_target_button.isEnabled()

        bridge.answers["target"] = AZURE
        bridge.event_added.emit(Event(7, 1.0, "info", "target-changed", "Servers enabled from now on replicate …"))
        await until(lambda: page.target is AZURE, what="the new target")
        assert page.target_location.text() == f"Azure Blob Storage: container replicas of {ACCOUNT}"
        assert page.target_elsewhere.isVisibleTo(page)
        assert page.target_elsewhere.text() == \
            "db-01 and web-01 keep the target they began on until disabled and enabled again."
        assert page.target_elsewhere.toolTip() == ""

        page.show_target(TargetStatus("azure", "x", ACCOUNT, "replicas", ("web-01",)))
        assert page.target_elsewhere.text() == "web-01 keeps the target it began on until disabled and enabled again."
        many = tuple(f"srv-{n:02}" for n in range(1, 8))
        page.show_target(TargetStatus("azure", "x", ACCOUNT, "replicas", many))
        assert page.target_elsewhere.text() == "srv-01, srv-02, srv-03, srv-04, srv-05 and 2 more keep the target " \
                                               "they began on until disabled and enabled again."
        assert page.target_elsewhere.toolTip() == ", ".join(many)
        bridge.event_added.emit(Event(8, 1.0, "info", "server-enabled", "web-02 replicates."))
        await asyncio.sleep(0.05)
        assert len(bridge.called("target")) == 2  # other events ask nothing
    finally:
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_hidden_page_asks_when_shown_and_old_engines_are_said_so(console_app: QApplication) -> None:
    """A hidden page asks for the target only when it shows; an engine before admin 1.6 (the bridge answers None)
    is said so and Change… waits; an engine that fails to answer is one line, asked again at the next show."""
    bridge = FakeBridge()
    bridge.answers["target"] = None
    page = SetupPage(bridge)  # type: ignore[arg-type]
    try:
        bridge.setup_changed.emit(SETUP)
        await asyncio.sleep(0.05)
        assert bridge.called("target") == [] and page.target_stale
        page.show()
        await until(lambda: page.target_location.text() != "…" and not page.tasks, what="the answer")
        assert bridge.called("target") == [()]
        assert page.target_location.text() == "This engine does not report its target storage."
        assert not page.change_target_button.isEnabled()

        page.hide()
        bridge.answers["target"] = EngineError("The engine did not answer within 30 s; see its log in the data "
                                               "directory.")
        bridge.setup_changed.emit(SETUP)
        page.show()
        await until(lambda: len(bridge.called("target")) == 2 and not page.tasks, what="the second question")
        assert page.target_location.text() == "The engine did not say: The engine did not answer within 30 s; see " \
                                              "its log in the data directory."
        assert page.target_location.property("tone") == "bad" and page.target_stale
    finally:
        page.close()


# --- the dialog ------------------------------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_azure_fields_are_enabled_only_when_azure_is_chosen(console_app: QApplication) -> None:
    """The dialog opens on the current target (an Azure one fills account and container, never a credential);
    the Azure fields are enabled only while Azure is chosen, and the button says whether there is a check."""
    bridge = FakeBridge()
    page, dialog = await _dialog(bridge, AZURE)
    try:
        assert dialog.azure_radio.isChecked() and dialog.azure_box.isEnabled()
        assert (dialog.account_url.text(), dialog.container.text(), dialog.credential.text()) == \
            (ACCOUNT, "replicas", "")
        assert dialog.save_button.text() == "Check and save"
        dialog.local_radio.setChecked(True)
        assert not dialog.azure_box.isEnabled() and not dialog.credential.isEnabled()
        assert dialog.save_button.text() == "Save"
        dialog.azure_radio.setChecked(True)
        assert dialog.azure_box.isEnabled() and dialog.load_button.isEnabled()
        dialog.reject()

        page.show_target(LOCAL)
        page.change_target_button.click()
        local = page.target_dialog
        assert local is not None and local.local_radio.isChecked() and not local.azure_box.isEnabled()
        assert local.account_url.text() == "" and local.container.text() == ""
        local.reject()
    finally:
        page.close()


@pytest.mark.parametrize(("fields", "line"), [
    ({"url": ""}, "Give the storage account's URL, like https://ACCOUNT.blob.core.windows.net."),
    ({"url": "   "}, "Give the storage account's URL, like https://ACCOUNT.blob.core.windows.net."),
    ({"url": "x" * 5000}, "The account URL is longer than 2048 characters: give one like "
                          "https://ACCOUNT.blob.core.windows.net."),
    ({"container": ""}, "Give the container's name (it is created if it does not exist)."),
    ({"container": "r" * 300}, f"'{'r' * 40}…' is not a container name: 3 to 63 lowercase letters, digits and "
                               "single hyphens."),
    ({"credential": ""}, "Paste the connection string or SAS token, or load it from a file."),
    ({"credential": " \t "}, "Paste the connection string or SAS token, or load it from a file."),
    ({"credential": "A" * 9000}, "The credential is longer than 8 KiB: it is not a connection string or SAS token."),
    ({"credential": SAS}, "That is not a connection string (it has no AccountName= or BlobEndpoint=): paste the "
                          "account's connection string, or choose SAS token."),
    ({"credential": CONNECTION, "sas": True}, "That is a connection string, not a SAS token: choose Connection "
                                              "string, or paste the SAS token."),
    ({"credential": "sv=1\x00sig=2", "sas": True}, "The credential holds characters that are not text: paste it "
                                                   "again, or load it from a file."),
])
@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_what_is_missing_is_one_line_and_nothing_is_sent(console_app: QApplication, fields: dict[str, Any],
                                                               line: str) -> None:
    """An empty or absurd field, or a credential of the other kind than chosen, is one red line in the dialog;
    nothing reaches the engine and what was typed stays."""
    bridge = FakeBridge()
    page, dialog = await _dialog(bridge)
    try:
        _fill(dialog, **fields)
        typed = (dialog.account_url.text(), dialog.container.text(), dialog.credential.text())
        dialog.save_button.click()
        await asyncio.sleep(0.05)
        assert dialog.message.text() == line and dialog.message.isVisibleTo(dialog)
        assert dialog.message.property("level") == "error" and dialog.message.property("tone") == "bad"
        assert bridge.called("set_target") == [] and not dialog.tasks and dialog.isVisible()
        assert (dialog.account_url.text(), dialog.container.text(), dialog.credential.text()) == typed
        assert dialog.save_button.isEnabled()
    finally:
        dialog.reject()
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_local_when_local_already_sends_nothing(console_app: QApplication) -> None:
    """Choosing the appliance's disk when it is the target already says so and sends nothing."""
    bridge = FakeBridge()
    page, dialog = await _dialog(bridge, LOCAL)
    try:
        dialog.save_button.click()
        await asyncio.sleep(0.05)
        assert dialog.message.text() == "The target is this appliance's own disk already."
        assert bridge.called("set_target") == []
    finally:
        dialog.reject()
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_refusal_is_shown_in_the_dialog_and_the_fields_stay(console_app: QApplication) -> None:
    """While the engine checks, the dialog says so and every control but Cancel waits (a second click sends
    nothing more); the engine's refusal is one red line, the dialog stays open with what was typed, and the page
    keeps the target it had."""
    bridge = FakeBridge()
    page, dialog = await _dialog(bridge, LOCAL)
    try:
        _fill(dialog, container="replicas-2", credential=CONNECTION)
        bridge.answers["set_target"] = TargetUnwritable(REFUSAL)
        bridge.gates["set_target"] = gate = asyncio.Event()
        dialog.save_button.click()
        await until(lambda: bridge.called("set_target"), what="the check to start")
        assert dialog.message.text() == "Checking the container… This takes up to a minute when the account does " \
                                        "not answer."
        assert dialog.message.property("level") == "busy" and dialog.busy_bar.isVisibleTo(dialog)
        waiting = [dialog.save_button, dialog.local_radio, dialog.azure_radio, dialog.account_url, dialog.container,
                   dialog.credential, dialog.load_button, dialog.connection_radio]
        assert not any(w.isEnabled() for w in waiting)
        assert dialog.buttons.rejected and dialog.buttons.buttons()[0].isEnabled()  # Cancel
        dialog.on_save_button_clicked()  # a double click
        gate.set()
        await until(lambda: not dialog.tasks, what="the refusal")
        assert len(bridge.called("set_target")) == 1
        assert dialog.isVisible() and dialog.message.text() == REFUSAL
        assert dialog.message.property("level") == "error" and not dialog.busy_bar.isVisibleTo(dialog)
        assert all(w.isEnabled() for w in waiting)
        assert (dialog.account_url.text(), dialog.container.text(), dialog.credential.text()) == \
            (ACCOUNT, "replicas-2", CONNECTION)
        assert page.target is LOCAL and page.target_dialog is dialog

        bridge.answers["set_target"] = BadInput("'Replicas' is not a container name: 3 to 63 lowercase letters, "
                                                "digits and single hyphens, starting and ending with a letter or "
                                                "digit.")
        dialog.container.setText("Replicas")
        dialog.save_button.click()
        await until(lambda: not dialog.tasks and len(bridge.called("set_target")) == 2, what="the second refusal")
        assert dialog.message.text().startswith("'Replicas' is not a container name") and dialog.isVisible()
    finally:
        dialog.reject()
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_success_sends_exactly_the_fields_and_closes(console_app: QApplication) -> None:
    """Check and save sends the kind, the trimmed account URL and container and the stripped credential, nothing
    else; the engine's answer shows on the Setup page at once and the dialog closes."""
    bridge = FakeBridge()
    page, dialog = await _dialog(bridge, LOCAL)
    saved: list[TargetStatus] = []
    dialog.saved.connect(saved.append)
    _fill(dialog, url=f"  {ACCOUNT} ", container=" replicas ", credential=f"\n {SAS} \t", sas=True)
    dialog.save_button.click()
    await until(lambda: page.target_dialog is None, what="the dialog to close")
    try:
        assert bridge.called("set_target") == [("azure", {"account_url": ACCOUNT, "container": "replicas",
                                                          "credential": SAS})]
        assert saved == [AZURE] and page.target is AZURE
        assert page.target_location.text() == f"Azure Blob Storage: container replicas of {ACCOUNT}"
        assert page.target_elsewhere.text().startswith("db-01 and web-01 keep")
        assert dialog.tasks.closed and not dialog.tasks
    finally:
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_local_sends_the_kind_only(console_app: QApplication) -> None:
    """Choosing the appliance's own disk sends kind "local" and no account, container or credential, whatever the
    Azure fields still hold."""
    bridge = FakeBridge()
    bridge.answers["set_target"] = LOCAL
    page, dialog = await _dialog(bridge, AZURE)
    dialog.credential.setText(CONNECTION)
    dialog.local_radio.setChecked(True)
    dialog.save_button.click()
    await until(lambda: page.target_dialog is None, what="the dialog to close")
    try:
        assert bridge.called("set_target") == [("local", {"account_url": None, "container": None,
                                                          "credential": None})]
        assert page.target is LOCAL and page.target_location.text() == "This appliance's own disk (local)"
        assert not page.target_elsewhere.isVisibleTo(page)
    finally:
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_closing_mid_check_cancels_and_changes_nothing(console_app: QApplication) -> None:
    """Cancel while the engine checks stops waiting: the command is cancelled, nothing is saved, the page keeps
    its target, and Change… opens a fresh dialog."""
    bridge = FakeBridge()
    page, dialog = await _dialog(bridge, LOCAL)
    saved: list[TargetStatus] = []
    dialog.saved.connect(saved.append)
    try:
        _fill(dialog)
        bridge.gates["set_target"] = asyncio.Event()
        dialog.save_button.click()
        await until(lambda: bridge.called("set_target"), what="the check to start")
        assert dialog.checking and "checking=True" in repr(dialog)
        dialog.reject()
        await until(lambda: bridge.cancelled == ["set_target"], what="the check to be cancelled")
        await until(lambda: not dialog.tasks, what="the task to end")
        assert saved == [] and page.target is LOCAL and page.target_dialog is None
        assert page.target_location.text() == "This appliance's own disk (local)"
        page.change_target_button.click()
        assert page.target_dialog is not None and page.target_dialog is not dialog
        page.target_dialog.reject()
    finally:
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_credential_never_shows(console_app: QApplication, tmp_path: Path) -> None:
    """The credential, typed or loaded from a file, is in a password field only: no label, tooltip, title or
    button of the dialog or the page holds it or a piece of it — not while checking, not in a refusal."""
    bridge = FakeBridge()
    page, dialog = await _dialog(bridge, LOCAL)
    try:
        _fill(dialog, credential=CONNECTION)
        assert dialog.credential.echoMode() == dialog.credential.EchoMode.Password
        bridge.answers["set_target"] = TargetUnwritable(REFUSAL)
        bridge.gates["set_target"] = gate = asyncio.Event()
        dialog.save_button.click()
        await until(lambda: dialog.checking, what="the check")
        checking = _texts_shown(dialog, page)
        gate.set()
        await until(lambda: not dialog.tasks, what="the refusal")
        cred_file = tmp_path / "azure.sas"
        cred_file.write_text(SAS + "\n")
        assert dialog.load_credential_file(cred_file)
        for text in checking + _texts_shown(dialog, page):
            assert SECRET_KEY[:12] not in text and "sig=" not in text, text
        assert dialog.message.text() == f"Loaded the credential from {cred_file}."
    finally:
        dialog.reject()
        page.close()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_credential_file_must_be_small_one_line_text(console_app: QApplication, tmp_path: Path) -> None:
    """Load from file takes a small text file (its kind chosen from what it holds); a file over 8 KiB, binary,
    empty, of several lines, a folder or missing is one red line and the field keeps what it held."""
    bridge = FakeBridge()
    page, dialog = await _dialog(bridge, AZURE)
    try:
        good = tmp_path / "azure.conn"
        good.write_text(f"  {CONNECTION}\n")
        dialog.sas_radio.setChecked(True)
        assert dialog.load_credential_file(good)
        assert dialog.credential.text() == CONNECTION and dialog.connection_radio.isChecked()
        assert dialog.message.property("level") == "ok"
        cases = {"big": ("x" * 8193, "is larger than 8 KiB: it is not a connection string or SAS token."),
                 "binary": (b"\xff\xfe\x00\x01", "is not text: it is not a connection string or SAS token."),
                 "nul": (b"sv=1\x00", "is not text: it is not a connection string or SAS token."),
                 "empty": (" \n", "is empty: it must hold the connection string or SAS token."),
                 "lines": (f"{SAS}\n{SAS}\n", "holds more than one line: it must hold only the connection string or "
                                              "SAS token.")}
        for name, (content, line) in cases.items():
            path = tmp_path / name
            path.write_bytes(content.encode() if isinstance(content, str) else content)
            assert not dialog.load_credential_file(path)
            assert dialog.message.text() == f"{path} {line}", name
            assert dialog.message.property("level") == "error" and dialog.credential.text() == CONNECTION
        assert not dialog.load_credential_file(tmp_path)
        assert dialog.message.text().endswith("is not a file: choose the file that holds the connection string or "
                                              "SAS token.")
        assert not dialog.load_credential_file(tmp_path / "missing")
        assert read_credential_file(good) == CONNECTION
    finally:
        dialog.reject()
        page.close()
