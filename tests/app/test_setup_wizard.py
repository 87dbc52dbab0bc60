"""The first-run setup wizard: each page shows what the appliance has now, applies only what the admin changed,
keeps a refusal beside what was typed, and Finish records the set-up once — driven by a fake bridge with the
bridge's signals and the wizard's commands."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication, QWizard

from app.bridge import (
    AgentUpdate,
    EngineError,
    LicenceStatus,
    Policy,
    PortsStatus,
    PrerequisiteCheck,
    Prerequisites,
    SetupInfo,
    UpdatesStatus,
)
from app.views import setup_wizard
from app.views.licence_dialogs import ActivateLicenceDialog
from app.views.setup_wizard import (
    SetupWizard,
    listen_problem,
    port_problem,
    summary_text,
)
from tests.appliance import until

NOW = time.time()
DAY = 86400.0
CHECKS = (
    PrerequisiteCheck("ports", "Ports free", "ok", "Management port 443 and data port 9443 are free on 0.0.0.0."),
    PrerequisiteCheck("cache-space", "Cache space", "warning",
                      "180 GiB free on /var/lib/godwit; 10 servers of 500 GiB need 250 GiB (5 % of protected data).",
                      "Give the cache disk at least 70 GiB more, or protect fewer servers."),
    PrerequisiteCheck("clock", "Clock in sync", "ok", "Synchronised by systemd-timesyncd; offset 4 ms."),
    PrerequisiteCheck("secret-store", "Secret store", "ok", "Secrets are protected by the system keyring "
                      "(SecretService)."),
    PrerequisiteCheck("sizing", "CPU and memory", "ok", "8 CPUs and 32 GiB of memory: enough for up to 40 servers."),
    PrerequisiteCheck("target", "Target storage", "failed",
                      "Azure Blob Storage account godwitrepl did not answer (connection timed out after 10 s).",
                      "Check the account URL and that the appliance may reach *.blob.core.windows.net on port 443."),
)
PREREQUISITES = Prerequisites(CHECKS, NOW - 5)
SETUP = SetupInfo(appliance_id="a7f3c2e1", passphrase="river-kettle-amber-quartz-90", ca_fingerprint="SHA256:"
                  "5b:1e:9a:c4:77:02:d3:4f:8e:61:0a:b2:9c:3d:e5:f7:21:44:86:c9:0d:7e:a1:b3:5f:6c:98:e2:17:4a:c0:3b",
                  management_port=443, data_port=9443, secret_store="keyring (SecretService)",
                  host="appliance.acme.lan",
                  mobility_command="sudo godwit mobility run --appliance appliance.acme.lan:443 --passphrase-file "
                                   "/root/godwit.pass --ca-fingerprint 5b1e9ac47702d34f8e610ab29c3de5f72144 "
                                   "--state-dir /var/lib/godwit-mobility --disk /dev/sda",
                  setup_completed_at=None)
LICENCE = LicenceStatus(state="evaluation", days_left=180, expires_at=NOW + 180 * DAY, activated_at=None,
                        licensee=None, max_servers=None, evaluation_started_at=NOW)
PORTS = PortsStatus(management_port=443, data_port=9443, listen_address="0.0.0.0")
POLICY = Policy("default", rpo_threshold=900, retention=DAY, crash_consistent_every=300, app_consistent_every=4 * 3600)
UPDATES = UpdatesStatus(mode="auto", window="03:00", feed_url="https://updates.godwit.example/",
                        agents=(AgentUpdate("manager", "Replication manager", "1.4.0", None, None, "up-to-date"),))


class FakeBridge(QObject):
    """The bridge's signals and the wizard's commands; records calls and answers from ``answers`` (an exception
    there is raised). A command whose name is in ``gates`` waits for that event first."""

    setup_changed = Signal(object)
    licence_changed = Signal(object)
    ports_changed = Signal(object)
    updates_changed = Signal(object)
    connection_changed = Signal(str, str)

    def __init__(self) -> None:
        super().__init__()
        self.state = "attached"
        self.licence: LicenceStatus | None = LICENCE
        self.ports: PortsStatus | None = PORTS
        self.updates: UpdatesStatus | None = UPDATES
        self.calls: list[tuple[str, Any]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.answers: dict[str, Any] = {
            "prerequisites": PREREQUISITES, "policies": [Policy("gold", 300, 7 * DAY, 60, 3600), POLICY],
            "complete_setup": SETUP, "edit_policy": POLICY, "set_ports": PORTS, "set_update_mode": UPDATES,
        }

    async def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        await asyncio.sleep(0.01)
        if name in self.gates:
            await self.gates[name].wait()
        answer = self.answers[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def called(self, name: str) -> list[Any]:
        return [args for call, args in self.calls if call == name]

    async def prerequisites(self, check: str | None = None) -> Prerequisites:
        return await self._answer("prerequisites", check)  # type: ignore[no-any-return]

    async def complete_setup(self) -> SetupInfo:
        setup: SetupInfo = await self._answer("complete_setup")
        self.setup_changed.emit(setup)
        return setup

    async def policies(self) -> list[Policy]:
        return await self._answer("policies")  # type: ignore[no-any-return]

    async def edit_policy(self, name: str, **changes: str) -> Policy:
        return await self._answer("edit_policy", name, changes)  # type: ignore[no-any-return]

    async def set_ports(self, **changes: Any) -> PortsStatus:
        ports: PortsStatus = await self._answer("set_ports", changes)
        self.ports = ports
        self.ports_changed.emit(ports)
        return ports

    async def set_update_mode(self, mode: str | None, **kw: Any) -> UpdatesStatus:
        updates: UpdatesStatus = await self._answer("set_update_mode", mode, kw)
        self.updates = updates
        self.updates_changed.emit(updates)
        return updates

    async def activate_licence(self, text: str) -> LicenceStatus:
        return await self._answer("activate_licence", text)  # type: ignore[no-any-return]


@pytest.fixture
def console_app(qapp: QApplication) -> Any:
    """As the console runs (app/__main__.py): closing the wizard, the last window here, does not end the loop."""
    qapp.setQuitOnLastWindowClosed(False)
    yield qapp
    qapp.setQuitOnLastWindowClosed(True)


def _open(bridge: FakeBridge, setup: SetupInfo | None = SETUP) -> SetupWizard:
    wizard = SetupWizard(bridge, None, setup=setup)  # type: ignore[arg-type]
    wizard.show()
    return wizard


async def _checked(wizard: SetupWizard) -> None:
    await until(lambda: len(wizard.prerequisites_page.rows) == len(CHECKS) and not wizard.tasks,
                what="the prerequisites to show")


async def _to(wizard: SetupWizard, page_id: int) -> None:
    """Press Next until page ``page_id`` shows, letting each page apply (it moves on by itself once applied)."""
    while wizard.currentId() != page_id:
        before = wizard.currentId()
        wizard.next()
        await until(lambda b=before: wizard.currentId() != b or wizard.currentPage().message.isVisible(),  # type: ignore[attr-defined, misc]
                    what=f"page {before} to move on")
        assert wizard.currentId() != before, wizard.currentPage().message.text()  # type: ignore[attr-defined]
    await until(lambda: not wizard.tasks, what="the page to settle")


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_prerequisites_show_what_was_found_and_recheck_one_row(console_app: QApplication) -> None:
    """On opening, every check runs and shows its mark, title, finding and, when not ok, what to do; the summary
    says what will not work and that the admin may go on. Re-checking one row asks the engine for that key only
    and changes only that row."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    try:
        page = wizard.prerequisites_page
        await _checked(wizard)
        assert bridge.called("prerequisites") == [(None,)]
        target = page.rows["target"]
        assert (target.mark.text(), target.mark.property("level"), target.title.text()) == ("✖", "failed",
                                                                                          "Target storage")
        assert target.found.text() == CHECKS[5].found
        assert target.action.text() == "What to do: " + CHECKS[5].action and target.action.isVisibleTo(page)
        assert page.rows["cache-space"].mark.text() == "▲" and page.rows["ports"].mark.text() == "✔"
        assert not page.rows["ports"].action.isVisibleTo(page)
        summary = page.summary.text()
        assert summary.startswith("2 of 6 checks need attention. You can go on and fix them later; until then:")
        assert "✖ Target storage: replicas cannot be written to the target storage" in summary
        assert page.summary.property("level") == "failed"
        assert wizard.button(QWizard.WizardButton.NextButton).isEnabled()  # a failed check does not stop the admin

        # The target is reachable now: re-check that row alone; the engine's other (stale) answers are not shown.
        fixed = PrerequisiteCheck("target", "Target storage", "ok", "godwitrepl answered in 40 ms; writable.")
        stale = PrerequisiteCheck("cache-space", "Cache space", "failed", "changed behind the wizard's back")
        bridge.answers["prerequisites"] = Prerequisites((CHECKS[0], stale, *CHECKS[2:5], fixed), NOW)
        others = {k: r for k, r in page.rows.items() if k != "target"}
        bridge.gates["prerequisites"] = gate = asyncio.Event()
        target.button.click()
        await until(lambda: len(bridge.called("prerequisites")) == 2, what="the re-check")
        assert bridge.called("prerequisites")[-1] == ("target",)
        assert not target.button.isEnabled() and target.button.text() == "Checking…"
        assert not page.recheck_all_button.isEnabled() and page.busy_bar.isVisibleTo(page)
        target.button.click()  # a second click while it runs starts nothing
        gate.set()
        await until(lambda: not wizard.tasks, what="the re-check to end")
        assert len(bridge.called("prerequisites")) == 2
        assert page.rows["target"] is target and target.mark.text() == "✔" and not target.action.isVisibleTo(page)
        assert target.found.text() == "godwitrepl answered in 40 ms; writable."
        assert {k: r for k, r in page.rows.items() if k != "target"} == others
        assert page.rows["cache-space"].check == CHECKS[1]
        assert page.summary.text().startswith("1 of 6 checks needs attention.")
        assert target.button.isEnabled() and not page.busy_bar.isVisibleTo(page)

        # Re-check all shows everything the engine says.
        page.recheck_all_button.click()
        await until(lambda: not wizard.tasks and page.rows["cache-space"].check == stale, what="re-check all")
        assert bridge.called("prerequisites")[-1] == (None,)
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_prerequisites_the_engine_cannot_check_leave_the_way_open(console_app: QApplication) -> None:
    """An engine that cannot check (older, or busy) is said in one line; Next still goes on; a check key from a
    newer engine shows with its own title."""
    bridge = FakeBridge()
    bridge.answers["prerequisites"] = EngineError("The engine is too old to check the appliance's prerequisites.")
    wizard = _open(bridge)
    try:
        page = wizard.prerequisites_page
        await until(lambda: page.message.isVisible() and not wizard.tasks, what="the refusal")
        assert page.message.text() == ("The checks did not run: The engine is too old to check the appliance's "
                                       "prerequisites.")
        assert page.message.property("level") == "error" and not page.rows
        bridge.answers["prerequisites"] = Prerequisites(
            (PrerequisiteCheck("dns", "Name resolution", "warning", "No DNS server answered.", "Set a DNS server."),),
            NOW)
        page.recheck_all_button.click()
        await until(lambda: "dns" in page.rows and not wizard.tasks, what="the new check")
        assert not page.message.isVisible()
        assert "▲ Name resolution: Name resolution may not work." in page.summary.text()
        await _to(wizard, SetupWizard.LICENCE)
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_licence_page_shows_the_evaluation_and_opens_activation(console_app: QApplication) -> None:
    """The licence page shows the evaluation with its end date, follows the bridge's licence, and Activate now
    opens the console's Activate licence dialog; Later is just Next."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    try:
        await _checked(wizard)
        await _to(wizard, SetupWizard.LICENCE)
        page = wizard.licence_page
        end = time.strftime("%Y-%m-%d", time.localtime(LICENCE.expires_at))
        assert page.state.text() == f"Evaluation, 180 days left (ends {end})"
        assert "no new server can be added" in page.detail.text()
        page.activate_button.click()
        dialog = page.dialog
        assert isinstance(dialog, ActivateLicenceDialog) and dialog.isVisible()
        page.activate_button.click()  # a second click raises the same dialog
        assert page.dialog is dialog
        active = LicenceStatus(state="active", days_left=365, expires_at=NOW + 365 * DAY, activated_at=NOW,
                               licensee="Acme Ltd", max_servers=50, evaluation_started_at=NOW - DAY)
        dialog.activated.emit(active)
        dialog.reject()
        assert page.state.text().startswith("Active for Acme Ltd, up to 50 servers")
        assert page.message.text().startswith("The licence is active for Acme Ltd")
        bridge.licence_changed.emit(LICENCE)  # the bridge's word wins
        assert page.state.text().startswith("Evaluation")
        await _to(wizard, SetupWizard.PORTS)
        assert bridge.called("activate_licence") == []
    finally:
        wizard.reject()


@pytest.mark.parametrize(("management", "data", "listen", "said"), [
    ("abc", "9443", "0.0.0.0", "The management port must be a number between 1 and 65535, not 'abc'."),
    ("0", "9443", "0.0.0.0", "The management port must be a number between 1 and 65535, not 0."),
    ("443", "70000", "0.0.0.0", "The data port must be a number between 1 and 65535, not 70000."),
    ("443", "9" * 10_000, "0.0.0.0",
     "The data port must be a number between 1 and 65535, not '9999999999999999999999999999999999999999…'."),
    ("443", "", "0.0.0.0", "Type the data port: a number from 1 to 65535."),
    ("443", "9443", "999.1.1.1", "'999.1.1.1' is not an IP address: give an IPv4 address of this machine, or 0.0.0.0 "
                                 "for every address."),
    ("443", "9443", "::", ":: is an IPv6 address: the appliance listens on IPv4 (give an IPv4 address of this "
                          "machine, or 0.0.0.0 for every address)."),
    ("8443", "8443", "0.0.0.0", "The management and data ports must differ (both are 8443)."),
])
@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_ports_page_refuses_nonsense_before_sending(console_app: QApplication, management: str, data: str,
                                                          listen: str, said: str) -> None:
    """Nonsense in the port fields is refused in one line on the page, before anything reaches the engine."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    try:
        await _checked(wizard)
        await _to(wizard, SetupWizard.PORTS)
        page = wizard.ports_page
        page.management_edit.setText(management)
        page.data_edit.setText(data)
        page.listen_edit.setText(listen)
        wizard.next()
        await asyncio.sleep(0.05)
        assert wizard.currentId() == SetupWizard.PORTS
        assert page.message.text() == said and page.message.property("level") == "error"
        assert bridge.called("set_ports") == []
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_ports_page_applies_changes_and_keeps_a_refusal(console_app: QApplication) -> None:
    """The ports page shows the engine's ports; Next with nothing changed sends nothing; a change is sent alone,
    Next waits while it applies, an engine refusal stays on the page under what was typed, and once accepted the
    page shows the moving management port and goes on."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    try:
        await _checked(wizard)
        await _to(wizard, SetupWizard.PORTS)
        page = wizard.ports_page
        assert (page.management_edit.text(), page.data_edit.text(), page.listen_edit.text()) == ("443", "9443",
                                                                                                  "0.0.0.0")
        assert page.current.text() == "Now: management port 443, data port 9443, listening on 0.0.0.0."

        page.data_edit.setText(" 9500 ")
        bridge.answers["set_ports"] = EngineError("Port 9500 is in use by another program (pid 812). Pick another "
                                                  "data port or stop that program.")
        bridge.gates["set_ports"] = gate = asyncio.Event()
        wizard.next()
        await until(lambda: bool(bridge.called("set_ports")), what="the change to be sent")
        assert bridge.called("set_ports") == [({"data": 9500},)]
        next_button = wizard.button(QWizard.WizardButton.NextButton)
        assert page.applying and not next_button.isEnabled() and not page.data_edit.isEnabled()
        assert page.busy_label.text() == "Moving the ports…"
        wizard.next()  # a second press while it applies sends nothing more
        gate.set()
        await until(lambda: not page.applying, what="the refusal")
        assert wizard.currentId() == SetupWizard.PORTS and page.data_edit.text() == " 9500 "
        assert page.message.text().startswith("Port 9500 is in use by another program (pid 812).")
        assert next_button.isEnabled() and len(bridge.called("set_ports")) == 1

        moved = PortsStatus(management_port=8443, data_port=9443, listen_address="0.0.0.0", old_management_port=443,
                            old_port_closes_at=time.time() + 3600, servers_not_moved=("web-01",))
        bridge.answers["set_ports"] = moved
        page.data_edit.setText("9443")
        page.management_edit.setText("8443")
        wizard.next()
        await until(lambda: page.message.text() == "Applied. Press Next to go on.", what="the change to apply")
        assert bridge.called("set_ports")[-1] == ({"management": 8443},)
        assert page.current.text() == "Now: management port 8443, data port 9443, listening on 0.0.0.0."
        # The page stays while the management port moves: the admin reads when the old one closes.
        assert wizard.currentId() == SetupWizard.PORTS and page.moving.isVisibleTo(page)
        assert page.moving.text().startswith("The management port is moving from 443 to 8443.")
        assert "Not moved yet: web-01." in page.moving.text()
        wizard.next()
        assert wizard.currentId() == SetupWizard.REGISTRATION and len(bridge.called("set_ports")) == 2

        wizard.back()
        wizard.next()  # back and on again: nothing changed, nothing sent
        assert wizard.currentId() == SetupWizard.REGISTRATION and len(bridge.called("set_ports")) == 2
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_ports_the_engine_has_not_told_are_left_alone(console_app: QApplication) -> None:
    """An engine that has not reported its ports (older than admin 1.1) leaves the page with nothing to check or
    send: Next goes on and the page says where to set them later."""
    bridge = FakeBridge()
    bridge.ports = None
    wizard = _open(bridge)
    try:
        await _checked(wizard)
        await _to(wizard, SetupWizard.REGISTRATION)
        assert wizard.ports_page.current.text().startswith("The engine has not reported its ports yet")
        assert bridge.called("set_ports") == []
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_registration_page_shows_what_a_server_needs(console_app: QApplication) -> None:
    """The registration page shows the passphrase, fingerprint and the exact mobility command, each copyable, and
    follows a new set-up (a rotated passphrase)."""
    bridge = FakeBridge()
    wizard = _open(bridge, setup=None)
    try:
        page = wizard.registration_page
        assert page.waiting.isVisibleTo(page)
        bridge.setup_changed.emit(SETUP)
        assert page.passphrase.text() == SETUP.passphrase and page.fingerprint.text() == SETUP.ca_fingerprint
        assert page.command.toPlainText() == SETUP.mobility_command and not page.waiting.isVisibleTo(page)
        page.copy_command.click()
        assert QGuiApplication.clipboard().text() == SETUP.mobility_command
        assert page.copy_command.text() == "Copied"
        assert page.copied_timer.isActive() and page.copied_timer.interval() == setup_wizard.COPIED_MS == 2000
        page.copied_timer.timeout.emit()  # two seconds later
        assert page.copy_command.text() == "Copy command"
        page.passphrase.copy_button.click()
        assert QGuiApplication.clipboard().text() == SETUP.passphrase
        from dataclasses import replace

        bridge.setup_changed.emit(replace(SETUP, passphrase="new-passphrase-after-rotation"))
        assert page.passphrase.text() == "new-passphrase-after-rotation"
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_policy_page_sends_only_what_changed(console_app: QApplication) -> None:
    """The policy page shows the default policy as durations an admin types; Next with nothing changed (or the
    same duration written another way) sends nothing; nonsense is refused locally; a change sends only that
    setting; the engine's refusal shows under the fields and the page stays."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    try:
        await _checked(wizard)
        await _to(wizard, SetupWizard.POLICY)
        page = wizard.policy_page
        assert {k: e.text() for k, e in page.edits.items()} == {
            "rpo_threshold": "15m", "retention": "1d", "crash_consistent_every": "5m", "app_consistent_every": "4h"}
        assert not page.app_off.isChecked()

        page.edits["retention"].setText("24h")  # the same, written another way
        await _to(wizard, SetupWizard.UPDATES)
        assert bridge.called("edit_policy") == []
        wizard.back()

        # The Policies page's checks and words: the product's limits too, and no command-line flag.
        for field, text, said in (
                ("rpo_threshold", "soon", "RPO threshold 'soon' is not a duration such as 30s, 15m, 4h or 2d."),
                ("rpo_threshold", "x" * 10_000, "RPO threshold '" + "x" * 40 + "…' is not a duration such as 30s, "
                                                "15m, 4h or 2d."),
                ("rpo_threshold", "0m", "The RPO threshold must be at least 1 s."),
                ("rpo_threshold", "", "RPO threshold is empty: type a duration such as 15m."),
                ("retention", "16d", "The retention must be more than 0 and at most 15 days (15d)."),
                ("crash_consistent_every", "0s", "Crash-consistent points must be at least 1 s apart."),
                ("app_consistent_every", "30m", "App-consistent points must be between 1h and 12h apart, or off.")):
            before = page.edits[field].text()
            page.edits[field].setText(text)
            wizard.next()
            assert wizard.currentId() == SetupWizard.POLICY and page.message.text() == said
            assert "--" not in said
            page.edits[field].setText(before)
        assert bridge.called("edit_policy") == []

        page.edits["rpo_threshold"].setText("30m")
        page.app_off.setChecked(True)
        assert not page.edits["app_consistent_every"].isEnabled()
        bridge.answers["edit_policy"] = EngineError("The policy default is being changed elsewhere: try again.")
        wizard.next()
        await until(lambda: bool(bridge.called("edit_policy")) and not page.applying, what="the refusal")
        assert bridge.called("edit_policy") == [("default", {"rpo_threshold": "30m", "app_consistent_every": "off"})]
        assert wizard.currentId() == SetupWizard.POLICY
        assert page.message.text() == "The policy default is being changed elsewhere: try again."
        assert page.edits["rpo_threshold"].text() == "30m" and page.app_off.isChecked()
        assert not page.edits["app_consistent_every"].isEnabled()  # still off after the fields come back

        bridge.answers["edit_policy"] = Policy("default", 1800, DAY, 300, None)
        wizard.next()
        await until(lambda: wizard.currentId() == SetupWizard.UPDATES, what="the page to move on")
        assert bridge.called("edit_policy")[-1] == ("default", {"rpo_threshold": "30m", "app_consistent_every": "off"})
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_updates_page_and_finish_complete_once(console_app: QApplication) -> None:
    """The updates page shows the engine's mode; Finish sends a changed mode, then records the set-up once
    (pressing Finish again while it runs does nothing) and closes with ``finished_setup``."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    finished: list[SetupInfo] = []
    wizard.finished_setup.connect(finished.append)
    try:
        await _checked(wizard)
        await _to(wizard, SetupWizard.UPDATES)
        page = wizard.updates_page
        assert page.auto_radio.isChecked() and page.mode_now.text().startswith("Now: Updates install by themselves")
        page.manual_radio.click()
        bridge.answers["set_update_mode"] = manual = UpdatesStatus(mode="manual", window="03:00", feed_url=None,
                                                                   agents=UPDATES.agents)
        done = SetupInfo(**{**SETUP.__dict__, "setup_completed_at": NOW})
        bridge.answers["complete_setup"] = done
        bridge.gates["complete_setup"] = gate = asyncio.Event()
        finish = wizard.button(QWizard.WizardButton.FinishButton)
        assert finish.isVisible() and finish.isEnabled()
        finish.click()
        await until(lambda: bool(bridge.called("complete_setup")), what="complete_setup")
        assert not finish.isEnabled() and page.busy_label.text() == "Finishing the set-up…"
        finish.click()
        wizard.accept()  # even around the disabled button: nothing twice
        gate.set()
        await until(lambda: not wizard.isVisible(), what="the wizard to close")
        assert bridge.called("set_update_mode") == [("manual", {})]
        assert bridge.called("complete_setup") == [()]
        assert finished == [done] and wizard.result() == QWizard.DialogCode.Accepted
        assert page.updates == manual and not wizard.tasks
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_finish_refused_stays_open(console_app: QApplication) -> None:
    """When the engine refuses to record the set-up, the last page says why and stays; Finish tries again."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    try:
        await _checked(wizard)
        await _to(wizard, SetupWizard.UPDATES)
        bridge.answers["complete_setup"] = EngineError("The engine is not running: nothing replicates until it "
                                                       "starts again.")
        wizard.button(QWizard.WizardButton.FinishButton).click()
        await until(lambda: wizard.updates_page.message.isVisible(), what="the refusal")
        assert wizard.isVisible() and wizard.updates_page.completed is None
        assert bridge.called("set_update_mode") == []  # the mode did not change: not sent
        bridge.answers["complete_setup"] = SETUP
        wizard.button(QWizard.WizardButton.FinishButton).click()
        await until(lambda: not wizard.isVisible(), what="the wizard to close")
        assert len(bridge.called("complete_setup")) == 2
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_closing_half_way_cancels_and_calls_nothing_more(console_app: QApplication) -> None:
    """Closing while the ports apply cancels that task (and the prerequisites' re-check); nothing further is
    called — not the next page's policy load, not complete_setup — and the wizard stops following the bridge."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    await _checked(wizard)
    await _to(wizard, SetupWizard.PORTS)
    wizard.ports_page.management_edit.setText("8443")
    bridge.gates["set_ports"] = gate = asyncio.Event()
    wizard.next()
    await until(lambda: bool(bridge.called("set_ports")), what="the change to be sent")
    tasks = set(wizard.tasks)
    assert len(tasks) == 1
    wizard.reject()
    await until(lambda: all(t.done() for t in tasks), what="the tasks to end")
    assert all(t.cancelled() for t in tasks) and not wizard.tasks and not wizard.isVisible()
    gate.set()
    await asyncio.sleep(0.05)
    assert [c for c, _ in bridge.calls] == ["prerequisites", "set_ports"]
    assert wizard.start(asyncio.sleep(0)) is None  # closed: nothing new starts
    bridge.ports_changed.emit(PortsStatus(management_port=1, data_port=2, listen_address="10.0.0.1"))
    assert wizard.ports_page.current.text().startswith("Now: management port 443")
    assert repr(wizard).startswith(f"<SetupWizard page={SetupWizard.PORTS} tasks=0 closing=True")


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_rerun_shows_the_current_values(console_app: QApplication) -> None:
    """A wizard opened again (from the Setup page) shows what the appliance has now: the moved ports, the manual
    mode, the edited policy, the active licence — and Next through every page sends nothing but Finish."""
    bridge = FakeBridge()
    bridge.ports = PortsStatus(management_port=8443, data_port=9500, listen_address="10.0.0.5")
    bridge.updates = UpdatesStatus(mode="manual", window="03:00", feed_url=None, agents=UPDATES.agents)
    bridge.licence = LicenceStatus(state="active", days_left=300, expires_at=NOW + 300 * DAY, activated_at=NOW,
                                   licensee="Acme Ltd", max_servers=None, evaluation_started_at=NOW - DAY)
    bridge.answers["policies"] = [Policy("default", 1800, 7 * DAY, 120, None)]
    done = SetupInfo(**{**SETUP.__dict__, "setup_completed_at": NOW - DAY})
    wizard = _open(bridge, setup=done)
    try:
        await _checked(wizard)
        await _to(wizard, SetupWizard.UPDATES)
        assert wizard.licence_page.state.text().startswith("Active for Acme Ltd, unlimited servers")
        ports = wizard.ports_page
        assert (ports.management_edit.text(), ports.data_edit.text(), ports.listen_edit.text()) == ("8443", "9500",
                                                                                                     "10.0.0.5")
        policy = wizard.policy_page
        assert [e.text() for e in policy.edits.values()][:3] == ["30m", "7d", "2m"] and policy.app_off.isChecked()
        assert wizard.updates_page.manual_radio.isChecked()
        wizard.button(QWizard.WizardButton.FinishButton).click()
        await until(lambda: not wizard.isVisible(), what="the wizard to close")
        assert [c for c, _ in bridge.calls] == ["prerequisites", "policies", "complete_setup"]
    finally:
        wizard.reject()


@pytest.mark.asyncio
@pytest.mark.qt_loop
async def test_engine_down_is_said_on_every_page(console_app: QApplication) -> None:
    """While the console has no engine, each page says so once; when it is back, the note goes."""
    bridge = FakeBridge()
    wizard = _open(bridge)
    try:
        await _checked(wizard)
        bridge.connection_changed.emit("stopped", "The engine is not running: nothing replicates until it starts "
                                                  "again.")
        for page in (wizard.prerequisites_page, wizard.ports_page, wizard.updates_page):
            assert page.engine_note.text().startswith("The engine is not running")
            assert page.engine_note.isVisibleTo(page) or page is not wizard.currentPage()
        bridge.connection_changed.emit("attached", "Attached to the engine (pid 4242).")
        assert not wizard.prerequisites_page.engine_note.isVisibleTo(wizard.prerequisites_page)
    finally:
        wizard.reject()


def test_checks_of_typed_values() -> None:
    """The local checks accept what the engine takes and name what is wrong, repeating at most a short part."""
    assert port_problem(" 443 ", "management") is None and port_problem("65535", "data") is None
    assert port_problem("-1", "data") == "The data port must be a number between 1 and 65535, not '-1'."
    assert port_problem("１２３", "data") is not None  # digits of another script are not a port
    assert listen_problem("10.0.0.5") is None and listen_problem(" 0.0.0.0 ") is None
    assert listen_problem("appliance.acme.lan") == ("'appliance.acme.lan' is not an IP address: give an IPv4 address "
                                                    "of this machine, or 0.0.0.0 for every address.")
    assert len(listen_problem("x" * 100_000) or "") < 200
    text, level = summary_text(Prerequisites(CHECKS[:1], NOW))
    assert (text, level) == ("All 1 checks passed.", "ok")
    text, level = summary_text(Prerequisites(CHECKS[:2], NOW))
    assert level == "warning" and text.endswith("▲ Cache space: the cache can fill up, and replication then pauses "
                                                "until space is freed.")
