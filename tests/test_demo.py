"""``crmsync demo``: a real Radicale and the Salesforce sandbox, synced through the CLI."""

from __future__ import annotations

from pathlib import Path

from crmsync.demo import MARKER
from crmsync.sandbox.server import Sandbox

from sfsandbox import API
from test_cli import crmsync


def _calendar_files(demo: Path) -> dict[str, str]:
    """The demo calendar's items as Radicale stored them: file name -> text."""
    folder = demo / "radicale" / "collections" / "collection-root" / "demo" / "calendar"
    return {p.name: p.read_text(encoding="utf-8") for p in folder.glob("*.ics")}


def _crm(demo: Path, soql: str) -> list[dict]:
    """Query the demo's CRM data, kept on disk after the demo stopped its sandbox."""
    with Sandbox(db_path=demo / "sandbox.db") as sandbox, sandbox.client() as http:
        answer = http.get(f"{API}/query", params={"q": soql})
    answer.raise_for_status()
    return answer.json()["records"]


def test_demo_reviews_first_and_writes_nothing_unconfirmed(tmp_path: Path):
    demo = tmp_path / "demo"
    out = crmsync(tmp_path / "home", "demo", "--dir", str(demo)).stdout
    assert "Pricing call with Acme" in out and "Weekly pipeline review" in out
    assert "nothing was written" in out
    assert not any("Pricing call" in text for text in _calendar_files(demo).values())
    assert {r["Subject"] for r in _crm(demo, "SELECT Subject FROM Event")} == {
        "Pricing call with Acme", "Contract review: Globex"}


def test_demo_syncs_both_ways_and_again_changes_nothing(tmp_path: Path):
    demo = tmp_path / "demo"
    out = crmsync(tmp_path / "home", "demo", "--dir", str(demo), "--yes").stdout
    assert "Radicale at http://127.0.0.1:" in out
    texts = "\n".join(_calendar_files(demo).values())
    assert "SUMMARY:Pricing call with Acme" in texts  # CRM -> calendar
    subjects = {r["Subject"] for r in _crm(
        demo, "SELECT Subject FROM Event WHERE Recurrence2PatternText != null")}
    assert "Weekly pipeline review" in subjects  # the series, calendar -> CRM
    contacts = _crm(demo, "SELECT Email FROM Contact")
    emails = sorted(c["Email"] for c in contacts)
    # Sam Initech exists on both sides (same name and email): paired, not duplicated.
    assert emails.count("sam@initech.example") == 1 and "pat@newco.example" in emails
    # The demo's home holds the profile; with the servers gone the next sync cannot
    # reach them, and says so with the connection exit code.
    home = demo / "home"
    again = crmsync(home, "sync", "demo", "--yes", "--json", check=5)
    assert "error" in again.stderr


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    bad = crmsync(tmp_path / "home", "demo", "--dir", str(tmp_path / "mine"), check=2)
    assert "not a crmsync demo folder" in bad.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "mine" / MARKER).exists()
