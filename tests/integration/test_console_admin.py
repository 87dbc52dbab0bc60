"""The console as an admin uses it, against a real engine and real mobility services: a source that stops (its RPO
ages live, amber past the policy's threshold, and recovers), a server turning critical (a desktop alert), and
policies made, changed and refused deletion from the Policies page."""

from __future__ import annotations

import os
import signal
import time

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication

from app.bridge import EngineBridge, EngineError, Health
from app.theme import colour
from app.views.main_window import MainWindow
from app.views.tray import Alert
from tests.appliance import Appliance, replicating, until

MiB = 1024 * 1024

pytestmark = [pytest.mark.asyncio, pytest.mark.qt_loop]


def _console(appliance: Appliance) -> tuple[EngineBridge, MainWindow]:
    bridge = EngineBridge(appliance.data_dir, start_engine=False)
    window = MainWindow(bridge, tray_available=lambda: False, offer_setup=False)
    window.show()
    bridge.start()
    return bridge, window


async def test_rpo_ages_while_a_source_is_stopped_and_a_critical_server_is_a_desktop_alert(
        appliance: Appliance, qapp: QApplication) -> None:
    """SIGSTOP of the mobility service: the RPO shown keeps growing with nothing arriving and turns amber past the
    policy's 4 s threshold; SIGCONT brings it back. The source disk changing size pauses the server (critical): the
    tray hears of it once, naming the server; the disk's size restored, it is healthy again."""
    mob, disk = replicating(appliance, "rpo-01", 4 * MiB, seed=21, **{"--rpo-threshold": "4s"})
    bridge, window = _console(appliance)
    alerts: list[Alert] = []
    window.alerts.alert.connect(alerts.append)
    model = window.servers_page.model
    try:
        await until(lambda: model.rowCount() == 1 and model.server(0).newest_data_at is not None,
                    what="rpo-01 listed with its newest data")

        def rpo_text() -> str:
            return str(model.data(model.index(0, model.RPO)))

        def amber() -> bool:
            brush = model.data(model.index(0, model.RPO), Qt.ItemDataRole.ForegroundRole)
            return brush is not None and brush.name() == colour("warn")

        await until(lambda: not amber(), what="the RPO under its threshold while the source runs")
        assert mob.proc is not None
        os.kill(mob.proc.pid, signal.SIGSTOP)
        try:
            stopped_at = model.server(0).newest_data_at
            seen = [rpo_text()]
            await until(lambda: amber(), timeout=20, what="the RPO to age past 4 s with the source stopped")
            seen.append(rpo_text())
            newest = model.server(0).newest_data_at
            # Nothing new arrived (a batch in flight at the stop may have landed): the console aged it itself.
            assert newest is not None and stopped_at is not None and newest - stopped_at < 2
            assert seen[0] != seen[-1], seen
            assert (model.server(0).rpo_at(time.time()) or 0) > 4
        finally:
            os.kill(mob.proc.pid, signal.SIGCONT)
        await until(lambda: not amber() and (model.server(0).rpo_at(time.time()) or 99) < 4, timeout=30,
                    what="the RPO to recover once the source runs again")

        size = disk.stat().st_size
        with open(disk, "r+b") as f:
            f.truncate(size + MiB)  # the source disk grew: replication of it pauses, the server is critical
        await until(lambda: model.server(0).health == Health.CRITICAL, timeout=30, what="rpo-01 to turn critical")
        await until(lambda: alerts, what="the desktop alert")
        assert len(alerts) == 1 and alerts[0].critical and "rpo-01" in alerts[0].title, alerts
        assert alerts[0].page == "servers"
        with open(disk, "r+b") as f:
            f.truncate(size)
        await until(lambda: model.server(0).health != Health.CRITICAL, timeout=30, what="rpo-01 to heal")
        assert len(alerts) == 1
    finally:
        mob.stop()
        await bridge.aclose()
        window.close()


async def test_policies_are_made_changed_and_not_deleted_while_in_use(appliance: Appliance,
                                                                       qapp: QApplication) -> None:
    """From the Policies page: a new policy (nonsense refused before the engine is asked), an edit the CLI then
    shows, and a delete refused while a server replicates with it (the button says who; the engine too); once
    the server left it, the delete goes through."""
    bridge, window = _console(appliance)
    page = window.policies_page
    try:
        await until(lambda: bridge.state == "attached", what="the console to attach")
        window.show_page("policies")
        await until(lambda: [p.name for p in page.policies] == ["default"], what="the default policy listed")

        dialog = page.open_editor(None)
        dialog.name.setText("gold")
        for field, text in (("rpo_threshold", "soon"), ("retention", "7d"), ("crash_consistent_every", "1s"),
                            ("app_consistent_every", "off")):
            dialog.fields[field].setText(text)
        dialog.save_button.click()
        assert dialog.error.isVisible() and "soon" in dialog.error.text()  # refused here: nothing sent
        assert appliance.cli("policy", "show", "gold").returncode != 0
        dialog.fields["rpo_threshold"].setText("15m")
        dialog.save_button.click()
        await until(lambda: "gold" in [p.name for p in page.policies], what="gold in the list")
        assert appliance.json("policy", "show", "gold")["rpo_threshold"] == 900

        gold = next(p for p in page.policies if p.name == "gold")
        editor = page.open_editor(gold)
        editor.fields["rpo_threshold"].setText("30m")
        editor.save_button.click()
        await until(lambda: appliance.json("policy", "show", "gold")["rpo_threshold"] == 1800, what="the edit")

        mob, _ = replicating(appliance, "pol-01", 2 * MiB, seed=5)
        try:
            assert appliance.cli("vm", "set", "pol-01", "--policy", "gold").returncode == 0
            await until(lambda: page.users("gold") == ["pol-01"], what="pol-01 listed as gold's user")
            page.table.selectRow(next(i for i, p in enumerate(page.policies) if p.name == "gold"))
            await until(lambda: not page.delete_button.isEnabled(), what="Delete disabled for a policy in use")
            assert "pol-01" in page.delete_button.toolTip()
            with pytest.raises(EngineError) as refused:  # the engine says the same, naming the server
                await bridge.delete_policy("gold")
            assert "pol-01" in refused.value.message
            assert appliance.cli("vm", "set", "pol-01", "--policy", "default").returncode == 0
            await until(lambda: page.users("gold") == [], what="gold unused")
            await bridge.delete_policy("gold")
            await page.refresh()
            assert "gold" not in [p.name for p in page.policies]
        finally:
            mob.stop()
    finally:
        await bridge.aclose()
        window.close()


async def test_the_engine_stopping_and_starting_while_the_details_are_open(appliance: Appliance,
                                                                          qapp: QApplication) -> None:
    """A server's details stay open while the engine stops: greyed with one line saying they wait, a command then
    refused in one line; the engine started again, they come back on their own with the server's points."""
    import asyncio

    mob, _ = replicating(appliance, "eng-01", 2 * MiB, seed=8)
    bridge, window = _console(appliance)
    try:
        await until(lambda: window.servers_page.model.rowCount() == 1, what="eng-01 listed")
        window.show_server_detail("eng-01")
        detail = window.details["eng-01"]
        await until(lambda: detail.points, what="eng-01's points")
        await asyncio.get_running_loop().run_in_executor(None, appliance.stop)
        await until(lambda: not detail.tabs.isEnabled(), what="the details to grey out")
        assert "engine is not running" in detail.message.text()
        waiting = detail.message.text()
        await detail.apply_cap(50)  # a command with no engine: its refusal in one line, nothing else
        assert detail.message.isVisible() and detail.message.text() != waiting and "\n" not in detail.message.text()
        await asyncio.get_running_loop().run_in_executor(None, appliance.start)
        await until(lambda: detail.tabs.isEnabled() and detail.server is not None, timeout=60,
                    what="the details to come back")
        await until(lambda: detail.points, what="the points again")
        assert window.details["eng-01"] is detail
    finally:
        mob.stop()
        await bridge.aclose()
        window.close()


async def test_the_setup_wizard_opens_on_a_new_appliance_completes_and_runs_again(appliance: Appliance,
                                                                                   qapp: QApplication) -> None:
    """A new appliance's console opens the wizard by itself: the engine's six prerequisites are listed, one is
    checked again alone, every step goes on, the default policy changed on its step is saved, and Finish records
    the set-up as done. Run again from the Setup page it shows what the appliance has now; another console on
    the same appliance no longer opens it by itself."""
    from app.views.setup_wizard import SetupWizard

    assert appliance.json("setup", "show")["setup_completed_at"] is None
    bridge = EngineBridge(appliance.data_dir, start_engine=False)
    window = MainWindow(bridge, tray_available=lambda: False)
    window.show()
    bridge.start()
    try:
        await until(lambda: window.wizard is not None and window.wizard.isVisible(), what="the wizard to open")
        wizard = window.wizard
        assert isinstance(wizard, SetupWizard)
        page = wizard.prerequisites_page
        await until(lambda: len(page.rows) == 6, timeout=60, what="the six prerequisites")
        rows = page.rows
        assert set(rows) == {"ports", "cache-space", "clock", "secret-store", "sizing", "target"}
        assert rows["ports"].check.status == "ok" and rows["target"].check.status == "ok"
        checked = rows["target"].check
        rows["target"].button.click()
        await until(lambda: rows["target"].check is not checked, what="the target checked again")

        async def next_step() -> None:
            current = wizard.currentId()
            wizard.next()
            await until(lambda: wizard.currentId() != current, timeout=30, what=f"the step after {current}")

        while wizard.currentPage() is not wizard.policy_page:
            await next_step()
        edits = wizard.policy_page.edits
        await until(lambda: edits["rpo_threshold"].text() != "", what="the default policy's settings")
        edits["rpo_threshold"].setText("20m")
        await next_step()  # saved as the step is left
        assert appliance.json("policy", "show", "default")["rpo_threshold"] == 1200
        assert wizard.currentPage() is wizard.updates_page
        wizard.button(wizard.WizardButton.FinishButton).click()
        await until(lambda: not wizard.isVisible(), what="Finish to close the wizard")
        assert appliance.json("setup", "show")["setup_completed_at"] is not None

        window.show_page("setup")
        window.setup_page.wizard_button.click()
        again = window.wizard
        assert again is not None and again is not wizard and again.isVisible()
        while again.currentPage() is not again.policy_page:
            current = again.currentId()
            again.next()
            await until(lambda c=current: again.currentId() != c, timeout=30, what="the next step")  # type: ignore[misc]
        await until(lambda: again.policy_page.edits["rpo_threshold"].text() == "20m", what="the saved RPO shown")
        again.reject()
    finally:
        await bridge.aclose()
        window.close()

    second = EngineBridge(appliance.data_dir, start_engine=False)
    other = MainWindow(second, tray_available=lambda: False)
    second.start()
    try:
        await until(lambda: second.state == "attached", what="a second console to attach")
        await until(lambda: other.setup is not None, what="its set-up")
        assert other.wizard is None
    finally:
        await second.aclose()
        other.close()
