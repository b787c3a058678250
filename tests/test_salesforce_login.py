"""`crmsync login NAME --side crm` at the Salesforce sandbox: OAuth 2.0, as a user runs it.

The CLI runs as a separate process. The web server flow is driven as a browser would: the
test fetches the authorize address the CLI prints; the sandbox approves at once and
redirects to the CLI's listener. Each flow ends with a dry-run sync on the stored
credentials, and no secret may show in the output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from crmsync.config import Paths
from crmsync.secrets import credentials_for

PROFILE = "sf"


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRMSYNC_")}
    return env | {"CRMSYNC_HOME": str(home), "COLUMNS": "200"} | extra


def crmsync(home: Path, *args: str, input: str | None = None, check: int | None = 0,
            **env: str):
    proc = subprocess.run([sys.executable, "-m", "crmsync", *args], capture_output=True,
                          text=True, env=_env(home, **env), input=input, timeout=120)
    if check is not None:
        assert proc.returncode == check, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def home(tmp_path: Path, sandbox) -> Path:
    home = tmp_path / "home"
    for kind in ("calendar", "contacts", "tasks"):
        (tmp_path / "groupware" / kind).mkdir(parents=True)
    crmsync(home, "profile", "add", PROFILE, "--crm", f"salesforce:{sandbox.url}",
            "--groupware", f"vdir:{tmp_path / 'groupware'}")
    return home


def stored(home: Path):
    return credentials_for(Paths.resolve(home), PROFILE, "crm")


def assert_syncs(home: Path) -> None:
    plan = json.loads(crmsync(home, "sync", PROFILE, "--dry-run", "--json").stdout)
    assert plan["dry_run"] is True and set(plan["objects"]) == {"calendar", "contacts",
                                                                 "tasks"}


def assert_no_secret(proc, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in proc.stdout and secret not in proc.stderr


def web_login(home: Path, sandbox, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crmsync", "login", PROFILE, "--side", "crm", "--client-id",
         sandbox.client_id, "--client-secret-stdin", "--login-url", sandbox.url,
         "--ca-bundle", sandbox.ca_path, "--no-browser", *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=_env(home))


def printed_url(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "/services/oauth2/authorize?" in line:
            return line.strip()
    proc.wait(10)
    raise AssertionError(f"no authorize address; exit {proc.returncode}: "
                         f"{proc.stderr.read() if proc.stderr else ''}")


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    assert proc.stdout is not None and proc.stderr is not None
    proc.wait(60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.read(),
                                       proc.stderr.read())


def test_web_server_flow_with_listener(home: Path, sandbox):
    proc = web_login(home, sandbox)
    try:
        assert proc.stdin is not None
        proc.stdin.write(sandbox.client_secret + "\n")
        proc.stdin.close()
        url = printed_url(proc)
        query = parse_qs(urlsplit(url).query)
        redirect_uri = query["redirect_uri"][0]
        assert redirect_uri.startswith("http://localhost:") and query["state"][0]
        # A redirect that does not carry the login's state is turned away; the wait goes on.
        forged = httpx.get(redirect_uri, params={"code": "forged", "state": "other"})
        assert forged.status_code == 400 and "state" in forged.text
        page = httpx.get(url, verify=sandbox.ssl_context(), follow_redirects=True, timeout=30)
        assert page.status_code == 200 and "authorized" in page.text
        assert "aPrx" not in page.text  # the page never shows the code
        done = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Saved the crm credentials of sf (encrypted)" in done.stdout
    assert "refresh token" in done.stdout
    creds = stored(home)
    assert creds is not None and creds.refresh_token and creds.private_key is None
    assert (creds.client_id, creds.client_secret) == (sandbox.client_id, sandbox.client_secret)
    assert creds.login_url == sandbox.url and creds.ca_bundle == sandbox.ca_path
    assert_no_secret(done, sandbox.client_secret, creds.refresh_token)
    secrets_file = (Paths.resolve(home).data_dir / "secrets.json").read_text()
    assert sandbox.client_secret not in secrets_file and creds.refresh_token not in secrets_file
    assert_syncs(home)


def _code_for(sandbox, redirect_uri: str) -> str:
    """Approve at the authorize page without following the redirect: the code to paste."""
    answer = httpx.get(sandbox.url + "/services/oauth2/authorize", verify=sandbox.ssl_context(),
                       params={"response_type": "code", "client_id": sandbox.client_id,
                               "redirect_uri": redirect_uri})
    assert answer.status_code == 302
    return parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]


def test_web_server_flow_with_pasted_code(home: Path, sandbox):
    redirect = "https://app.example.com/oauth/done"
    code = _code_for(sandbox, redirect)
    done = crmsync(home, "login", PROFILE, "--side", "crm", "--client-id", sandbox.client_id,
                   "--code-stdin", "--redirect-uri", redirect, "--login-url", sandbox.url,
                   "--ca-bundle", sandbox.ca_path, input=code + "\n",
                   CRMSYNC_CRM_CLIENT_SECRET=sandbox.client_secret)
    assert "/services/oauth2/authorize?" in done.stdout
    creds = stored(home)
    assert creds is not None and creds.refresh_token
    assert_no_secret(done, sandbox.client_secret, code, creds.refresh_token)
    assert_syncs(home)


def test_wrong_client_secret_is_refused_and_not_shown(home: Path, sandbox):
    redirect = "https://app.example.com/oauth/done"
    code = _code_for(sandbox, redirect)
    wrong = "not-the-secret-" + "x" * 20
    done = crmsync(home, "login", PROFILE, "--side", "crm", "--client-id", sandbox.client_id,
                   "--code-stdin", "--client-secret-stdin", "--redirect-uri", redirect,
                   "--login-url", sandbox.url, "--ca-bundle", sandbox.ca_path,
                   input=f"{wrong}\n{code}\n", check=5)
    assert "refused the login" in done.stderr and "invalid_client" in done.stderr
    assert_no_secret(done, wrong, code)
    assert stored(home) is None


def test_listener_gives_up_after_the_timeout(home: Path, sandbox):
    proc = web_login(home, sandbox, "--timeout", "1")
    try:
        done = proc.communicate(sandbox.client_secret + "\n", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 5 and "within 1 s" in done[1]
    assert stored(home) is None


def test_jwt_bearer_flow(home: Path, sandbox):
    done = crmsync(home, "login", PROFILE, "--side", "crm", "--jwt-key",
                   sandbox.jwt_private_key_path, "--client-id", sandbox.client_id,
                   "--username", sandbox.username, "--login-url", sandbox.url,
                   "--ca-bundle", sandbox.ca_path)
    assert "JWT bearer" in done.stdout
    creds = stored(home)
    assert creds is not None and creds.refresh_token is None and creds.client_secret is None
    assert creds.private_key == Path(sandbox.jwt_private_key_path).read_text()
    assert (creds.username, creds.login_url) == (sandbox.username, sandbox.url)
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    assert_syncs(home)


def test_jwt_bearer_flow_refused(home: Path, sandbox):
    done = crmsync(home, "login", PROFILE, "--side", "crm", "--jwt-key",
                   sandbox.jwt_private_key_path, "--client-id", sandbox.client_id,
                   "--username", "nobody@example.com", "--login-url", sandbox.url,
                   "--ca-bundle", sandbox.ca_path, check=5)
    assert "refused the login" in done.stderr and "pre-authorized" in done.stderr
    assert stored(home) is None
    not_a_key = home / "not-a-key.pem"
    not_a_key.write_text("hello\n")
    bad = crmsync(home, "login", PROFILE, "--side", "crm", "--jwt-key", str(not_a_key),
                  "--client-id", sandbox.client_id, "--username", sandbox.username, check=2)
    assert "no PEM private key" in bad.stderr


def test_usage_errors(home: Path, sandbox, tmp_path: Path):
    missing = crmsync(home, "login", PROFILE, "--side", "crm", check=2)
    assert "--client-id" in missing.stderr
    no_uri = crmsync(home, "login", PROFILE, "--side", "crm", "--client-id", "x",
                     "--code-stdin", check=2)
    assert "--redirect-uri" in no_uri.stderr
    groupware = crmsync(home, "login", PROFILE, "--client-id", "x", check=2)
    assert "--side crm" in groupware.stderr
